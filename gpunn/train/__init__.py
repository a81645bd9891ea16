"""Training: the Trainer, data sets and batches, history and diagnosis, plots, CUDA-graph replay of a step."""
