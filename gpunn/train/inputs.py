"""The data of a fit or an evaluation: checked once against the model and the loss, the dev set split
off, and sent to the device once."""

from __future__ import annotations

from typing import Any

from ..backend.device import Device, to_numpy
from ..nn.layers import Linear
from ..nn.losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from ..nn.sequential import Sequential
from ..validation import check_float
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
    """x (N, features) checked against the model's first layer, in the model's dtype."""
    first = model.layers[0] if len(model) else None
    n_in = first.n_in if isinstance(first, Linear) else None
    return batching.checked_inputs(x, name, n_in, repr(first), dtype=model.dtype)


def checked_data(model: Sequential, loss: Loss, x: Any, y: Any, x_name: str, y_name: str) -> tuple[Any, Any]:
    """x and y checked once per fit or evaluation (targets against the loss and the model's outputs)."""
    x = checked_x(model, x, x_name)
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    outputs = linears[-1].n_out if linears else None
    kind = next((k.__name__ for k in (SoftmaxWithLoss, SigmoidBCELoss, MSELoss) if isinstance(loss, k)), None)
    return x, batching.checked_targets(y, x, (x_name, y_name), kind, outputs, model.dtype)


def send(model: Sequential, device: Device, x: Any, y: Any) -> tuple[Any, Any]:
    """(x, y) on ``device``: x and float targets in the model's dtype, integer labels as they are."""
    with device:
        xd = device.send(x, dtype=model.dtype)
        yd = device.send(y) if y.dtype.kind in "iu" else device.send(y, dtype=model.dtype)
    return xd, yd
