"""Optimizers, learning-rate schedules and gradient clipping (``gn.optim``)."""

from __future__ import annotations

from typing import Any

from ..validation import check_choice
from .base import Optimizer
from .clip import clip_grad_norm
from .rules import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSprop
from .schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, LRScheduler, StepLR

OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW)
}


def create(name: str, params: Any = None, **hyperparameters: Any) -> Optimizer:
    """An optimizer by name (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw)."""
    return OPTIMIZERS[check_choice("optimizer", name, OPTIMIZERS)](params, **hyperparameters)


__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LinearWarmup",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "StepLR",
    "clip_grad_norm",
    "create",
]
