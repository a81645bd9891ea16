"""Weight penalties added to the cost: objective = cost + R(W).

Both act on parameters with ``decay=True`` (the weights W, a prefix of a model's flat buffer);
biases are never penalized. In training, ``optimizer.step(regularizer)`` folds the gradient into
its update instead of calling ``backward`` (:meth:`Regularizer.fused_coefficients`).
"""

from __future__ import annotations

from typing import Any

from ..backend.device import array_module
from ..validation import check_float
from .parameter import Parameter, parameter_list


def decayed_arrays(params: list[Parameter]) -> list[tuple[Any, Any]]:
    """(data, grad) pairs of the decayed parameters: one flat 1-D pair when they are packed."""
    flat = params[0].flat if params else None
    if flat is not None and flat.owns(params):
        return [(flat.data[: flat.n_decay], flat.grad[: flat.n_decay])] if flat.n_decay else []
    return [(p.data, p.grad) for p in params if p.decay]  # as they are: reshape could copy


def _zero(params: list[Parameter]) -> Any:
    """A 0-d zero in the parameters' dtype, on their device (float32 stays float32)."""
    if not params:
        return array_module(None).zeros(())
    return array_module(params[0].data).zeros((), dtype=params[0].data.dtype)


def _sum_of_squares(w: Any) -> Any:
    """Σ w² — one BLAS dot for a flat buffer."""
    return w @ w if w.ndim == 1 else (w * w).sum()


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

    def fused_coefficients(self) -> tuple[float, float] | None:
        """(λ₂, λ₁) such that ∂R/∂W = λ₂·W + λ₁·sign(W) on the weights, for an optimizer to
        add inside its update; None when the gradient has another form (the optimizer then
        calls :meth:`backward`)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.lam:g})"


class L2(Regularizer):
    """R = ½·λ·Σ W²;  ∂R/∂W = λ·W  (the seed's ½W² penalty with coefficient reg)."""

    def forward(self, params: Any) -> Any:
        params = parameter_list(params)
        xp = array_module(params[0].data if params else None)
        total = sum((_sum_of_squares(w) for w, _ in decayed_arrays(params)), start=_zero(params))
        return xp.asarray(total * (0.5 * self.lam))

    def backward(self, params: Any) -> None:
        for w, g in decayed_arrays(parameter_list(params)):
            g += self.lam * w

    def fused_coefficients(self) -> tuple[float, float] | None:
        """(λ, 0): ∂R/∂W = λ·W (None for a subclass with its own backward)."""
        return (float(self.lam), 0.0) if type(self).backward is L2.backward else None


class L1(Regularizer):
    """R = λ·Σ|W|;  ∂R/∂W = λ·sign(W)  (sparsity-inducing; the subgradient 0 at W = 0)."""

    def forward(self, params: Any) -> Any:
        params = parameter_list(params)
        xp = array_module(params[0].data if params else None)
        total = sum((xp.abs(w).sum() for w, _ in decayed_arrays(params)), start=_zero(params))
        return xp.asarray(total * self.lam)

    def backward(self, params: Any) -> None:
        for w, g in decayed_arrays(parameter_list(params)):
            g += self.lam * array_module(w).sign(w)

    def fused_coefficients(self) -> tuple[float, float] | None:
        """(0, λ): ∂R/∂W = λ·sign(W) (None for a subclass with its own backward)."""
        return (0.0, float(self.lam)) if type(self).backward is L1.backward else None
