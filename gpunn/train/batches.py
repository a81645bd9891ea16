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
from ..validation import check_distributions, check_int, check_labels, check_unit_interval


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


def check_values(a: Any, name: str, dtype: Any = None) -> None:
    """Refuse NaN and infinity in a floating ``a``, and values that ``dtype`` (the model's, which
    ``a`` is converted to) cannot hold, naming the first row. One reduction on a's device."""
    if a.dtype.kind != "f":
        return
    xp = array_module(a)
    limit = np.finfo(dtype if dtype is not None else a.dtype).max
    narrower = limit < np.finfo(a.dtype).max
    if bool(((xp.abs(a) <= limit) if narrower else xp.isfinite(a)).all()):
        return
    rows = to_numpy(a).reshape(a.shape[0], -1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))  # host: rows: to_numpy above
    if bad.size:
        raise ValueError(f"{name} contains NaN or infinity (first in row {bad[0]}); clean the data first")
    row = np.flatnonzero((np.abs(rows) > limit).any(axis=1))[0]  # host: rows: to_numpy above
    raise ValueError(
        f"{name} holds values beyond the range of the model's {np.dtype(dtype).name} (|value| > {limit:.4g}), "
        f"first in row {row}, which would become infinite; scale the data, or use a float64 model"
    )


def checked_inputs(x: Any, name: str, n_in: int | None = None, first_layer: str = "", dtype: Any = None) -> Any:
    """``x`` as a 2-D numeric array of N >= 1 finite rows (a list or a DataFrame becomes a NumPy
    array), with ``n_in`` features when given (the model's first layer, ``first_layer``, expects them)
    and values that ``dtype``, the model's, can hold."""
    x = as_array(x, name)
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
    check_values(x, name, dtype)
    return x


def checked_targets(
    y: Any, x: Any, names: tuple[str, str], loss: str | None = None, outputs: int | None = None, dtype: Any = None
) -> Any:
    """``y`` checked once against x's N rows (``names``: x's and y's), the model's ``outputs`` and
    ``loss`` (its class name), and returned as an array (a list or a pandas Series becomes a NumPy
    array). Float targets must be finite and within ``dtype``, the model's. For "SoftmaxWithLoss":
    integer labels (N,) in [0, outputs) ((N, 1) integer labels are flattened), or targets (N, outputs)
    whose rows are distributions (:func:`~gpunn.validation.check_distributions`, the loss's own check); for
    "SigmoidBCELoss" and "MSELoss": (N, outputs), or (N,) for one output, with every
    SigmoidBCELoss target in [0, 1]."""
    x_name, y_name = names
    y = as_array(y, y_name)
    if not (hasattr(y, "ndim") and hasattr(y, "dtype")):
        raise TypeError(f"{y_name} must be an array, got {type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"{x_name} and {y_name} hold different numbers of samples: {tuple(x.shape)} and {tuple(y.shape)}"
        )
    softmax = loss == "SoftmaxWithLoss"
    if softmax and y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "iu" and outputs != 1:
        y = y.reshape(-1)  # a column of class labels, as a DataFrame column or y.reshape(-1, 1) gives
    if softmax and y.ndim == 1:
        return check_labels(y, outputs, y_name)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{y_name} must hold numbers, got dtype {y.dtype}")
    check_values(y, y_name, dtype)
    if loss not in ("SoftmaxWithLoss", "SigmoidBCELoss", "MSELoss") or outputs is None:
        return y
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != outputs) or (y.ndim == 1 and outputs != 1):
        wanted = f"({x.shape[0]}, {outputs})" + (f" or ({x.shape[0]},)" if outputs == 1 else "")
        labels = f", or integer labels of shape ({x.shape[0]},)" if softmax else ""
        raise ValueError(
            f"{y_name} must have shape {wanted}{labels} for {loss} on a model with {outputs} outputs, "
            f"got shape {tuple(y.shape)}"
        )
    if softmax:
        check_distributions(y, dtype if dtype is not None else y.dtype, y_name)
    elif loss == "SigmoidBCELoss":
        check_unit_interval(y, y_name, loss)
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
