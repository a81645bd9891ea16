"""Checkpoints: save and load models and optimizers as safetensors (atomic, device-agnostic, no pickle)."""
