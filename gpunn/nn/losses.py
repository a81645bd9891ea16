"""Losses: the mean over the batch of a per-sample loss, and its gradient.

Every loss's ``forward(y, t)`` returns a 0-d array on the device (no host round trip) and
remembers what ``backward()`` needs; ``backward()`` returns ∂L/∂y with the 1/N of the mean
already applied. The cost of the seed is this mean; the objective adds a regularizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.device import array_module, check_device, device_of, refuse_host_read
from ..backend.selection import ops_of
from .functional import sigmoid


class Loss:
    """Base class: ``forward(y, t)`` → 0-d array, ``backward()`` → ∂L/∂y.

    ``validate`` (default True) checks the targets on every call: label range and type.
    On a GPU the range check reads one value back to the host, so a training loop that has
    checked its labels once (the Trainer does) may set ``validate = False``. A step captured
    as a CUDA graph must: a validating loss refuses capture (:class:`gpunn.StepCaptureError`).
    """

    def __init__(self, validate: bool = True) -> None:
        self.validate = bool(validate)

    def __call__(self, y: Any, t: Any) -> Any:
        return self.forward(y, t)

    def forward(self, y: Any, t: Any) -> Any:
        raise NotImplementedError

    def backward(self) -> Any:
        raise NotImplementedError


def _check_targets(y: Any, t: Any, y_name: str, like_y: bool = False) -> Any:
    """Check that y and t are arrays on one device with the same N; return t, with ``like_y``
    shaped like y (a (N,) target for a (N, 1) output is reshaped) and in y's dtype."""
    both_numpy = type(y) is np.ndarray and type(t) is np.ndarray  # every step on the CPU: skip the probes
    if not both_numpy:
        for name, a in ((y_name, y), ("t", t)):
            if not (hasattr(a, "ndim") and hasattr(a, "dtype")):
                raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{y_name} must have shape (N, C) or (N,), got {tuple(y.shape)}")
    if not both_numpy:  # NumPy arrays all live on the CPU
        check_device(t, device_of(y), "t", y_name)
    if t.shape[:1] != y.shape[:1]:
        raise ValueError(
            f"{y_name} and t hold different numbers of samples: {y_name}.shape == {tuple(y.shape)}, "
            f"t.shape == {tuple(t.shape)}"
        )
    if not like_y:
        return t
    if t.shape != y.shape:
        if y.ndim == 2 and y.shape[1] == 1 and t.shape == y.shape[:1]:
            t = t.reshape(y.shape)
        else:
            raise ValueError(f"t must have the shape of {y_name} {tuple(y.shape)}, got {tuple(t.shape)}")
    if t.dtype.kind not in "biuf":
        raise TypeError(f"t must hold numbers, got dtype {t.dtype}")
    return t.astype(y.dtype, copy=False)


class SoftmaxWithLoss(Loss):
    """Softmax followed by cross-entropy, fused: L = −(1/N) Σ_n log softmax(z_n)[t_n].

    ``logits`` z: (N, C). ``t``: integer class labels (N,) in [0, C), or one-hot / probability
    targets (N, C), where L = −(1/N) Σ_n Σ_k t_nk · log softmax(z_n)_k.
    Computed through log-sum-exp (no log(y + 1e-7)). Backward: (softmax(z) − t) / N.
    """

    def forward(self, logits: Any, t: Any) -> Any:
        _check_targets(logits, t, "logits")
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
        n, n_classes = logits.shape
        if t.ndim == 1:
            self._check_labels(t, n_classes)
        elif t.shape != logits.shape:
            raise ValueError(
                f"t must be labels of shape ({n},) or one-hot targets of shape {tuple(logits.shape)}, "
                f"got {tuple(t.shape)}"
            )
        # loss and gradient together (one kernel on a GPU); backward returns the gradient
        loss, self._grad = ops_of(logits).softmax_cross_entropy(logits, t)
        return loss

    def _check_labels(self, t: Any, n_classes: int) -> None:
        """Integer labels in [0, C) (reads two values back to the host: skipped without validate)."""
        if t.dtype.kind not in "iu":
            raise TypeError(
                f"t must hold integer class labels, got dtype {t.dtype}; convert with t.astype(int), "
                f"or pass one-hot targets of shape (N, {n_classes})"
            )
        if not (self.validate and t.size):
            return
        refuse_host_read(f"{type(self).__name__}(validate=True) reads the labels' range back to the host")
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= n_classes:
            raise ValueError(f"t holds labels outside [0, {n_classes}) for {n_classes} classes: min {low}, max {high}")

    def backward(self) -> Any:
        """∂L/∂z = (softmax(z) − t) / N, shape (N, C)."""
        return self._grad


class MSELoss(Loss):
    """Squared error, halved as in the textbook: L = (1/N) Σ_n ½‖y_n − t_n‖².

    ``y`` and ``t``: (N, K) or (N,). Backward: (y − t) / N.
    """

    def forward(self, y: Any, t: Any) -> Any:
        t = _check_targets(y, t, "y", like_y=True)
        diff = y - t
        self._diff = diff
        flat = diff.reshape(-1)
        return array_module(y).asarray(flat @ flat * (0.5 / y.shape[0]))

    def backward(self) -> Any:
        return self._diff * (1.0 / self._diff.shape[0])


class SigmoidBCELoss(Loss):
    """Sigmoid followed by binary cross-entropy, fused and stable for any logit z:

    L = (1/N) Σ [max(z, 0) − z·t + log(1 + e^−|z|)]  ( = −t·log σ(z) − (1−t)·log(1−σ(z)) ).

    ``logits`` and ``t``: (N, K) or (N,), t in [0, 1]. Backward: (σ(z) − t) / N.
    """

    def forward(self, logits: Any, t: Any) -> Any:
        t = _check_targets(logits, t, "logits", like_y=True)
        xp = array_module(logits)
        if self.validate and t.size:
            refuse_host_read(f"{type(self).__name__}(validate=True) reads the targets' range back to the host")
            low, high = float(t.min()), float(t.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(f"t must lie in [0, 1] for binary cross-entropy, got min {low}, max {high}")
        per_element = xp.maximum(logits, 0.0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
        self._z, self._t = logits, t
        return xp.asarray(per_element.sum() / logits.shape[0])

    def backward(self) -> Any:
        y = sigmoid(self._z)
        y -= self._t
        y *= 1.0 / y.shape[0]
        return y
