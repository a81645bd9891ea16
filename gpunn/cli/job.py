"""``gpunn train`` and ``gpunn evaluate`` as functions that return JSON-ready results: data →
split → standardize → model → Trainer → test accuracy → diagnosis → checkpoint.

Under ``mpiexec -n K`` every rank runs :func:`train` and the Trainer trains data-parallel
(``batch_size`` is the global batch); only rank 0 announces, shows progress and writes, so a
checkpoint is the same as a single process's and resumes in either mode."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from ..backend.device import device, why_cpu
from ..io.checkpoint import CheckpointError, read, save
from ..io.safe_file import check_distinct, writable_target
from ..nn.losses import SoftmaxWithLoss
from ..nn.regularizers import L2
from ..nn.sequential import mlp
from ..optim import OPTIMIZERS, create
from ..train import data
from ..train.history import History, diagnose
from ..train.mnist import mnist_files
from ..train.trainer import Trainer
from ..validation import check_choice, check_float, check_int

FRACTIONS = (0.7, 0.15, 0.15)  # train / dev / test for data sets without a fixed test part
MNIST_DEV_FRACTION = 1.0 / 12.0  # 5,000 of MNIST's 60,000 training images for the dev set
SAVE_INTERVAL_S = 5.0  # --save writes a checkpoint at most this often, and after the last epoch


@dataclass
class TrainConfig:
    """Every hyperparameter of a run (saved in the checkpoint, so a resume needs no flags)."""

    dataset: str = "digits"
    hidden: tuple[int, ...] = (100,)
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float = 1e-3
    l2: float = 1e-4
    dropout: float = 0.0
    epochs: int = 40
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for i, h in enumerate(self.hidden):
            check_int(f"hidden[{i}]", h, low=1)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("l2", self.l2, low=0.0)
        check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("seed", self.seed, low=0)
        dataset_parts(self.dataset)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "hidden" in known:
            known["hidden"] = tuple(known["hidden"])
        return cls(**known)


def dataset_parts(spec: str) -> tuple[str, str | None]:
    """("digits", None), ("spiral", None) or ("mnist", PATH) from a --dataset value."""
    if not isinstance(spec, str):
        raise TypeError(f"dataset must be a string, got {spec!r}")
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name not in ("digits", "spiral", "mnist"):
        raise ValueError(f"unknown dataset {spec!r}; expected digits, spiral or mnist:PATH")
    if name == "mnist" and not path:
        raise ValueError("the mnist dataset needs a path: --dataset mnist:PATH (a folder of IDX files or an .npz)")
    if name != "mnist" and path:
        raise ValueError(f"dataset {name} takes no path, got {spec!r}")
    return name, path or None


def raw_splits(spec: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train", "dev", "test"} parts of a data set as loaded (deterministic for a seed)."""
    name, path = dataset_parts(spec)
    if name == "mnist":
        (x_train, y_train), test = data.load_mnist(path)
        train, dev = data.split(x_train, y_train, fractions=(1 - MNIST_DEV_FRACTION, MNIST_DEV_FRACTION), seed=seed)
    else:
        x, y = data.load_digits() if name == "digits" else data.make_spiral(seed=seed)
        train, dev, test = data.split(x, y, fractions=FRACTIONS, stratify=True, seed=seed)
    return {"train": train, "dev": dev, "test": test}


def load_splits(spec: str, seed: int) -> dict[str, Any]:
    """:func:`raw_splits` standardized with training statistics only; the fitted scaler is
    returned under "scaler"."""
    parts = raw_splits(spec, seed)
    scaler, x_train, x_dev, x_test = data.standardize(parts["train"][0], parts["dev"][0], parts["test"][0])
    return {
        "train": (x_train, parts["train"][1]),
        "dev": (x_dev, parts["dev"][1]),
        "test": (x_test, parts["test"][1]),
        "scaler": scaler,
    }


def check_outputs(*outputs: tuple[str, str | None]) -> None:
    """Fail before the work, not after, when an output (flag, path; None: not given) cannot be
    written, or "--plot" is given without matplotlib."""
    if any(flag == "--plot" and path for flag, path in outputs):
        from ..train.plots import require_matplotlib  # noqa: PLC0415 — matplotlib is optional

        require_matplotlib()
    for flag, path in outputs:
        if path is not None:
            writable_target(path, flag)


def _check_distinct_files(config: TrainConfig, resume: str | None, save: str | None, plot: str | None) -> None:
    """No output may overwrite an input or the other output; --save may be the --resume file."""
    data_path = dataset_parts(config.dataset)[1]
    data_files = mnist_files(data_path) if data_path else []
    inputs = [("--resume", resume)] + [("--dataset", str(f)) for f in data_files]
    check_distinct(inputs, [("--save", save), ("--plot", plot)], allowed=(("--resume", "--save"),))


