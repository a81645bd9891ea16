"""``gpunn bench``: device throughput against a hand-written NumPy loop and PyTorch."""
