"""Copies of a model's weights and its optimizer's state, taken during a fit and put back: the best
epoch's weights after early stopping, and the last good state after the loss diverged."""

from __future__ import annotations

import warnings
from typing import Any

from ..nn.sequential import Sequential
from ..optim import Optimizer


def snapshot(model: Sequential, optimizer: Optimizer) -> dict[str, Any]:
    """Copies of the model's weights and of the optimizer's state and step count. The weights are
    copied per parameter, not as the flat buffer: a callback may replace a parameter, and so change
    the buffer's layout, before the copy is restored."""
    with model.device:  # copies go to the current GPU: make it the model's
        return {
            "weights": [p.data.copy() for p in model.parameters()],
            "state": {name: buffer.copy() for name, buffer in optimizer.state.items()},
            "step": optimizer.step_count,
        }


def restore_after_divergence(
    model: Sequential, optimizer: Optimizer, error: Exception, saved: dict[str, Any] | None, epoch: int
) -> None:
    """Put back the weights and optimizer state ``saved`` at ``epoch`` (0: the fit's start), if any
    (a diverged step leaves NaN in both), and say so in ``error``."""
    if saved is None or not restore_weights(model, saved["weights"]):
        return
    with model.device:
        what = _restore_state(optimizer, saved)
    restored = f"of epoch {epoch}" if epoch else "the fit started from"
    error.args = (f"{error}; restored the {what} {restored} (restore_best=True)",)


def _restore_state(optimizer: Optimizer, saved: dict[str, Any]) -> str:
    """Put the snapshot's optimizer state back where its layout still fits; says what was restored."""
    state = optimizer.state
    if all(name not in saved["state"] or saved["state"][name].shape == b.shape for name, b in state.items()):
        for name, buffer in state.items():
            # a buffer made since the snapshot (momentum switched on by a callback) held zeros then
            old = saved["state"].get(name)
            buffer[...] = 0 if old is None else old
        optimizer.step_count = saved["step"]
        return "weights and optimizer state"
    return "weights (not the optimizer state, whose layout changed since)"  # the parameters were repacked


def restore_weights(model: Sequential, saved: list[Any]) -> bool:
    """Write ``saved`` (a snapshot's weights) back into the model's parameters; False, with a warning,
    when their shapes changed since."""
    params = model.parameters()
    if len(params) != len(saved) or any(p.shape != tuple(a.shape) for p, a in zip(params, saved, strict=True)):
        message = "the model's parameters changed shape since its best epoch: keeping the last weights"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False
    with model.device:
        for p, a in zip(params, saved, strict=True):
            p.data[...] = a
    return True
