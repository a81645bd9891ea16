"""Losses: the mean over the batch of a per-sample loss, and its gradient.

Every loss's ``forward(y, t)`` returns a 0-d array on the device (no host round trip) and
remembers what ``backward()`` needs; ``backward()`` returns ∂L/∂y with the 1/N of the mean
already applied. The cost of the seed is this mean; the objective adds a regularizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.device import array_module, check_device, device_of, refuse_host_read
from ..backend.layer_kernels import ones_vector, softmax_cross_entropy
from .functional import log_softmax, sigmoid, softmax

__all__ = ["Loss", "MSELoss", "SigmoidBCELoss", "SoftmaxWithLoss", "log_softmax", "softmax"]


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


def _check_pair(y: Any, t: Any, y_name: str) -> tuple[Any, Any]:
    """Check that y and t are arrays on one device with the same N; return them."""
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
    return y, t


def _same_shape_targets(y: Any, t: Any, y_name: str) -> Any:
    """Targets shaped like y (a (N,) target for a (N, 1) output is reshaped), in y's dtype."""
    if t.shape != y.shape:
        if y.ndim == 2 and y.shape[1] == 1 and t.shape == y.shape[:1]:
            t = t.reshape(y.shape)
        else:
            raise ValueError(f"t must have the shape of {y_name} {tuple(y.shape)}, got {tuple(t.shape)}")
    if t.dtype.kind not in "biuf":
        raise TypeError(f"t must hold numbers, got dtype {t.dtype}")
    return t.astype(y.dtype, copy=False)


def _row_max(z: Any, xp: Any) -> Any:
    """max over each row of z (N, C), shaped (N, 1).

    NumPy reduces a short last axis one row at a time; for few classes the maxima of the
    transposed copy's rows come out of one vectorized pass instead, 2–3× faster for a 200×10
    batch. The same values either way (a maximum does not depend on the order).
    """
    n, n_classes = z.shape
    if xp is np and n_classes <= 32 and n >= 32:
        return z.T.copy().max(axis=0)[:, None]
    return z.max(axis=1, keepdims=True)


def _row_sums(x: Any, xp: Any) -> Any:
    """Σ over each row of x (N, C), shaped (N, 1).

    NumPy reduces a short last axis one row at a time; for few columns the product x·1 (one
    BLAS matrix-vector product) is 2–3× faster for a 200×10 batch. It sums in BLAS's order
    instead of NumPy's pairwise one: the same value up to float rounding, and, as with the
    bias gradients' 1ᵀ·dy, that order may depend on where the row sits in the batch (BLAS
    blocks rows together), so a sample's last bit can differ between two batches holding it.
    Every call with the same batch gives the same bits.
    """
    n_classes = x.shape[1]
    if xp is np and n_classes <= 32 and x.dtype in (np.float32, np.float64):
        return np.matmul(x, ones_vector(n_classes, x.dtype))[:, None]
    return x.sum(axis=1, keepdims=True)


class SoftmaxWithLoss(Loss):
    """Softmax followed by cross-entropy, fused: L = −(1/N) Σ_n log softmax(z_n)[t_n].

    ``logits`` z: (N, C). ``t``: integer class labels (N,) in [0, C), or one-hot / probability
    targets (N, C), where L = −(1/N) Σ_n Σ_k t_nk · log softmax(z_n)_k.
    Computed through log-sum-exp (no log(y + 1e-7)). Backward: (softmax(z) − t) / N.
    """

    def forward(self, logits: Any, t: Any) -> Any:
        logits, t = _check_pair(logits, t, "logits")
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
        xp = array_module(logits)
        n, n_classes = logits.shape
        self._grad = None
        if xp is not np and t.ndim == 1 and t.dtype.kind in "iu":
            # On a GPU: loss and gradient of every row in one fused kernel (plus one sum).
            self._check_labels(t, n_classes)
            loss, self._grad = softmax_cross_entropy(logits, t)
            return loss
        # log softmax(z) = (z − c) − lse with c the row max and lse = log Σ exp(z − c); the
        # exponentials are kept, since backward's softmax is exp / Σ exp.
        shifted = logits - _row_max(logits, xp)
        exp = xp.exp(shifted)
        sums = _row_sums(exp, xp)
        lse = xp.log(sums)
        target_at = None  # flat indices of the labelled logits (labels only), for backward
        if t.ndim == 1:
            self._check_labels(t, n_classes)
            # z[n, t_n] as a gather from the flat array at n·C + t_n: the same elements as
            # z[arange(N), t] in the same order, 3× faster for a small batch; backward reuses it
            target_at = self._row_offsets(logits) + t
            loss = (lse.sum() - shifted.ravel().take(target_at).sum()) * (1.0 / n)  # −(1/N) Σ_n log softmax(z_n)[t_n]
        elif t.shape == logits.shape:
            t = t.astype(logits.dtype, copy=False)
            loss = ((t.sum(axis=1, keepdims=True) * lse).sum() - (t * shifted).sum()) * (1.0 / n)
        else:
            raise ValueError(
                f"t must be labels of shape ({n},) or one-hot targets of shape {tuple(logits.shape)}, "
                f"got {tuple(t.shape)}"
            )
        self._exp, self._sums, self._t = exp, sums, t
        self._target_at = target_at
        return xp.asarray(loss)

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
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise ValueError(
                f"t holds labels outside [0, {n_classes}) for {n_classes} classes: "
                f"min {int(t.min())}, max {int(t.max())}"
            )

    def _row_offsets(self, logits: Any) -> Any:
        """n·C for n = 0..N−1 (int64), on the logits' device, kept between calls (a step should
        not rebuild it): the flat index of row n's first logit."""
        offsets = getattr(self, "_offsets", None)
        n, n_classes = logits.shape
        if (
            offsets is None
            or offsets.shape[0] != n
            or self._offsets_step != n_classes
            or type(offsets) is not type(logits)
            or offsets.device != logits.device
        ):
            offsets = array_module(logits).arange(0, n * n_classes, n_classes, dtype=np.int64)[:n]
            self._offsets, self._offsets_step = offsets, n_classes
        return offsets

    def backward(self) -> Any:
        """∂L/∂z = (softmax(z) − t) / N, shape (N, C)."""
        if self._grad is not None:
            return self._grad  # the fused kernel computed it with the loss
        y = self._exp / self._sums
        t = self._t
        if t.ndim == 1:
            y.ravel()[self._target_at] -= 1.0  # y is a fresh contiguous array: ravel is a view
        else:
            y -= t
        y *= 1.0 / y.shape[0]
        return y


class MSELoss(Loss):
    """Squared error, halved as in the textbook: L = (1/N) Σ_n ½‖y_n − t_n‖².

    ``y`` and ``t``: (N, K) or (N,). Backward: (y − t) / N.
    """

    def forward(self, y: Any, t: Any) -> Any:
        y, t = _check_pair(y, t, "y")
        t = _same_shape_targets(y, t, "y")
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
        logits, t = _check_pair(logits, t, "logits")
        t = _same_shape_targets(logits, t, "logits")
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