def _new_model(sizes: list[int], config: TrainConfig) -> Any:
    """gn.mlp(sizes, ...), or one line saying how big the network is when memory runs out."""
    n = sum(a * b + b for a, b in itertools.pairwise(sizes))
    network = f"the {'-'.join(map(str, sizes))} network has {n:,} parameters ({4 * n:,} bytes of float32 weights)"
    if n >= 2**50:  # petabytes of weights: more than any machine holds, whatever NumPy would try
        raise ValueError(f"{network}, more than any machine's memory; choose smaller --hidden sizes")
    try:
        return mlp(sizes, activation=config.activation, seed=config.seed, dropout=config.dropout)
    except MemoryError:
        raise MemoryError(f"out of memory: {network}; choose smaller --hidden sizes") from None


def _saved_config(checkpoint: Any, path: str) -> TrainConfig:
    saved = checkpoint.metadata.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a checkpoint written by gpunn train (no run config inside)")
    return TrainConfig.from_dict(saved)


def _resume(path: str, dev: Any, settings: dict[str, Any]) -> tuple[Any, TrainConfig, History, int]:
    """The checkpoint at ``path`` read onto ``dev``, its run's config, history and epochs done.

    ``epochs`` in ``settings`` is the new total (default: the epochs done plus a fresh run's);
    any other setting given must equal the saved one, since a resume continues the same run."""
    checkpoint = read(path, device=dev)
    history = History.from_dict(checkpoint.metadata.get("history", {}))
    done = check_int(f"{path}: the saved epoch", checkpoint.metadata.get("epoch", len(history)), low=0)
    config = _saved_config(checkpoint, path)
    for name, value in settings.items():
        if name != "epochs" and getattr(config, name) != value:
            raise ValueError(
                f"--{name.replace('_', '-')} {value} conflicts with the resumed run's {getattr(config, name)}; "
                "a resume continues the saved run with its own settings (only --epochs may change)"
            )
    epochs = settings.get("epochs", done + TrainConfig.epochs)
    if epochs <= done:
        raise ValueError(
            f"--epochs {epochs} must exceed the {done} epochs the checkpoint has already trained "
            "(--epochs counts them too; leave it out to train as many more as a fresh run)"
        )
    config.epochs = epochs
    return checkpoint, config, history, done


