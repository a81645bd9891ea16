"""Datasets: the embedded digits, the spiral, MNIST files, split, scaling, one-hot (``gn.data``).

Shapes are batch-major: ``x`` is (N, features) and ``y`` is (N,) integer labels. Everything random here
is drawn on the host from a NumPy Generator, so one seed gives one result on the CPU and on a GPU.
:func:`batches` (from :mod:`.batches`) cuts mini-batches of arrays already on a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from ..backend.device import array_module, device_of, to_numpy
from ..validation import check_float, check_int, check_labels, check_real
from .batches import as_array, batches, check_pair_length
from .mnist import MNIST_FILES, Arrays, load_mnist  # noqa: F401 (MNIST_FILES: the file names load_mnist expects)

__all__ = ["Standardizer", "batches", "load_digits", "load_mnist", "make_spiral", "one_hot", "split", "standardize"]


def load_digits() -> Arrays:
    """The UCI optical handwritten digits, shipped inside gpunn (no network, no extra package).

    Returns ``x`` float32 (1797, 64), each row an 8×8 image flattened row by row with pixel counts
    0..16, and ``y`` int64 (1797,) labels 0..9 (about 180 of each). The arrays are new copies the caller
    may modify. Source: E. Alpaydin and C. Kaynak, UCI Machine Learning Repository (1998), CC BY 4.0, as
    copied in scikit-learn.
    """
    resource = resources.files(__package__).joinpath("datasets").joinpath("digits.npz")
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        return npz["images"].astype(np.float32), npz["target"].astype(np.int64)


def make_spiral(
    points_per_class: int = 100, classes: int = 3, noise: float = 0.2, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The CS231n spiral: ``classes`` arms of ``points_per_class`` points in the plane.

    Arm k: radius r = linspace(0, 1), angle θ = linspace(4k, 4(k+1)) + noise·N(0, 1), point (r·sin θ,
    r·cos θ). Returns ``x`` float32 (classes·points_per_class, 2) and ``y`` int64 labels, grouped by
    class (shuffle or :func:`split` before training).
    """
    n = check_int("points_per_class", points_per_class, low=1)
    k = check_int("classes", classes, low=1)
    noise = check_float("noise", noise, low=0.0)
    rng = np.random.default_rng(seed)
    r = np.linspace(0.0, 1.0, n)
    x = np.empty((n * k, 2), dtype=np.float64)
    for c in range(k):
        theta = np.linspace(4.0 * c, 4.0 * (c + 1), n) + noise * rng.standard_normal(n)
        x[c * n : (c + 1) * n, 0] = r * np.sin(theta)
        x[c * n : (c + 1) * n, 1] = r * np.cos(theta)
    return x.astype(np.float32), np.repeat(np.arange(k, dtype=np.int64), n)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    if not isinstance(fractions, (tuple, list)) or len(fractions) not in (2, 3):
        raise ValueError(f"fractions must be 2 or 3 numbers, e.g. (0.8, 0.1, 0.1), got {fractions!r}")
    values = [check_float(f"fractions[{i}]", f, low=0.0, low_open=True) for i, f in enumerate(fractions)]
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(values)!r})")
    return np.asarray(values)


