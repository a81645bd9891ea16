"""The baseline ``gpunn bench`` measures against: a network written by hand in plain NumPy.

As the textbook (DLfS) writes one, generalized from two layers to L: explicit weight matrices,
x·W + b and ReLU, softmax-with-loss, backward by the chain rule, SGD or Adam per parameter;
float32 and in place where that is natural, without gpunn's machinery (flat buffers, fused
updates, products into preallocated views). In the package so that an installed wheel has it.
"""

from __future__ import annotations

import math

import numpy as np

OPTIMIZERS = ("sgd", "adam")


class HandwrittenMLP:
    """An MLP with ReLU hidden layers, softmax-with-loss and SGD or Adam, in plain NumPy, at
    gpunn's defaults (SGD: lr 0.01; Adam: lr 0.001, betas (0.9, 0.999), eps 1e-8). ``weights``
    and ``biases`` start as copies of the given arrays (W (in, out), b (out,))."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], optimizer: str = "adam") -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.W = [w.copy() for w in weights]
        self.b = [b.copy() for b in biases]
        self.optimizer = optimizer
        self.lr = 0.01 if optimizer == "sgd" else 1e-3
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8
        state = self.W + self.b if optimizer == "adam" else []  # SGD keeps no state
        self.m = [np.zeros_like(p) for p in state]
        self.v = [np.zeros_like(p) for p in state]
        self.t = 0

    def loss_and_grads(self, x: np.ndarray, t: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Forward and backward for a batch: mean cross-entropy and [dW..., db...]."""
        activations = [x]
        last = len(self.W) - 1
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            z = activations[-1] @ W + b
            activations.append(np.maximum(z, 0) if i < last else z)
        logits = activations[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)  # the stable softmax of the seed
        exp = np.exp(shifted)
        y = exp / exp.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = -np.log(y[np.arange(n), t] + 1e-7).mean()
        dz = y
        dz[np.arange(n), t] -= 1
        dz /= n
        dW: list[np.ndarray] = [None] * len(self.W)  # type: ignore[list-item]
        db: list[np.ndarray] = [None] * len(self.b)  # type: ignore[list-item]
        for i in range(last, -1, -1):
            dW[i] = activations[i].T @ dz
            db[i] = dz.sum(axis=0)
            if i > 0:
                dz = (dz @ self.W[i].T) * (activations[i] > 0)  # back through ReLU
        return float(loss), dW + db

    def adam_step(self, grads: list[np.ndarray]) -> None:
        """Adam, parameter by parameter, as the textbook writes it."""
        self.t += 1
        # a Python float: a NumPy float64 scalar would promote the float32 update to float64
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        for p, g, m, v in zip(self.W + self.b, grads, self.m, self.v, strict=True):
            m += (1.0 - self.beta1) * (g - m)
            v += (1.0 - self.beta2) * (g**2 - v)
            p -= lr_t * m / (np.sqrt(v) + self.eps)

    def sgd_step(self, grads: list[np.ndarray]) -> None:
        """p ← p − lr·g, parameter by parameter."""
        for p, g in zip(self.W + self.b, grads, strict=True):
            p -= self.lr * g

    def train_step(self, x: np.ndarray, t: np.ndarray) -> float:
        loss, grads = self.loss_and_grads(x, t)
        if self.optimizer == "sgd":
            self.sgd_step(grads)
        else:
            self.adam_step(grads)
        return loss
