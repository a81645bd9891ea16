"""Losses: the mean over the batch of a per-sample loss, and its gradient.

Every loss's ``forward(y, t)`` returns a 0-d array on the device (no host round trip) and
remembers what ``backward()`` needs; ``backward()`` returns ∂L/∂y with the 1/N of the mean
already applied. The cost of the seed is this mean; the objective adds a regularizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.device import (
    array_module,
    call_on_device_of,
    check_device,
    device_of,
    on_input_device,
    refuse_host_read,
)
from ..backend.selection import ops_of
from ..validation import (
    FLOAT_DTYPES,
    check_array,
    check_distributions,
    check_labels,
    check_real,
    check_unit_interval,
)
from .functional import binary_cross_entropy_with_logits, sigmoid


class Loss:
    """Base class: ``forward(y, t)`` → 0-d array, ``backward()`` → ∂L/∂y.

    y must be float32 or float64 with at least one sample (the mean over zero samples is
    undefined); t lives on y's device and holds real numbers (SoftmaxWithLoss's labels: integers).
    ``validate`` (default True) checks the targets' values on every call: label range, target
    range. On a GPU that reads values back to the host, so a training loop that has
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

    def _not_run(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}.backward called before forward; call forward(y, t) first")

    def _check(self, y: Any, t: Any, y_name: str, ndims: tuple[int, ...], like_y: bool = False) -> Any:
        """Check y (float32/float64, not empty, with ``ndims`` dimensions) and t (an array on y's
        device with y's N); return t, with ``like_y`` shaped like y (a (N,) target for a (N, 1)
        output is reshaped), holding real numbers, in y's dtype."""
        # every step passes the cheap comparisons (NumPy arrays all live on the CPU); the probes
        # and messages only when one fails
        cheap = type(t) is type(y) and getattr(y, "ndim", None) in ndims and y.dtype in FLOAT_DTYPES and y.size
        if not (cheap and (type(y) is np.ndarray or y.device == t.device)):
            for name, a in ((y_name, y), ("t", t)):
                if not (hasattr(a, "ndim") and hasattr(a, "dtype") and hasattr(a, "shape")):
                    raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
            dims = "(N, C)" if ndims == (2,) else "(N, K) or (N,)"
            check_array(y_name, y, type(self).__name__, ndims=ndims, dims=dims, nonempty=True)
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
        check_real("t", t)
        return t.astype(y.dtype, copy=False)


class SoftmaxWithLoss(Loss):
    """Softmax followed by cross-entropy, fused: L = −(1/N) Σ_n log softmax(z_n)[t_n].

    ``logits`` z: (N, C). ``t``: integer class labels (N,) in [0, C), or one-hot / probability
    targets (N, C) (entries ≥ 0, rows summing to 1), where
    L = −(1/N) Σ_n Σ_k t_nk · log softmax(z_n)_k.
    Computed through log-sum-exp (no log(y + 1e-7)). Backward: (softmax(z) − t) / N.
    """

    _grad: Any = None

    @on_input_device
    def forward(self, logits: Any, t: Any) -> Any:
        self._check(logits, t, "logits", (2,))
        n, n_classes = logits.shape
        if t.ndim == 1:
            if self.validate:
                refuse_host_read(f"{type(self).__name__}(validate=True) reads the labels' range back to the host")
            if self.validate or t.dtype.kind != "i":
                t = check_labels(t, n_classes if self.validate else None)
        elif t.shape != logits.shape:
            raise ValueError(
                f"t must be labels of shape ({n},) or one-hot targets of shape {tuple(logits.shape)}, "
                f"got {tuple(t.shape)}"
            )
        else:
            check_real("t", t)
            if self.validate:
                refuse_host_read(f"{type(self).__name__}(validate=True) reads the targets' range back to the host")
                check_distributions(t, logits.dtype)
        # loss and gradient together (one kernel on a GPU); backward returns the gradient
        loss, self._grad = ops_of(logits).softmax_cross_entropy(logits, t)
        return loss

    def backward(self) -> Any:
        """∂L/∂z = (softmax(z) − t) / N, shape (N, C)."""
        if self._grad is None:
            raise self._not_run()
        return self._grad


class MSELoss(Loss):
    """Squared error, halved as in the textbook: L = (1/N) Σ_n ½‖y_n − t_n‖².

    ``y`` and ``t``: (N, K) or (N,). Backward: (y − t) / N.
    """

    _diff: Any = None

    @on_input_device
    def forward(self, y: Any, t: Any) -> Any:
        t = self._check(y, t, "y", (1, 2), like_y=True)
        diff = y - t
        self._diff = diff
        flat = diff.reshape(-1)
        return array_module(y).asarray(flat @ flat * (0.5 / y.shape[0]))

    def backward(self) -> Any:
        if self._diff is None:
            raise self._not_run()
        diff = self._diff
        return call_on_device_of(diff, lambda: diff * (1.0 / diff.shape[0]))  # on its GPU, whichever is current


class SigmoidBCELoss(Loss):
    """Sigmoid followed by binary cross-entropy, fused and stable for any logit z:

    L = (1/N) Σ [max(z, 0) − z·t + log(1 + e^−|z|)]  ( = −t·log σ(z) − (1−t)·log(1−σ(z)) ).

    ``logits`` and ``t``: (N, K) or (N,), t in [0, 1]. Backward: (σ(z) − t) / N.
    """

    _z: Any = None

    @on_input_device
    def forward(self, logits: Any, t: Any) -> Any:
        t = self._check(logits, t, "logits", (1, 2), like_y=True)
        xp = array_module(logits)
        if self.validate:
            refuse_host_read(f"{type(self).__name__}(validate=True) reads the targets' range back to the host")
            check_unit_interval(t)
        per_element = binary_cross_entropy_with_logits(logits, t)
        self._z, self._t = logits, t
        return xp.asarray(per_element.sum() / logits.shape[0])

    def backward(self) -> Any:
        if self._z is None:
            raise self._not_run()
        return call_on_device_of(self._z, self._gradient)  # on its GPU, whichever is current

    def _gradient(self) -> Any:
        y = sigmoid(self._z)
        y -= self._t
        y *= 1.0 / y.shape[0]
        return y
