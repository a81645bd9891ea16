"""The seed's hand-rolled network in plain NumPy: the baseline ``gpunn bench`` measures against.

This is how the tutorial writes a network by hand (DLfS style), generalized from two layers
to L: explicit weight matrices, forward through x·W + b and ReLU, softmax-with-loss,
backward by the chain rule, and Adam written per parameter as in the textbook. It is
written the way a careful person writes it by hand — float32, in-place where it is natural —
but without gpunn's machinery (flat buffers, fused updates, GEMMs into preallocated views).
It lives in the package so that ``gpunn bench`` can run it from an installed wheel.
"""

from __future__ import annotations

import math

import numpy as np


class HandwrittenMLP:
    """An MLP with ReLU hidden layers, softmax-with-loss and Adam, in plain NumPy.

    ``weights`` and ``biases`` start as copies of the given arrays (W (in, out), b (out,)).
    """

    def __init__(
        self,
        weights: list[np.ndarray],
        biases: list[np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.W = [w.copy() for w in weights]
        self.b = [b.copy() for b in biases]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p in self.W + self.b]
        self.v = [np.zeros_like(p) for p in self.W + self.b]
        self.t = 0

    def loss_and_grads(self, x: np.ndarray, t: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Forward and backward for a batch: mean cross-entropy and [dW..., db...]."""
        activations = [x]
        a = x
        last = len(self.W) - 1
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            z = a @ W + b
            a = np.maximum(z, 0) if i < last else z
            activations.append(a)
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
                da = dz @ self.W[i].T
                dz = da * (activations[i] > 0)
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

    def train_step(self, x: np.ndarray, t: np.ndarray) -> float:
        loss, grads = self.loss_and_grads(x, t)
        self.adam_step(grads)
        return loss
