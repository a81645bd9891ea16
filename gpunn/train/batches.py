"""Mini-batches of arrays on a device, and the checks of a fit's x and y.

The data goes to the device once per fit; :func:`batches` then cuts each mini-batch as an index slice
of a permutation that lives on the same device, so no sample crosses the bus again. The permutation is
drawn on the host from a NumPy Generator, so one seed gives one order on the CPU and on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend.device import DeviceMismatchError, array_module, device_of, to_numpy
from ..validation import check_int


def check_pair_length(x: Any, y: Any) -> int:
    """N, the common length of ``x`` and ``y`` along axis 0."""
    if not hasattr(x, "shape") or not hasattr(y, "shape"):
        raise TypeError(f"x and y must be arrays, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of samples along axis 0, got x.shape {tuple(x.shape)} "
            f"and y.shape {tuple(y.shape)}"
        )
    return int(x.shape[0])


def checked_inputs(x: Any, name: str, n_in: int | None = None, first_layer: str = "") -> Any:
    """``x`` as a 2-D numeric array of N >= 1 finite rows (a list becomes a NumPy array), with
    ``n_in`` features when given (the model's first layer, ``first_layer``, expects them)."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)  # host: a list
    if not (hasattr(x, "ndim") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array of shape (N, features), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, features), got shape {tuple(x.shape)}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no samples (shape {tuple(x.shape)})")
    if n_in is not None and x.shape[1] != n_in:
        raise ValueError(f"{name} has {x.shape[1]} features but the model's first layer, {first_layer}, expects {n_in}")
    if x.dtype.kind == "f" and not bool(array_module(x).isfinite(x).all()):
        rows = np.flatnonzero(~np.isfinite(to_numpy(x)).all(axis=1))
        raise ValueError(f"{name} contains NaN or infinity (first in row {rows[0]}); clean the data first")
    return x


def checked_targets(
    y: Any, x: Any, names: tuple[str, str], classes: int | None = None, unit_interval_for: str | None = None
) -> Any:
    """``y`` as an array of x's N rows (``names``: x's and y's); with ``classes``, (N,) labels must be
    integers in [0, classes); with ``unit_interval_for`` (the loss that needs it), every target must lie
    in [0, 1]."""
    x_name, y_name = names
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)  # host: a list
    if not (hasattr(y, "ndim") and hasattr(y, "dtype")):
        raise TypeError(f"{y_name} must be an array, got {type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"{x_name} and {y_name} hold different numbers of samples: {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if classes is not None and y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise TypeError(f"{y_name} must hold integer class labels, got dtype {y.dtype}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(
                f"{y_name} holds labels outside [0, {classes}) for a model with {classes} outputs: "
                f"min {int(y.min())}, max {int(y.max())}"
            )
    if unit_interval_for is not None:
        low, high = float(y.min()), float(y.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{y_name} must lie in [0, 1] for {unit_interval_for}, got min {low}, max {high}")
    return y


def batches(
    x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int | None = 0, epoch: int = 0, drop_last: bool = False
) -> Iterator[tuple[Any, Any]]:
    """Mini-batches ``(xb, yb)`` over arrays that already live on a device (NumPy or CuPy).

    ``x`` is (N, ...) and ``y`` (N, ...). With ``shuffle`` the order is a permutation drawn on the host
    from ``np.random.default_rng([seed, epoch])`` — so a resumed run sees the same order for the same
    epoch — sent to x's device once; each batch is ``x[idx], y[idx]`` for an index slice ``idx`` of it.
    Without shuffle, batches are plain slices (views) in order. The last batch is smaller unless
    ``drop_last``. Arguments are checked at the call, not at the first batch.
    """
    size = check_int("batch_size", batch_size, low=1)
    n = check_pair_length(x, y)
    dev = device_of(x)
    if device_of(y) != dev:
        raise DeviceMismatchError(f"y is on {device_of(y)} but x is on {dev}; move it with gn.to_device(y, '{dev}')")
    stop = n - n % size if drop_last else n
    if not shuffle:
        return ((x[i : i + size], y[i : i + size]) for i in range(0, stop, size))
    perm = dev.send(epoch_order(n, seed, check_int("epoch", epoch, low=0)))
    return ((x[perm[i : i + size]], y[perm[i : i + size]]) for i in range(0, stop, size))


def epoch_order(n: int, seed: int | None, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` rows in ``epoch``: a permutation drawn on the host from
    ``np.random.default_rng([seed, epoch])`` (fresh entropy when seed is None)."""
    entropy = None if seed is None else [check_int("seed", seed, low=0), epoch]
    return np.random.default_rng(entropy).permutation(n)
