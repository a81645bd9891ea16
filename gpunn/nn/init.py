"""Weight initializers, drawn on the host so that one seed gives one network everywhere.

CuPy's random streams differ from NumPy's, so weights are always drawn from a NumPy
``Generator`` on the host, in float64, rounded to the layer's dtype, and only then sent to
the device: the same seed gives bit-identical initial weights on the CPU and on any GPU.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..validation import check_choice, check_int

INITS = ("he", "xavier", "normal")


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A NumPy Generator from an int seed, an existing Generator, or fresh entropy (None)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.default_rng(check_int("seed", seed, low=0))
    raise TypeError(f"seed must be an int, a numpy.random.Generator or None, got {seed!r}")


def init_weight(n_in: int, n_out: int, method: str, rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    """A host array W of shape (n_in, n_out) drawn from N(0, std²), cast to ``dtype``, where std is

    he:     sqrt(2 / n_in)            (ReLU family; He et al. 2015)
    xavier: sqrt(2 / (n_in + n_out))  (sigmoid/tanh; Glorot & Bengio 2010, normal form)
    normal: 0.01                      (the textbook's fixed ``weight_init_std``)
    """
    method = check_choice("init", method, INITS)
    if method == "he":
        std = math.sqrt(2.0 / n_in)
    elif method == "xavier":
        std = math.sqrt(2.0 / (n_in + n_out))
    else:
        std = 0.01
    return (rng.standard_normal((n_in, n_out)) * std).astype(dtype)
