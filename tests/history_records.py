"""One epoch's record as Trainer.fit appends it to a History: the tests of History, diagnose
and plot_history build their histories from it."""

from __future__ import annotations

from typing import Any


def record(
    epoch: int = 1,
    cost: float = 0.5,
    train_accuracy: float | None = 0.9,
    dev_loss: float | None = None,
    dev_accuracy: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An epoch's record; ``objective`` is the cost unless given in ``extra``."""
    base = {
        "epoch": epoch,
        "cost": cost,
        "objective": cost,
        "train_accuracy": train_accuracy,
        "dev_loss": dev_loss,
        "dev_accuracy": dev_accuracy,
        "lr": 0.01,
        "seconds": 0.1,
        "samples_per_s": 1000.0,
    }
    base.update(extra)
    return base
