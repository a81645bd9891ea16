"""Mini-batches of arrays on a device, and the checks of a fit's x and y.

The data goes to the device once per fit; :func:`batches` then cuts each mini-batch as an index slice
of a permutation that lives on the same device, so no sample crosses the bus again. The permutation is
drawn on the host from a NumPy Generator, so one seed gives one order on the CPU and on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend.device import DeviceMismatchError, device_of
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


def as_array(a: Any, name: str, missing_ok: bool = False) -> Any:
    """``a`` as an array: a list becomes a NumPy array, and so does a pandas DataFrame or Series (what
    ``to_numpy()`` gives, with nullable columns such as Int64 in their NumPy dtype); missing values
    (NA) are refused, naming the row, unless ``missing_ok`` (they become NaN). Arrays pass through
    unchanged."""
    if isinstance(a, (list, tuple)):
        return np.asarray(a)  # host: a list
    if not hasattr(a, "to_numpy") or hasattr(a, "__cuda_array_interface__"):
        return a
    if hasattr(a, "isna") and not missing_ok:
        missing = np.asarray(a.isna()).reshape(len(a), -1).any(axis=1)  # host: pandas' own mask
        if missing.any():
            first = np.flatnonzero(missing)[0]  # host: pandas' mask
            raise ValueError(f"{name} has missing values (NaN or NA), first in row {first}; drop or fill them first")
    out = a.to_numpy()
    if out.dtype == object and hasattr(a, "dtypes"):  # nullable extension columns: their NumPy dtypes
        columns = list(a.dtypes) if getattr(a, "ndim", 1) == 2 else [a.dtype]
        numpy_dtypes = [getattr(d, "numpy_dtype", d) for d in columns]
        if all(isinstance(d, np.dtype) and d.kind in "biuf" for d in numpy_dtypes):
            out = out.astype(np.result_type(*numpy_dtypes))
    return out


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
