"""Weight penalties added to the cost: objective = cost + R(W).

Both act on parameters with ``decay=True`` (the weights W); biases are never penalized.
When the parameters are a model's flat buffer the weights are one contiguous prefix of it,
so the penalty and its gradient each take one operation over that prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .backend import array_module
from .parameter import Parameter
from .validation import check_float


def decayed_arrays(params: Iterable[Parameter] | Any) -> list[tuple[Any, Any]]:
    """(data, grad) pairs of the decayed parameters: one flat pair when they are packed.

    ``params`` may be a list of parameters or anything with ``.parameters()`` (a model).
    """
    if hasattr(params, "parameters"):
        params = params.parameters()
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{i}] must be a gpunn Parameter, got {type(p).__name__}")
    flat = params[0]._flat if params else None
    if flat is not None and flat.owns(params):
        return [(flat.decayed(flat.data), flat.decayed(flat.grad))] if flat.n_decay else []
    return [(p.data.reshape(-1), p.grad.reshape(-1)) for p in params if p.decay]


class Regularizer:
    """Base class: ``forward(params)`` → R as a 0-d array; ``backward(params)`` adds ∂R/∂W to
    each weight's ``grad`` (call it after ``model.backward``, which overwrites the grads)."""

    def __init__(self, lam: float) -> None:
        self.lam = check_float("lam", lam, low=0.0)

    def __call__(self, params: Any) -> Any:
        return self.forward(params)

    def forward(self, params: Any) -> Any:
        raise NotImplementedError

    def backward(self, params: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.lam:g})"


class L2(Regularizer):
    """R = ½·λ·Σ W²;  ∂R/∂W = λ·W  (the seed's ½W² penalty with coefficient reg)."""

    def forward(self, params: Any) -> Any:
        pairs = decayed_arrays(params)
        if not pairs:
            return array_module(None).asarray(0.0)
        xp = array_module(pairs[0][0])
        total = sum(w @ w for w, _ in pairs)
        return xp.asarray(total * (0.5 * self.lam))

    def backward(self, params: Any) -> None:
        for w, g in decayed_arrays(params):
            g += self.lam * w


class L1(Regularizer):
    """R = λ·Σ |W|;  ∂R/∂W = λ·sign(W)  (sparsity-inducing; the subgradient 0 at W = 0)."""

    def forward(self, params: Any) -> Any:
        pairs = decayed_arrays(params)
        if not pairs:
            return array_module(None).asarray(0.0)
        xp = array_module(pairs[0][0])
        total = sum(xp.abs(w).sum() for w, _ in pairs)
        return xp.asarray(total * self.lam)

    def backward(self, params: Any) -> None:
        for w, g in decayed_arrays(params):
            g += self.lam * array_module(w).sign(w)