class _EpochSaver:
    """The --save callback: a checkpoint at most every SAVE_INTERVAL_S (each save fsyncs) and
    always after the last epoch, each written atomically."""

    def __init__(self, path: str, config: TrainConfig, scaler: data.Standardizer) -> None:
        self.path, self.config, self.scaler = path, config, scaler
        self.last = time.monotonic()

    def __call__(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if record["epoch"] < self.config.epochs and time.monotonic() - self.last < SAVE_INTERVAL_S:
            return
        metadata = {
            "epoch": record["epoch"],
            "config": asdict(self.config),
            "history": trainer.history.to_dict(),
            "scaler": self.scaler.state_dict(),
            "dropout_rng": trainer.dropout_states(),
        }
        save(self.path, trainer.model, trainer.optimizer, metadata=metadata)
        self.last = time.monotonic()


def train(
    settings: dict[str, Any],
    device_spec: str | None = None,
    save_path: str | None = None,
    resume_path: str | None = None,
    plot_path: str | None = None,
    verbose: bool | None = None,
    announce: Any = None,
    graph: bool = False,
) -> dict[str, Any]:
    """Run one training job; returns the JSON-ready result.

    ``settings`` holds the explicitly chosen TrainConfig fields (the rest take defaults);
    when resuming they may only repeat the saved ones, except ``epochs``. ``announce(device)``
    is called once everything is checked, just before training starts (on rank 0 only when
    distributed, like the checkpoint and the plot). ``graph``: replay each step as a CUDA
    graph (``Trainer(graph=True)``).
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    comm = distributed.resolve(None)  # the MPI world when launched with several ranks
    root = comm is None or comm.is_root
    dev = device(device_spec) if comm is None else distributed.rank_device(device_spec, comm)
    plot_path = plot_path if root else None
    check_outputs(("--plot", plot_path), ("--save", save_path if root else None))
    history, initial_epoch = History(), 0
    if resume_path is not None:
        checkpoint, config, history, initial_epoch = _resume(resume_path, dev, settings)
        model, optimizer = checkpoint.model, checkpoint.optimizer()
        config.validate()
    else:
        config = _new_config(settings, comm)
    _check_distinct_files(config, resume_path, save_path, plot_path)
    if save_path is None and resume_path is not None and root:  # the resumed file is written over
        try:
            writable_target(resume_path, "--resume")
        except PermissionError as exc:
            raise PermissionError(f"{exc} (--save NEW_PATH)") from None
    save_path = save_path or resume_path
    save_target = save_path if root else None  # only rank 0 writes
    parts = load_splits(config.dataset, config.seed)
    x_train, y_train = parts["train"]
    n_classes = int(max(y_train.max(), parts["dev"][1].max(), parts["test"][1].max())) + 1
    if resume_path is None:
        sizes = [x_train.shape[1], *config.hidden, n_classes]
        model = _new_model(sizes, config)
        optimizer = create(config.optimizer, lr=config.lr)
    regularizer = L2(config.l2) if config.l2 else None
    trainer = Trainer(
        model, SoftmaxWithLoss(), optimizer, regularizer, device=dev, distributed=comm or False, graph=graph
    )
    trainer.history = history
    if resume_path is not None:
        trainer.load_dropout_states(checkpoint.metadata.get("dropout_rng", {}))
    ranks = None if comm is None else {"size": comm.size, "devices": comm.allgather_json(str(dev))}
    if announce is not None and root:
        announce(dev)

    start = time.perf_counter()
    trainer.fit(
        x_train,
        y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_data=parts["dev"],
        seed=config.seed,
        initial_epoch=initial_epoch,
        callbacks=[_EpochSaver(save_target, config, parts["scaler"])] if save_target else [],
        verbose=verbose if root else False,
    )
    seconds = time.perf_counter() - start
    test = trainer.evaluate(*parts["test"])
    train_metrics = trainer.evaluate(x_train, y_train)
    diagnosis = _final_diagnosis(trainer.history, train_metrics)
    if plot_path:  # rank 0 only
        from ..train.plots import plot_history  # noqa: PLC0415 — matplotlib is optional

        plot_history(trainer.history, plot_path, title=f"gpunn on {config.dataset} ({dev})")
    rates = [r["samples_per_s"] for r in trainer.history.records if r["epoch"] > initial_epoch]  # this run's epochs
    return {
        "device": str(dev),
        "why_cpu": why_cpu() if dev.kind == "cpu" else None,
        "dataset": config.dataset,
        "epochs": len(trainer.history),
        "start_epoch": initial_epoch,
        "epochs_trained": len(trainer.history) - initial_epoch,
        "train_accuracy": train_metrics["accuracy"],
        "dev_accuracy": trainer.history.last["dev_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "samples_per_s": float(np.median(rates)) if rates else 0.0,
        "seconds": seconds,
        "diagnosis": diagnosis.to_dict(),
        "diagnosis_text": str(diagnosis),
        "checkpoint": str(Path(save_path).resolve()) if save_path else None,
        "plot": str(Path(plot_path).resolve()) if plot_path else None,
        "config": asdict(config),
        "model": trainer.model.summary(),
        "ranks": ranks,
    }


def _new_config(settings: dict[str, Any], comm: Any) -> TrainConfig:
    """A fresh run's checked config. Under MPI the same flags fail alike on every rank: the error
    is marked collective, so rank 0 alone reports it and no rank aborts the others."""
    try:
        config = TrainConfig.from_dict(settings)
        config.validate()
    except (TypeError, ValueError) as exc:
        exc.collective = comm is not None
        raise
    return config


def _final_diagnosis(history: History, train_metrics: dict[str, float]) -> Any:
    """The diagnosis of the final model: the history's last training figures ran over the epoch's
    batches as the weights moved (and through dropout), so the final model's, printed beside
    the verdict, take their place."""
    final = History(history.records)  # copies: the trainer's history keeps its own figures
    final.last.update(train_accuracy=train_metrics["accuracy"], cost=train_metrics["loss"])
    return diagnose(final)


def evaluate(model_path: str, dataset: str | None = None, device_spec: str | None = None) -> dict[str, Any]:
    """Test-set loss and accuracy of a checkpoint written by ``gpunn train``."""
    dev = device(device_spec)
    checkpoint = read(model_path, device=dev)
    config = _saved_config(checkpoint, model_path)
    spec = dataset or config.dataset
    x_test, y_test = raw_splits(spec, config.seed)["test"]
    try:
        scaler = data.Standardizer.from_state(checkpoint.metadata.get("scaler"))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{model_path}: not a checkpoint written by gpunn train (no usable standardization statistics: {exc})"
        ) from exc
    trainer = Trainer(checkpoint.model, SoftmaxWithLoss(), create("sgd", lr=0.0), device=dev)
    metrics = trainer.evaluate(scaler.transform(x_test), y_test)
    return {"device": str(dev), "dataset": spec, "checkpoint": str(Path(model_path).resolve()), **metrics}
