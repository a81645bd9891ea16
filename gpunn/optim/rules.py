"""The update rules. Signatures and defaults follow PyTorch's ``torch.optim``.

Each rule updates the flat parameter buffer W from the flat gradient g in one call to its
device's Ops (:mod:`gpunn.backend.ops`: a fused kernel on a GPU). The formulas below are written
with g; with clipping or an L2 / L1 regularizer the rule sees the effective gradient g'
described in :class:`~gpunn.optim.Optimizer` instead.
"""

from __future__ import annotations

from typing import Any

from ..nn.parameter import FlatParameters
from ..validation import check_float
from .base import Optimizer, Params


class SGD(Optimizer):
    """Stochastic gradient descent: W ← W − lr·g."""

    def __init__(self, params: Params = None, lr: float = 0.01, *, max_grad_norm: float | None = None) -> None:
        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        ops.sgd_update(flat.data, flat.grad, lr=self.lr, **extras)


class Momentum(Optimizer):
    """SGD with momentum (PyTorch's form): v ← μ·v + g;  W ← W − lr·v."""

    state_names = ("velocity",)
    hyper_names = ("lr", "momentum")
    nesterov = False

    def __init__(
        self, params: Params = None, lr: float = 0.01, momentum: float = 0.9, *, max_grad_norm: float | None = None
    ) -> None:
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        W, g, v = flat.data, flat.grad, state["velocity"]
        ops.momentum_update(W, g, v, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, **extras)


class Nesterov(Momentum):
    """Nesterov momentum (PyTorch's form): v ← μ·v + g;  W ← W − lr·(g + μ·v)."""

    nesterov = True


class AdaGrad(Optimizer):
    """AdaGrad: h ← h + g²;  W ← W − lr·g / (√h + ε)."""

    state_names = ("sum_sq",)
    hyper_names = ("lr", "eps")

    def __init__(
        self, params: Params = None, lr: float = 0.01, eps: float = 1e-10, *, max_grad_norm: float | None = None
    ) -> None:
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        ops.adagrad_update(flat.data, flat.grad, state["sum_sq"], lr=self.lr, eps=self.eps, **extras)


class RMSprop(Optimizer):
    """RMSprop: s ← α·s + (1 − α)·g²;  W ← W − lr·g / (√s + ε)."""

    state_names = ("square_avg",)
    hyper_names = ("lr", "alpha", "eps")

    def __init__(
        self,
        params: Params = None,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, high_open=True)
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        W, g, s = flat.data, flat.grad, state["square_avg"]
        ops.rmsprop_update(W, g, s, lr=self.lr, alpha=self.alpha, eps=self.eps, **extras)


def _check_betas(betas: Any) -> tuple[float, ...]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_float(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas))


class Adam(Optimizer):
    """Adam: m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
    W ← W − lr·m̂ / (√v̂ + ε) with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).

    L2 regularization is a separate :class:`gpunn.L2` (``step(gn.L2(λ))`` adds λ·W to the
    gradient that m and v see); decoupled weight decay is :class:`AdamW`.
    """

    state_names = ("exp_avg", "exp_avg_sq")
    hyper_names = ("lr", "betas", "eps")
    weight_decay = 0.0

    def __init__(
        self,
        params: Params = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.betas = _check_betas(betas)
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        beta1, beta2 = self.betas
        ops.adam_update(
            flat.data,
            flat.grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            lr=self.lr,
            beta1=beta1,
            beta2=beta2,
            eps=self.eps,
            step=self.step_count,
            weight_decay=self.weight_decay,
            **extras,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before each Adam update,
    W ← W·(1 − lr·weight_decay) for the weights (``decay=True``); biases are not decayed.
    Unlike L2 regularization this decay does not pass through Adam's gradient scaling."""

    hyper_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self,
        params: Params = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        super().__init__(params, lr=lr, betas=betas, eps=eps, max_grad_norm=max_grad_norm)
