"""Learning curves (loss and accuracy per epoch) as a matplotlib Figure, saved as a PNG when given a path.

matplotlib is an optional extra (``pip install "gpunn[plot]"``); the figure is drawn with the Agg canvas
and the object API, touching no GUI backend and no global pyplot state.
"""

from __future__ import annotations

import os
from typing import Any


def require_matplotlib() -> None:
    """Raise ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401, PLC0415 — optional extra
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "gpunn[plot]" (or pip install matplotlib)') from exc


def plot_history(history: Any, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
    """The learning curves of ``history`` (a :class:`~gpunn.History`) as a matplotlib Figure,
    saved to ``path`` (PNG) when given.

    Left panel: training cost, objective and dev loss; right panel: training and dev
    accuracy (or a note that the model has none, for regression).
    """
    if not hasattr(history, "records") or not hasattr(history, "has_dev"):
        raise TypeError(f"history must be a gpunn History, got {type(history).__name__}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path or None, got {type(path).__name__}")
    if len(history) == 0:
        raise ValueError("history is empty: train at least one epoch before plotting")
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 — optional extra
    from matplotlib.figure import Figure  # noqa: PLC0415

    epochs = history["epoch"]
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, history["cost"], label="training cost")
    if any(o != c for o, c in zip(history["objective"], history["cost"], strict=True)):
        loss_axes.plot(epochs, history["objective"], label="objective (cost + penalty)", linestyle="--")
    if history.has_dev:
        loss_axes.plot(epochs, history["dev_loss"], label="dev loss")
    loss_axes.set(title="loss", xlabel="epoch", ylabel="loss")
    loss_axes.legend()
    if history.last["train_accuracy"] is not None:
        accuracy_axes.plot(epochs, history["train_accuracy"], label="training accuracy")
        if history.last["dev_accuracy"] is not None:
            accuracy_axes.plot(epochs, history["dev_accuracy"], label="dev accuracy")
        accuracy_axes.legend()
    else:
        accuracy_axes.text(0.5, 0.5, "no accuracy (regression)", ha="center", va="center")
    accuracy_axes.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, format="png", dpi=100)
    return figure
