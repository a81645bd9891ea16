"""The update rules. Signatures and defaults follow PyTorch's ``torch.optim``.

The formulas below are written with g; with clipping, an L2 / L1 regularizer or
``weight_decay`` the rule sees the effective gradient g' described in
:class:`~gpunn.optim.Optimizer` instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..nn.parameter import FlatParameters
from ..validation import check_float
from .base import Optimizer, Params


def _check_momentum(momentum: Any, dampening: Any, nesterov: Any) -> tuple[float, float, bool]:
    """SGD's (momentum, dampening, nesterov), checked as PyTorch checks them (and μ < 1, d ≤ 1)."""
    momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
    dampening = check_float("dampening", dampening, low=0.0, high=1.0)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r} of type {type(nesterov).__name__}")
    if nesterov and (momentum == 0.0 or dampening != 0.0):
        raise ValueError(
            "nesterov=True needs momentum > 0 and dampening = 0 (as in PyTorch), "
            f"got momentum={momentum!r}, dampening={dampening!r}"
        )
    return momentum, dampening, bool(nesterov)


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's ``torch.optim.SGD`` signature and update::

        g ← g + weight_decay·W                        (every parameter, biases included)
        momentum 0:  W ← W − lr·g
        momentum μ:  b ← g at the first step, then b ← μ·b + (1 − dampening)·g;
                     W ← W − lr·b   (nesterov: W ← W − lr·(g + μ·b))

    ``nesterov`` needs momentum > 0 and dampening 0 (PyTorch's rule). The buffer b is the state
    "momentum_buffer" (kept only with momentum). Without dampening this is the update of
    :class:`Momentum` / :class:`Nesterov`, the textbook's classes.
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "momentum":  # the buffer is kept only with momentum
            object.__setattr__(self, "state_names", ("momentum_buffer",) if self.momentum != 0.0 else ())

    def __init__(
        self,
        params: Params = None,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.momentum, self.dampening, self.nesterov = _check_momentum(momentum, dampening, nesterov)
        super().__init__(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _check_hyperparameters(self) -> None:
        self.momentum, self.dampening, self.nesterov = _check_momentum(self.momentum, self.dampening, self.nesterov)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        if self.momentum == 0.0:
            ops.sgd_update(flat.data, flat.grad, lr=self.lr, **extras)
            return
        first = self.step_count == 1 or "momentum_buffer" not in state  # b ← g: a zero b, undamped
        b = self._buffer("momentum_buffer")
        hyper = {"momentum": self.momentum, "nesterov": self.nesterov, "dampening": 0.0 if first else self.dampening}
        ops.momentum_update(flat.data, flat.grad, b, lr=self.lr, **hyper, **extras)


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
    """AdaGrad: h ← h + g²;  W ← W − lr·g / (√h + ε)  (g with weight_decay·W added)."""

    state_names = ("sum_sq",)
    hyper_names = ("lr", "eps", "weight_decay")

    def __init__(
        self,
        params: Params = None,
        lr: float = 0.01,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        ops.adagrad_update(flat.data, flat.grad, state["sum_sq"], lr=self.lr, eps=self.eps, **extras)


class RMSprop(Optimizer):
    """RMSprop: s ← α·s + (1 − α)·g²;  W ← W − lr·g / (√s + ε)  (g with weight_decay·W added)."""

    state_names = ("square_avg",)
    hyper_names = ("lr", "alpha", "eps", "weight_decay")

    def __init__(
        self,
        params: Params = None,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, high_open=True)
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        W, g, s = flat.data, flat.grad, state["square_avg"]
        ops.rmsprop_update(W, g, s, lr=self.lr, alpha=self.alpha, eps=self.eps, **extras)


class Adam(Optimizer):
    """Adam: m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
    W ← W − lr·m̂ / (√v̂ + ε) with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).

    ``weight_decay`` is PyTorch's coupled decay, g ← g + weight_decay·W on every parameter;
    decoupled weight decay is :class:`AdamW`.
    """

    state_names = ("exp_avg", "exp_avg_sq")
    hyper_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self,
        params: Params = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(
            check_float(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas)
        )
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)

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
            weight_decay=self.weight_decay if self.decoupled else 0.0,
            **extras,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before each Adam update,
    W ← W·(1 − lr·weight_decay) for the weights (``decay=True``); biases are not decayed (PyTorch's
    AdamW decays every parameter: in PyTorch, a group of biases with weight_decay=0 matches this).
    Unlike L2 regularization this decay does not pass through Adam's gradient scaling."""

    decoupled = True

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
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
