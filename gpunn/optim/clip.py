"""Global-norm gradient clipping that never reads a value back to the host.

g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)), with ‖g‖₂ over every gradient together; the norm and
the factor stay 0-d device arrays. An optimizer's ``max_grad_norm`` clips inside its update
instead, leaving ``param.grad`` as it was (see :class:`~gpunn.optim.Optimizer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backend.device import array_module
from ..nn.parameter import Parameter, parameter_list
from ..validation import check_float


def clip_grad_norm(params: Iterable[Parameter] | Any, max_norm: float) -> Any:
    """Scale the gradients of ``params`` (or of a model) in place, whatever they hold (after
    ``regularizer.backward``, the penalty's gradient too), so that their joint L2 norm is at
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
