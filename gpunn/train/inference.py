"""Evaluate and predict: a model and its loss run on a device in eval mode. Each of :func:`evaluate`,
:func:`predict_output`, :func:`predict_proba` and :func:`predict` is the Trainer method of that name,
given the model, the loss and the device. The correct count (:func:`correct`) is the fit's as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend.device import Device, array_module, device_of, to_numpy
from ..distributed import DataParallel
from ..nn.functional import sigmoid, softmax
from ..nn.losses import Loss, SigmoidBCELoss, SoftmaxWithLoss
from ..nn.sequential import Sequential
from ..validation import check_int
from . import batches as batching
from .inputs import checked_data, checked_x, send


def evaluate(model: Sequential, loss: Loss, device: Device, x: Any, y: Any, batch_size: int = 1024) -> dict[str, float]:
    batch_size = check_int("batch_size", batch_size, low=1)
    x, y = send(model, device, *checked_data(model, loss, x, y, "x", "y"))
    return evaluate_on_device(model, loss, device, x, y, accuracy_kind(loss, y), batch_size)


def evaluate_on_device(
    model: Sequential,
    loss: Loss,
    device: Device,
    x: Any,
    y: Any,
    classify: str | None,
    batch_size: int = 1024,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy) over (x, y), already on the device. ``parallel``: every rank evaluates
    its share of the rows and the sums are reduced, so every rank gets the same figures (collective)."""
    n = x.shape[0]
    if parallel is not None:
        rows = parallel.rows(n)
        x, y = x[rows], y[rows]
    xp = array_module(x)
    with inference(model, loss, device):
        total = xp.zeros((), dtype=np.float64)
        count = xp.zeros((), dtype=np.int64)
        for xb, yb in batching.batches(x, y, batch_size, shuffle=False):
            logits = model.forward(xb)
            total += loss.forward(logits, yb) * xb.shape[0]
            if classify is not None:
                count += correct(logits, yb, classify)
        sums = [float(total), int(count)]
        if parallel is not None:
            sums = parallel.reduce_sums(sums)
    result = {"loss": sums[0] / n}
    if classify is not None:
        result["accuracy"] = round(sums[1]) / n
    return result


def predict_output(model: Sequential, loss: Loss, device: Device, x: Any, batch_size: int = 1024) -> Any:
    batch_size = check_int("batch_size", batch_size, low=1)
    x = checked_x(model, x, "x")
    with inference(model, loss, device):
        xd = device.send(x, dtype=model.dtype)
        parts = [model.forward(xd[i : i + batch_size]) for i in range(0, xd.shape[0], batch_size)]
        out = array_module(xd).concatenate(parts)
    return out if device_of(x) == device else to_numpy(out)


def predict_proba(model: Sequential, loss: Loss, device: Device, x: Any, batch_size: int = 1024) -> Any:
    logits = predict_output(model, loss, device, x, batch_size)
    return sigmoid(logits) if isinstance(loss, SigmoidBCELoss) else softmax(logits, axis=1)


def predict(model: Sequential, loss: Loss, device: Device, x: Any, batch_size: int = 1024) -> Any:
    logits = predict_output(model, loss, device, x, batch_size)
    if isinstance(loss, SoftmaxWithLoss):
        return logits.argmax(axis=1)
    if isinstance(loss, SigmoidBCELoss):
        labels = (logits > 0).astype(np.int64)
        return labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels
    return logits


@contextlib.contextmanager
def inference(model: Sequential, loss: Loss, device: Device) -> Iterator[None]:
    """Eval mode on the device, without the loss's per-batch label check (the labels were checked
    once); the model's mode and the loss's setting are put back after."""
    was_training, validate = model.training, loss.validate
    model.eval()
    loss.validate = False
    try:
        with device:
            yield
    finally:
        loss.validate = validate
        model.train(was_training)


def accuracy_kind(loss: Loss, y: Any) -> str | None:
    """How to count correct predictions: argmax for softmax, threshold for sigmoid, none for MSE."""
    if isinstance(loss, SoftmaxWithLoss):
        return "labels" if y.ndim == 1 else "onehot"
    if isinstance(loss, SigmoidBCELoss):
        return "binary"
    return None  # regression (MSELoss): no accuracy


def correct(logits: Any, yb: Any, kind: str) -> Any:
    """Number of correct predictions in a batch, as a 0-d device array (no host read)."""
    if kind == "labels":
        return (logits.argmax(axis=1) == yb).sum()
    if kind == "onehot":
        return (logits.argmax(axis=1) == yb.argmax(axis=1)).sum()
    target = yb.reshape(logits.shape) > 0.5
    return ((logits > 0) == target).all(axis=-1).sum() if logits.ndim == 2 else ((logits > 0) == target).sum()
