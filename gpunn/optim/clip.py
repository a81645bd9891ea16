"""Global-norm gradient clipping that never reads a value back to the host.

g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)), with ‖g‖₂ over every gradient together. The norm
and the factor stay 0-d device arrays, so clipping adds no synchronization to a GPU step.

:func:`clip_grad_norm` scales the gradients in place, whatever they hold: called after
``regularizer.backward`` it clips the penalty's gradient too. An optimizer's
``max_grad_norm`` does not use it: the step computes ‖g‖² of the loss gradient with
``ops.sum_of_squares`` and its update applies the factor, then adds an L2 / L1 penalty passed
to ``step(regularizer)`` unclipped (PyTorch's order: clip, then the optimizer's weight decay);
``param.grad`` keeps the unclipped loss gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backend.device import array_module
from ..nn.parameter import Parameter
from ..validation import check_float


def clip_flat_grad(grad: Any, max_norm: float) -> Any:
    """Clip one flat gradient buffer in place; return its norm before clipping (0-d array)."""
    xp = array_module(grad)
    norm = xp.asarray(xp.sqrt(grad @ grad))  # NumPy ufuncs return scalars; keep a 0-d array
    grad *= xp.minimum(max_norm / (norm + 1e-6), 1.0)
    return norm


def clip_grad_norm(params: Iterable[Parameter] | Any, max_norm: float) -> Any:
    """Scale the gradients of ``params`` (or of a model) so that their joint L2 norm is at
    most ``max_norm``; return the norm before clipping as a 0-d device array."""
    max_norm = check_float("max_norm", max_norm, low=0.0, low_open=True)
    if hasattr(params, "parameters"):
        params = params.parameters()
    params = list(params)
    if not params:
        raise ValueError("params is empty: there are no gradients to clip")
    flat = params[0].flat
    if flat is not None and flat.owns(params):
        return clip_flat_grad(flat.grad, max_norm)
    xp = array_module(params[0].grad)
    grads = [p.grad.reshape(-1) for p in params]
    norm = xp.asarray(xp.sqrt(sum(g @ g for g in grads)))
    factor = xp.minimum(max_norm / (norm + 1e-6), 1.0)
    for p in params:
        p.grad *= factor
    return norm
