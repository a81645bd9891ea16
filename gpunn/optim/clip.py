"""Global-norm gradient clipping that never reads a value back to the host.

g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)), with ‖g‖₂ over every gradient together. The norm
and the factor stay 0-d device arrays, so clipping adds no synchronization to a GPU step.

:func:`clip_grad_norm` scales the gradients in place, whatever they hold: called after
``regularizer.backward`` it clips the penalty's gradient too. An optimizer's ``max_grad_norm``
does not use it: its update applies the factor to the loss gradient and then adds an L2 / L1
penalty unclipped (PyTorch's order), leaving ``param.grad`` as it was (see :class:`Optimizer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backend.device import array_module
from ..nn.parameter import Parameter, parameter_list
from ..validation import check_float


def clip_grad_norm(params: Iterable[Parameter] | Any, max_norm: float) -> Any:
    """Scale the gradients of ``params`` (or of a model) so that their joint L2 norm is at
    most ``max_norm``; return the norm before clipping as a 0-d device array."""
    max_norm = check_float("max_norm", max_norm, low=0.0, low_open=True)
    params = parameter_list(params)
    if not params:
        raise ValueError("params is empty: there are no gradients to clip")
    flat = params[0].flat
    grads = [flat.grad] if flat is not None and flat.owns(params) else [p.grad for p in params]
    xp = array_module(grads[0])
    norm = xp.asarray(xp.sqrt(sum(g.reshape(-1) @ g.reshape(-1) for g in grads)))  # a 0-d array, not a scalar
    factor = xp.minimum(max_norm / (norm + 1e-6), 1.0)
    for g in grads:
        g *= factor
    return norm
