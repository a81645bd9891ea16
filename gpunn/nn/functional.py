"""Stateless array functions shared by layers and losses; each works on NumPy and CuPy.

Shapes: ``z`` is (N, C) logits unless said otherwise; reductions run over the class axis.
"""

from __future__ import annotations

from typing import Any

from ..backend.device import array_module
from ..backend.selection import ops_of
from ..validation import FLOAT_DTYPES


def _check_z(z: Any, function: str) -> None:
    """A clear TypeError unless ``z`` is a float32 or float64 array (the cheap test first)."""
    if getattr(z, "dtype", None) in FLOAT_DTYPES and hasattr(z, "shape"):
        return
    if not (hasattr(z, "dtype") and hasattr(z, "shape")):
        raise TypeError(f"{function}: z must be a NumPy or CuPy array, got {type(z).__name__}")
    raise TypeError(
        f"{function}: z must have dtype float32 or float64, got {z.dtype}; convert it with z.astype('float32')"
    )


def log_softmax(z: Any, axis: int = -1) -> Any:
    """log softmax(z) = (z − c) − log Σ exp(z − c), with c = max(z) along ``axis``.

    Subtracting the row maximum keeps exp from overflowing (e^1000 is inf); computing the
    log-probabilities directly avoids log(0) for confident wrong predictions.
    """
    _check_z(z, "log_softmax")
    xp = array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= lse
    return shifted


def softmax(z: Any, axis: int = -1) -> Any:
    """softmax(z)_k = exp(z_k − c) / Σ_j exp(z_j − c), c = max(z) along ``axis``; rows sum to 1."""
    _check_z(z, "softmax")
    xp = array_module(z)
    y = z - z.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def binary_cross_entropy_with_logits(z: Any, t: Any) -> Any:
    """Per element, −[t·log σ(z) + (1 − t)·log(1 − σ(z))] = max(z, 0) − z·t + log(1 + e^−|z|):
    from the logits, so no log(0) and no overflow for any z. Same shape as z and t."""
    xp = array_module(z)
    return xp.maximum(z, 0.0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))


def sigmoid(z: Any, out: Any = None) -> Any:
    """σ(z) = 1 / (1 + e^−z), computed as exp(−log(1 + e^−z)): no overflow for any z and full
    relative precision in both tails. ``out`` may be ``z`` itself."""
    _check_z(z, "sigmoid")
    return ops_of(z).activation(z, "sigmoid", out=out)
