"""What training measured, epoch by epoch, how an epoch shows on the progress bar, and the seed's
bias/variance diagnosis of it."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from ..validation import check_float

# Per-epoch fields, in the order they are printed.
FIELDS = (
    "epoch",  # 1-based
    "cost",  # mean training loss over the epoch's batches
    "objective",  # cost + regularization penalty (at the epoch's final weights)
    "train_accuracy",  # accuracy on the training batches as they were seen (None for regression)
    "dev_loss",  # loss on the dev (hold-out) set at the end of the epoch (None without one)
    "dev_accuracy",
    "lr",  # learning rate used during the epoch
    "seconds",  # wall time of the epoch, dev evaluation included
    "samples_per_s",  # training samples per second (training steps only)
)


class History:
    """Per-epoch records. ``history["cost"]`` is the list of one field over the epochs;
    ``history.records`` the list of dicts; ``history.last`` the latest record; ``history.plot()``
    the learning curves."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = [{k: r.get(k) for k in FIELDS} for r in records or []]

    def append(self, record: dict[str, Any]) -> None:
        self.records.append({k: record.get(k) for k in FIELDS})

    def __getitem__(self, name: str) -> list[Any]:
        if name not in FIELDS:
            raise KeyError(f"unknown history field {name!r}; fields: {', '.join(FIELDS)}")
        return [r[name] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, Any]:
        if not self.records:
            raise ValueError("the history is empty: no epoch has finished")
        return self.records[-1]

    @property
    def has_dev(self) -> bool:
        return bool(self.records) and self.records[-1]["dev_loss"] is not None

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
        """The learning curves (loss and accuracy per epoch) as a matplotlib Figure, also saved to
        ``path`` (PNG) when given; needs matplotlib (``pip install "gpunn[plot]"``)."""
        from .plots import plot_history  # noqa: PLC0415 — matplotlib is optional

        return plot_history(self, path, title)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> History:
        return cls(state.get("records", []))

    def __repr__(self) -> str:
        return f"History({len(self)} epochs)"


def epoch_summary(record: dict[str, Any]) -> str:
    """One epoch's record as the progress bar shows it: "loss=0.1234, acc=0.9500, ..., 12,345 samples/s"."""
    parts = [f"loss={record['cost']:.4f}"]
    if record["train_accuracy"] is not None:
        parts.append(f"acc={record['train_accuracy']:.4f}")
    if record["dev_accuracy"] is not None:
        parts.append(f"dev_acc={record['dev_accuracy']:.4f}")
    elif record["dev_loss"] is not None:
        parts.append(f"dev_loss={record['dev_loss']:.4f}")
    parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    return ", ".join(parts)


def progress_bar(verbose: bool | None, file: TextIO | None, initial: int, total: int) -> Any:
    """A tqdm bar over the epochs on ``file`` (stderr by default), or None; ``verbose`` None shows it
    only on a terminal."""
    file = file or sys.stderr
    if not (bool(getattr(file, "isatty", lambda: False)()) if verbose is None else verbose):
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415 — only needed when a bar is shown

    return tqdm(total=total, initial=initial, unit="epoch", file=file, dynamic_ncols=True, leave=True)


HIGH_BIAS_REMEDIES = (
    "use a bigger network: more hidden units or more layers",
    "train longer (more epochs) or tune the optimizer and learning rate",
    "reduce regularization (smaller L2 / dropout) if it is strong",
)
HIGH_VARIANCE_REMEDIES = (
    "get more training data (or augment it)",
    "regularize: L2 weight penalty (--l2) or dropout (--dropout)",
    "use a smaller network, or stop earlier (early stopping)",
)


@dataclass
class Diagnosis:
    """The bias/variance verdict: ``verdict`` is "high bias", "high variance", "high bias and
    high variance" or "good fit"; errors are fractions (1 − accuracy) or losses for regression."""

    verdict: str
    train_error: float
    dev_error: float | None
    target_error: float
    tolerance: float
    metric: str
    remedies: list[str] = field(default_factory=list)

    @property
    def high_bias(self) -> bool:
        return "bias" in self.verdict

    @property
    def high_variance(self) -> bool:
        return "variance" in self.verdict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        dev = "n/a (no dev set)" if self.dev_error is None else f"{self.dev_error:.4f}"
        lines = [
            f"diagnosis: {self.verdict}",
            f"  training {self.metric}: {self.train_error:.4f} (target {self.target_error:.4f}), "
            f"dev {self.metric}: {dev}",
        ]
        lines += [f"  - {remedy}" for remedy in self.remedies]
        return "\n".join(lines)


def diagnose(history: History, target_error: float = 0.02, tolerance: float = 0.02) -> Diagnosis:
    """The seed's reasoning on the last epoch of ``history``:

    - training error above ``target_error`` + ``tolerance`` → high bias (the model underfits);
    - dev error above training error + ``tolerance`` → high variance (it overfits);
    - both, or neither ("good fit").

    Error is 1 − accuracy for classifiers. For regression the losses are compared instead:
    ``target_error`` is then a loss, and the allowed dev − train gap is
    max(tolerance, tolerance × training loss).
    """
    if not isinstance(history, History):
        raise TypeError(f"history must be a gpunn History (what Trainer.fit returns), got {type(history).__name__}")
    target_error = check_float("target_error", target_error, low=0.0)
    tolerance = check_float("tolerance", tolerance, low=0.0)
    last = history.last
    if last["train_accuracy"] is not None:
        metric = "error"
        train_error = 1.0 - last["train_accuracy"]
        dev_error = None if last["dev_accuracy"] is None else 1.0 - last["dev_accuracy"]
        gap_limit = tolerance
    else:
        metric = "loss"
        train_error, dev_error = last["cost"], last["dev_loss"]
        gap_limit = max(tolerance, tolerance * train_error)
    if train_error is None or not math.isfinite(train_error):
        raise ValueError("the last epoch has no finite training error to diagnose")
    bias = train_error > target_error + tolerance
    variance = dev_error is not None and dev_error - train_error > gap_limit
    problems = [name for name, found in (("high bias", bias), ("high variance", variance)) if found]
    verdict = " and ".join(problems) or "good fit"
    remedies = (list(HIGH_BIAS_REMEDIES) if bias else []) + (list(HIGH_VARIANCE_REMEDIES) if variance else [])
    return Diagnosis(verdict, train_error, dev_error, target_error, tolerance, metric, remedies)