def _cut(indices: np.ndarray, cumulative: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` at the rounded cumulative counts (the last cut is always the end)."""
    n = len(indices)
    ends = np.floor(cumulative * n + 0.5).astype(np.int64)
    ends[-1] = n
    starts = np.concatenate(([0], ends[:-1]))
    return [indices[a:b] for a, b in zip(starts, ends, strict=True)]


def split(
    x: Any, y: Any, fractions: Sequence[float] = (0.8, 0.1, 0.1), stratify: bool = True, seed: int | None = 0
) -> tuple[tuple[Any, Any], ...]:
    """Split ``(x, y)`` into disjoint parts of the given fractions, e.g. train, dev and test.

    ``x`` is (N, ...) and ``y`` (N,) labels; ``fractions`` holds 2 or 3 positive numbers that sum to 1.
    With ``stratify`` each class is cut in the same proportions (each part's count of a class is within
    one sample of fraction × class count); without, the whole set is cut once. Each part is then
    shuffled. Returns one ``(x_part, y_part)`` pair per fraction, on x's and y's device; the same seed
    gives the same split. A list or a pandas DataFrame / Series is taken as its values (NumPy parts).
    Raises ValueError when a part would be empty.
    """
    x, y = as_array(x, "x", missing_ok=True), as_array(y, "y")  # split before imputing: NaN may stay in x
    n = check_pair_length(x, y)
    frac = _check_fractions(fractions)
    cumulative = np.cumsum(frac)
    rng = np.random.default_rng(seed)
    if stratify:
        labels = to_numpy(y)
        if labels.ndim != 1:
            raise ValueError(
                f"stratify=True needs y of shape (N,) class labels, got y.shape {labels.shape}; "
                "pass integer labels or stratify=False"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        pieces: list[list[np.ndarray]] = [[] for _ in frac]
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(inverse == c))
            for part, cut in zip(pieces, _cut(members, cumulative), strict=True):
                part.append(cut)
        parts = [np.concatenate(p) if p else np.empty(0, np.int64) for p in pieces]
    else:
        parts = _cut(rng.permutation(n), cumulative)
    for i, idx in enumerate(parts):
        if len(idx) == 0:
            hint = "; stratify=True cuts each class on its own, so try stratify=False" if stratify else ""
            raise ValueError(f"split of {n} samples by fractions {tuple(fractions)!r} leaves part {i} empty{hint}")
    result = []
    for idx in parts:
        order = rng.permutation(idx)
        result.append((x[device_of(x).send(order)], y[device_of(y).send(order)]))
    return tuple(result)


def _float_dtype(x: Any, name: str) -> np.dtype:
    """The dtype a Standardizer computes in for ``x``: its own if floating, else float32;
    complex data (whose imaginary part would be dropped) and non-numbers are refused."""
    if not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a NumPy or CuPy array of shape (N, features), got {type(x).__name__}")
    check_real(name, x)
    return x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)


class Standardizer:
    """Feature scaling x' = (x − mean) / std, with mean and std from the training part only.

    ``fit(x_train)`` computes per-feature statistics over axis 0 of an (N, features) array (on its
    device); ``transform(x)`` applies them to any part. Features that are constant in the training part
    get std 1, so they come out as zeros rather than NaN. Floating inputs keep their dtype; integer
    inputs become float32.
    """

    def __init__(self) -> None:
        self.mean: Any = None
        self.std: Any = None

    def fit(self, x_train: Any) -> Standardizer:
        """Learn mean (features,) and std (features,) from ``x_train`` (N, features); returns self."""
        dtype = _float_dtype(x_train, "x_train")
        if x_train.ndim < 1 or x_train.shape[0] == 0:
            raise ValueError(f"x_train must be an array of shape (N, features) with N >= 1, got {x_train.shape!r}")
        xp = array_module(x_train)
        # Statistics accumulate in float64 and are stored in x's dtype. A constant feature is
        # found exactly (max == min): its computed std can be ~1e-17 rather than 0.
        std = x_train.std(axis=0, dtype=np.float64)
        constant = x_train.max(axis=0) == x_train.min(axis=0)
        self.mean = x_train.mean(axis=0, dtype=np.float64).astype(dtype)
        self.std = xp.where(constant | (std == 0), 1.0, std).astype(dtype)
        return self

    def transform(self, x: Any) -> Any:
        """Return (x − mean) / std, shape of ``x``; the statistics move to x's device if needed."""
        if self.mean is None:
            raise RuntimeError("this Standardizer is not fitted yet; call fit(x_train) first")
        dtype = _float_dtype(x, "x")
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.mean.shape))}) like the fitted data, got {x.shape!r}"
            )
        dev = device_of(x)
        mean, std = dev.send(self.mean, dtype), dev.send(self.std, dtype)
        return (x.astype(dtype, copy=False) - mean) / std

    def fit_transform(self, x_train: Any) -> Any:
        """``fit(x_train).transform(x_train)``."""
        return self.fit(x_train).transform(x_train)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready statistics: ``{"mean": [...], "std": [...], "dtype": "float32"}``."""
        if self.mean is None:
            raise RuntimeError("this Standardizer is not fitted yet; call fit(x_train) first")
        return {"mean": to_numpy(self.mean).tolist(), "std": to_numpy(self.std).tolist(), "dtype": str(self.mean.dtype)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Standardizer:
        """Rebuild a fitted Standardizer (on the host) from :meth:`state_dict`'s output."""
        if not isinstance(state, dict) or not {"mean", "std"} <= state.keys():
            raise ValueError(f"state must be a dict with 'mean' and 'std', got {state!r:.200}")
        dtype = np.dtype(state.get("dtype", "float32"))
        mean, std = np.asarray(state["mean"], dtype=dtype), np.asarray(state["std"], dtype=dtype)
        if mean.shape != std.shape:
            raise ValueError(f"state's mean {mean.shape} and std {std.shape} differ in shape")
        if not np.all(std > 0):
            raise ValueError("state's std must be positive everywhere")
        scaler = cls()
        scaler.mean, scaler.std = mean, std
        return scaler

    def __repr__(self) -> str:
        shape = None if self.mean is None else tuple(self.mean.shape)
        return f"Standardizer(features={shape})"


def standardize(x_train: Any, *others: Any) -> tuple[Any, ...]:
    """Fit a :class:`Standardizer` on ``x_train`` only and apply it to every array given:
    ``scaler, x_train, x_dev, x_test = standardize(x_train, x_dev, x_test)``."""
    scaler = Standardizer().fit(x_train)
    return (scaler, scaler.transform(x_train), *(scaler.transform(x) for x in others))


def one_hot(y: Any, n_classes: int | None = None, dtype: Any = "float32") -> Any:
    """Labels (N,) in [0, C) to a one-hot matrix (N, C) on y's device (``C = n_classes``,
    by default ``max(y) + 1``), of ``dtype`` (a real dtype: float, integer or bool)."""
    if not (hasattr(y, "dtype") and hasattr(y, "ndim")):
        raise TypeError(f"y must be a NumPy or CuPy array of shape (N,), got {type(y).__name__}")
    if y.ndim != 1:
        raise ValueError(f"y must be an array of shape (N,), got {y.shape!r}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if dtype is None or out_dtype is None or out_dtype.kind not in "biuf":
        raise TypeError(f"dtype must be a real NumPy dtype such as 'float32', got {dtype!r}")
    n = int(y.shape[0])
    if n_classes is None:
        if n == 0:
            raise ValueError("y is empty; give n_classes")
        n_classes = int(y.max()) + 1
    c = check_int("n_classes", n_classes, low=1)
    if n:  # one read of the range
        check_labels(y, c, "y")
    xp = array_module(y)
    with device_of(y):
        out = xp.zeros((n, c), dtype=out_dtype)
        out[xp.arange(n), y] = 1
    return out
