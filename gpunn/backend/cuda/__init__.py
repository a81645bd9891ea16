"""The GPU: fused CUDA kernels, their compilation, capturable matrix products."""
