"""Learning-rate schedules: each sets ``optimizer.lr`` from the step count.

Call ``scheduler.step()`` once per epoch (or per batch — the unit is yours). The learning
rate is a Python float read by the next update, so a schedule costs no device work.
"""

from __future__ import annotations

import math
from typing import Any

from ..validation import check_float, check_int
from .base import Optimizer


class LRScheduler:
    """Base class: ``lr_at(step)`` gives the learning rate after ``step`` calls to ``step()``."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gpunn optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one step and set the optimizer's learning rate; returns it."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_step = int(state["last_step"])
        self.optimizer.lr = self.lr_at(self.last_step)


class StepLR(LRScheduler):
    """lr = base_lr · gamma^⌊step / step_size⌋."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check_int("step_size", step_size, low=1)
        self.gamma = check_float("gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr · gamma^step."""

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        self.gamma = check_float("gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma**step


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr − eta_min)·(1 + cos(π·min(step, T_max)/T_max)) / 2."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = check_int("T_max", T_max, low=1)
        self.eta_min = check_float("eta_min", eta_min, low=0.0)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        progress = min(step, self.T_max) / self.T_max
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


class LinearWarmup(LRScheduler):
    """Ramp linearly from start_factor·base_lr to base_lr over ``warmup_steps``, then follow
    ``after`` (another schedule of the same optimizer, shifted by the warm-up) or stay."""

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1, after: LRScheduler | None = None
    ) -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, low=1)
        self.start_factor = check_float("start_factor", start_factor, low=0.0, high=1.0)
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("after must schedule the same optimizer as the warm-up")
        self.after = after
        super().__init__(optimizer)
        if after is not None:
            self.base_lr = after.base_lr
            optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
            return self.base_lr * factor
        if self.after is not None:
            return self.after.lr_at(step - self.warmup_steps)
        return self.base_lr
