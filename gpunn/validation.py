"""Argument checks shared by every public constructor, and the checks of a loss's targets.

Each check names the argument, says what was expected and what was given, and returns the
value in the form gpunn computes with. Hyperparameters come back as Python ``float``: a
NumPy scalar would make NumPy 2 (NEP 50) promote float32 arithmetic to float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend.device import array_module, check_device, device_of, to_numpy

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))  # the dtypes layers, losses and regularizers compute in


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite Python float within [low, high] (open ends on request).

    Raises TypeError for non-numbers (bool included) and ValueError for NaN, infinities and
    values outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result!r}")
    if low is not None and (result < low or (low_open and result == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {result!r}")
    if high is not None and (result > high or (high_open and result == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {result!r}")
    return result


def check_int(name: str, value: object, *, low: int | None = None) -> int:
    """Return ``value`` as a Python int >= low; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    result = int(value)
    if low is not None and result < low:
        raise ValueError(f"{name} must be >= {low}, got {result}")
    return result


def check_dtype(name: str, dtype: object) -> np.dtype:
    """Return the floating dtype named by ``dtype`` (float32 or float64)."""
    try:
        result = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {dtype!r}") from exc
    if result not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {result.name!r}")
    return result


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    key = value.strip().lower()
    if key not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, options))}")
    return key


def check_array(
    name: str,
    a: Any,
    owner: str,
    *,
    like: Any = None,
    shape: tuple[int, ...] | None = None,
    ndims: tuple[int, ...] = (2,),
    dims: str = "(N, features)",
    nonempty: bool = False,
) -> None:
    """Raise a clear error unless ``a`` is a NumPy or CuPy array that ``owner`` can compute with.

    With ``like``: on like's device, with like's dtype; without: float32 or float64
    (:data:`FLOAT_DTYPES`). Its shape is ``shape`` when given, else of a number of dimensions in
    ``ndims`` (``dims`` says which shape, for the message); ``nonempty``: at least one element.
    Callers run a cheap comparison first and call this only when it fails, so it may be slow.
    """
    if not (hasattr(a, "ndim") and hasattr(a, "dtype") and hasattr(a, "shape")):
        raise TypeError(f"{name} must be a NumPy or CuPy array of shape {shape or dims}, got {type(a).__name__}")
    if like is not None:
        check_device(a, device_of(like), name, owner)
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{owner} expects {name} of shape {tuple(shape)}, got {tuple(a.shape)}")
    if shape is None and a.ndim not in ndims:
        raise ValueError(f"{name} must have shape {dims}, got shape {tuple(a.shape)}")
    if like is not None and a.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but {owner} computes in {like.dtype}; "
            f"convert it with {name}.astype('{like.dtype}')"
        )
    if like is None and a.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64 (what {owner} computes in), got {a.dtype}; "
            f"convert it with {name}.astype('float32')"
        )
    if nonempty and a.size == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(a.shape)}): {owner} needs at least one sample and one value per sample "
            "(the mean over zero samples is undefined)"
        )


def check_real(name: str, a: Any) -> None:
    """Raise TypeError unless array ``a`` holds real numbers (bool, integer or float)."""
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, integer or float), got dtype {a.dtype}")


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


def check_labels(t: Any, n_classes: int | None, name: str = "t") -> Any:
    """Integer class labels ``t`` (N,) in [0, n_classes) (the range read back to the host; not
    checked when ``n_classes`` is None); returns them, as int64 where they are uint64 (whose
    sum with int64 offsets would be float64)."""
    if t.dtype.kind not in "iu":
        classes = n_classes if n_classes is not None else "C"
        raise TypeError(
            f"{name} must hold integer class labels, got dtype {t.dtype}; convert with {name}.astype(int), "
            f"or pass one-hot targets of shape (N, {classes})"
        )
    if n_classes is not None:
        low, high = _min_max(t)
        if low < 0 or high >= n_classes:
            raise ValueError(
                f"{name} holds labels outside [0, {n_classes}) for {n_classes} classes: min {low}, max {high}"
            )
    return t.astype(np.int64) if t.dtype.kind == "u" and t.dtype.itemsize == 8 else t


def check_distributions(t: Any, dtype: Any, name: str = "t") -> None:
    """Rows of ``t`` (N, C) that are one-hot or probability targets: no NaN, no negative entry,
    every row summing to 1 within 1e-3 where ``t`` or ``dtype`` (the model's) is float32, 1e-6
    otherwise (float32 rounding of C probabilities moves a sum by ~C·6e-8). One read to the host."""
    xp = array_module(t)
    single = np.dtype(dtype) == np.float32 or (t.dtype.kind == "f" and t.dtype.itemsize <= 4)
    tolerance = 1e-3 if single else 1e-6
    sums = t.sum(axis=1, dtype=np.float64)
    low, worst = to_numpy(xp.stack([t.min().astype(np.float64), xp.abs(sums - 1.0).max()])).tolist()
    what = f"{name} must hold one-hot or probability rows (entries >= 0, each row summing to 1)"
    if math.isnan(low):
        raise ValueError(f"{what}, got NaN")
    if low < 0.0:
        row = int((t < 0).any(axis=1).argmax())
        raise ValueError(f"{what}, got a negative entry ({low:g}), first in row {row}")
    if not worst <= tolerance:
        row = int(xp.abs(sums - 1.0).argmax())
        raise ValueError(f"{what} within {tolerance:g}, got row {row} summing to {float(sums[row]):g}")


def check_unit_interval(t: Any, name: str = "t", what: str = "binary cross-entropy") -> None:
    """Targets ``t`` in [0, 1], as binary cross-entropy needs (NaN refused); one read to the host."""
    low, high = _min_max(t)
    if not (low >= 0.0 and high <= 1.0):  # NaN fails both
        raise ValueError(f"{name} must lie in [0, 1] for {what}, got min {low:g}, max {high:g}")


def _min_max(t: Any) -> tuple[Any, Any]:
    """(min, max) of ``t`` as Python numbers: two reductions on the host, one read from a GPU
    (a NumPy stack and copy cost more than the reductions for a batch of labels)."""
    if type(t) is np.ndarray:
        return t.min().item(), t.max().item()
    return tuple(to_numpy(array_module(t).stack([t.min(), t.max()])).tolist())
