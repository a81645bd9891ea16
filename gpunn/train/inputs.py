"""The data of a fit or an evaluation: checked once against the model and the loss, the dev set split
off, and sent to the device once."""

from __future__ import annotations

from typing import Any

from ..backend.device import Device, to_numpy
from ..nn.layers import Linear
from ..nn.losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from ..nn.sequential import Sequential
from ..validation import (
    check_distributions,
    check_float,
    check_labels,
    check_real,
    check_unit_interval,
    check_values,
)
from . import batches as batching
from . import data as datasets


def prepare(
    model: Sequential,
    loss: Loss,
    device: Device,
    x: Any,
    y: Any,
    validation_data: tuple[Any, Any] | None,
    validation_split: float | None,
    seed: int,
) -> tuple[Any, Any, tuple[Any, Any] | None]:
    """(x, y, dev) of a fit on ``device``: the data checked once, the dev set (x_dev, y_dev) split off
    by ``validation_split`` (stratified for labels; ``seed`` draws it) or taken from ``validation_data``,
    else None."""
    x, y = checked_data(model, loss, x, y, "x", "y")
    if validation_data is not None and validation_split is not None:
        raise ValueError("give validation_data or validation_split, not both")
    if validation_split is not None:
        fraction = check_float("validation_split", validation_split, low=0.0, high=1.0, low_open=True, high_open=True)
        stratify = isinstance(loss, SoftmaxWithLoss) and y.ndim == 1
        try:
            (x, y), validation_data = datasets.split(
                to_numpy(x), to_numpy(y), fractions=(1.0 - fraction, fraction), stratify=stratify, seed=seed
            )
        except ValueError as exc:  # a part left empty: too few samples (of a class, stratified)
            how = " (stratified: each class is cut on its own)" if stratify else ""
            raise ValueError(
                f"validation_split={fraction} of {x.shape[0]} samples leaves the training or the validation "
                f"part empty{how}; pass validation_data=(x_dev, y_dev), or use more samples"
            ) from exc
    dev = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (x_dev, y_dev)")
        dev = send(model, device, *checked_data(model, loss, *validation_data, "x_dev", "y_dev"))
    return (*send(model, device, x, y), dev)


def checked_x(model: Sequential, x: Any, name: str) -> Any:
    """``x`` as a 2-D numeric array of N >= 1 finite rows (a list or a DataFrame becomes a NumPy
    array) with the features the model's first layer expects, and values the model's dtype can hold."""
    x = batching.as_array(x, name)
    if not (hasattr(x, "ndim") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array of shape (N, features), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, features), got shape {tuple(x.shape)}")
    check_real(name, x)
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no samples (shape {tuple(x.shape)})")
    first = model.layers[0] if len(model) else None
    if isinstance(first, Linear) and x.shape[1] != first.n_in:
        raise ValueError(
            f"{name} has {x.shape[1]} features but the model's first layer, {first!r}, expects {first.n_in}"
        )
    check_values(x, name, model.dtype)
    return x


def checked_data(model: Sequential, loss: Loss, x: Any, y: Any, x_name: str, y_name: str) -> tuple[Any, Any]:
    """x (:func:`checked_x`) and y checked once per fit or evaluation, and returned as arrays (a
    list or a pandas Series becomes a NumPy array). y must have x's N rows; float targets must be
    finite and within the model's dtype. For SoftmaxWithLoss: integer labels (N,) in [0, outputs)
    ((N, 1) integer labels are flattened), or targets (N, outputs) whose rows are distributions
    (:func:`~gpunn.validation.check_distributions`, the loss's own check); for SigmoidBCELoss and
    MSELoss: (N, outputs), or (N,) for one output, with every SigmoidBCELoss target in [0, 1]."""
    x = checked_x(model, x, x_name)
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    outputs = linears[-1].n_out if linears else None
    y = batching.as_array(y, y_name)
    if not (hasattr(y, "ndim") and hasattr(y, "dtype")):
        raise TypeError(f"{y_name} must be an array, got {type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"{x_name} and {y_name} hold different numbers of samples: {tuple(x.shape)} and {tuple(y.shape)}"
        )
    softmax = isinstance(loss, SoftmaxWithLoss)
    if softmax and y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "iu" and outputs != 1:
        y = y.reshape(-1)  # a column of class labels, as a DataFrame column or y.reshape(-1, 1) gives
    if softmax and y.ndim == 1:
        return x, check_labels(y, outputs, y_name)
    check_real(y_name, y)
    check_values(y, y_name, model.dtype)
    if not isinstance(loss, (SoftmaxWithLoss, SigmoidBCELoss, MSELoss)) or outputs is None:
        return x, y
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != outputs) or (y.ndim == 1 and outputs != 1):
        wanted = f"({x.shape[0]}, {outputs})" + (f" or ({x.shape[0]},)" if outputs == 1 else "")
        labels = f", or integer labels of shape ({x.shape[0]},)" if softmax else ""
        raise ValueError(
            f"{y_name} must have shape {wanted}{labels} for {type(loss).__name__} on a model with {outputs} "
            f"outputs, got shape {tuple(y.shape)}"
        )
    if softmax:
        check_distributions(y, model.dtype, y_name)
    elif isinstance(loss, SigmoidBCELoss):
        check_unit_interval(y, y_name, type(loss).__name__)
    return x, y


def send(model: Sequential, device: Device, x: Any, y: Any) -> tuple[Any, Any]:
    """(x, y) on ``device``: x and float targets in the model's dtype, integer labels as they are."""
    with device:
        xd = device.send(x, dtype=model.dtype)
        yd = device.send(y) if y.dtype.kind in "iu" else device.send(y, dtype=model.dtype)
    return xd, yd
