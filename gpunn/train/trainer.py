"""Trainer: fit, evaluate and predict on the best device present, with no host round trip inside a
training step: each step's loss and correct count go into device arrays, read once per epoch.

Read :meth:`Trainer.fit`, then :meth:`Trainer._epoch`. Beside it: the data checks (``inputs``), evaluate
and predict (``inference``), the best weights kept and put back (``snapshot``), Dropout streams (``dropout``).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from .. import distributed as dist
from ..backend.device import Device, array_module, to_numpy
from ..backend.device import device as select_device  # the constructor's `device` argument shadows the name
from ..nn.losses import Loss
from ..nn.parameter import pack, same_parameters
from ..nn.regularizers import Regularizer
from ..nn.sequential import Sequential
from ..optim import Optimizer
from ..validation import check_int
from . import batches as batching
from . import dropout, inference, inputs
from . import graph as step_graph
from .history import History, epoch_summary, progress_bar
from .snapshot import restore_after_divergence, restore_weights, snapshot

Callback = Callable[["Trainer", dict[str, Any]], Any]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


def _divergence(losses: np.ndarray, weights_finite: bool, epoch: int, n_steps: int) -> str | None:
    """What went wrong in ``epoch`` (from 1), given its per-step losses (host) and whether the
    weights are finite after its last update; None when nothing did."""
    bad = np.flatnonzero(~np.isfinite(losses))  # host: the losses read back once per epoch
    if bad.size:
        return (
            f"the loss became {losses[bad[0]]} at epoch {epoch}, step {bad[0] + 1} of {n_steps}; "
            "lower the learning rate, check the inputs for NaN, or clip gradients (max_grad_norm=...)"
        )
    if not weights_finite:
        return (
            f"the weights became NaN or infinite in the last update of epoch {epoch} (step {n_steps} of "
            f"{n_steps}); lower the learning rate, or clip gradients (max_grad_norm=...)"
        )
    return None


class Trainer:
    """Train ``model`` with ``loss`` and ``optimizer`` (and an optional ``regularizer``).

    ``device`` None picks the best device present (``gn.device()``: GPUNN_DEVICE, else cuda:0 when
    usable, else the CPU) and moves the model there.

    The Trainer trains the whole model: at construction and at the start of every fit and epoch it binds
    the optimizer (which may be built without parameters: ``gn.optim.Adam(lr=1e-3)``) to the model's
    parameters, following every change (a Parameter replaced, a layer added, the model moved) and keeping
    the state of those that stay; each is named after its place ("0.W"). An optimizer bound by its user
    to part of the model is widened to all of it, with a warning.

    ``distributed``: None trains data-parallel over all ranks when an MPI launcher started several
    (``mpiexec -n K``; see :mod:`gpunn.distributed`), else in this process alone; False never; True
    always (over ``gn.distributed.world()``, a lone process without a launcher); or a Communicator.
    Distributed, "auto" and "cuda" mean cuda:<local rank>; ``trainer.comm`` is the communicator or None.

    ``graph=True`` captures one whole training step as a CUDA graph and replays it for every full batch
    (:mod:`gpunn.train.graph`): one launch per step instead of dozens, for the same numbers. It suits
    small, launch-bound networks; on the CPU the step runs through the same fixed buffers. Not for
    Dropout models or distributed training (a ValueError says so).
    """

    def __init__(
        self,
        model: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        regularizer: Regularizer | None = None,
        device: str | Device | None = None,
        distributed: bool | dist.Communicator | None = None,
        graph: bool = False,
    ) -> None:
        for name, value, kind, expected in (
            ("model", model, Sequential, "a gpunn Sequential (gn.mlp or gn.Sequential)"),
            ("loss", loss, Loss, "a gpunn loss such as gn.SoftmaxWithLoss()"),
            ("optimizer", optimizer, Optimizer, "a gpunn optimizer such as gn.optim.Adam()"),
            ("regularizer", regularizer, (Regularizer, type(None)), "gn.L2(...), gn.L1(...) or None"),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
        self.comm = dist.resolve(distributed)
        self._parallel = None if self.comm is None else dist.DataParallel(self.comm)
        self.device = select_device(device) if self.comm is None else dist.rank_device(device, self.comm)
        self.model = model.to(self.device)
        self.loss = loss
        self.regularizer = regularizer
        self.optimizer = optimizer
        if not isinstance(graph, bool):
            raise TypeError(f"graph must be True or False, got {graph!r}")
        if graph and (reason := step_graph.unsupported_reason(model, self.comm is not None)):
            raise ValueError(reason)
        self.graph = graph
        self._step_graph: step_graph.StepGraph | None = None
        self._bound: list[Any] = []  # the parameters this Trainer bound the optimizer to
        self._follow_model()
        self.history = History()
        self.stop_training = False
        if self.comm is not None and self.comm.rank > 0:
            dropout.decorrelate(self.model, self.device, self.comm.rank)

    _validate_outside_fit: bool | None = None  # loss.validate as the caller set it, during a fit

    def __getstate__(self) -> dict[str, Any]:
        # a copy taken during a fit (a callback pickling the trainer) leaves out its step graph (device buffers)
        return {**self.__dict__, "_step_graph": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._validate_outside_fit is not None:
            # a copy taken during a fit: undo what the fit switched for its own duration
            self.loss.validate = self._validate_outside_fit
            self._validate_outside_fit = None

    # ----------------------------------------------------------------- fit

    def fit(
        self,
        x: Any,
        y: Any,
        epochs: int = 10,
        batch_size: int = 128,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        patience: int | None = None,
        restore_best: bool = True,
        callbacks: Sequence[Callback] = (),
        initial_epoch: int | None = None,
        verbose: bool | None = None,
        progress_file: TextIO | None = None,
    ) -> History:
        """Train ``epochs`` more epochs, numbered on from the last epoch in ``trainer.history`` (a second
        fit in a notebook continues the curve); with ``initial_epoch`` (resuming a checkpoint, as in
        Keras), train epochs ``initial_epoch + 1`` to ``epochs`` (an ``initial_epoch`` past ``epochs``, or
        before the history's last epoch, is refused).

        x: (N, features); y: integer labels (N,) (a column (N, 1) of them is flattened) or targets (N, K);
        a pandas DataFrame or Series is taken as its values. ``validation_data`` = (x_dev, y_dev), or
        ``validation_split`` sets aside that fraction of (x, y), stratified. ``patience``: stop when the
        dev loss (training cost without dev data) has not improved for that many epochs, restoring the
        best weights if ``restore_best``. If the loss or the weights become NaN or infinite
        (:class:`gpunn.TrainingDivergedError`), ``restore_best`` also puts back the weights
        and optimizer state of the best epoch (or of the fit's start) before the error is raised; for that
        it copies them at the start and at each improving epoch (``restore_best=False`` saves the memory,
        and leaves a diverged model as the failing step left it). Each callback is called as
        ``callback(trainer, record)`` after every epoch and may set ``trainer.stop_training``.
        ``verbose`` None shows a progress bar only on a terminal. Returns the History (also
        ``trainer.history``), extended across calls.

        The defaults, 10 epochs of batches of 128, suit a first look at any data set and keep a GPU busy;
        ``gpunn train`` defaults to 40 epochs of 32 because its built-in data sets are small (digits trains
        on 1,257 samples: 10 steps an epoch at 128).

        Distributed (``trainer.comm`` set), every rank calls fit with the same data and arguments
        (checked, with the model and optimizer: else ``gn.distributed.DistributedMismatchError`` on every
        rank), and rank 0's weights and optimizer state are broadcast. ``batch_size`` is the global batch
        (at least the number of ranks): each step, rank r trains on its slice of the batch a single
        process would use, and one allreduce of the flat gradient buffer averages them. Records, early
        stopping and ``stop_training`` agree on every rank; callbacks run on every rank (write files from
        ``trainer.comm.is_root`` only); only rank 0 shows progress.
        """
        epochs, initial_epoch = self._epoch_range(epochs, initial_epoch)
        batch_size = check_int("batch_size", batch_size, low=1)
        check_int("seed", seed, low=0)
        if patience is not None:
            patience = check_int("patience", patience, low=1)
        callbacks = _checked_callbacks(callbacks)
        self._follow_model()  # a Parameter replaced since the last fit: bound before the distributed checks
        x, y, dev = inputs.prepare(self.model, self.loss, self.device, x, y, validation_data, validation_split, seed)
        if self._parallel is not None:  # the same fit on every rank, then rank 0's state everywhere
            fit_args = {"epochs": epochs, "batch_size": batch_size, "initial_epoch": initial_epoch}
            self._parallel.start(self, x, y, dev, **fit_args, shuffle=shuffle, seed=seed, patience=patience)
        classify = inference.accuracy_kind(self.loss, y)
        bar = progress_bar(verbose, progress_file, initial_epoch, epochs) if self.is_root else None
        # what to restore (early stopping, divergence): the best epoch's weights, the starting ones at first
        best = snapshot(self.model, self.optimizer) if restore_best else None
        best_loss, best_epoch, waited = np.inf, initial_epoch, 0
        self.stop_training = False
        validate = self._validate_outside_fit = self.loss.validate
        self.loss.validate = False  # labels were checked once above: no sync per step
        try:
            self._step_graph = self._start_step_graph(x, y, batch_size, classify) if self.graph else None
            for epoch in range(initial_epoch, epochs):
                try:
                    record = self._epoch(x, y, dev, epoch, batch_size, shuffle, seed, classify)
                except TrainingDivergedError as error:
                    restore_after_divergence(self.model, self.optimizer, error, best, best_epoch)
                    raise
                self.history.append(record)
                if bar is not None:
                    bar.set_postfix_str(epoch_summary(record), refresh=False)
                    bar.update(1)
                monitored = record["dev_loss"] if record["dev_loss"] is not None else record["cost"]
                if monitored < best_loss:
                    best_loss, best_epoch = monitored, epoch + 1
                    best = snapshot(self.model, self.optimizer) if restore_best else None
                    waited = 0
                else:
                    waited += 1
                for callback in callbacks:
                    callback(self, record)
                stop = self.stop_training or (patience is not None and waited >= patience)
                self.stop_training = stop if self.comm is None else self.comm.any(stop)  # any rank stops all
                if self.stop_training:
                    break
        finally:
            self.loss.validate, self._validate_outside_fit = validate, None
            self._close_step_graph()
            if bar is not None:
                bar.close()
        if patience is not None and best is not None and best_epoch > initial_epoch:
            restore_weights(self.model, best["weights"])  # the weights only, as Keras's restore_best_weights
        return self.history

    def _epoch_range(self, epochs: int, initial_epoch: int | None) -> tuple[int, int]:
        """(end, start) of a fit's epochs (see :meth:`fit`)."""
        epochs = check_int("epochs", epochs, low=0)
        last = (self.history.last["epoch"] or len(self.history)) if len(self.history) else 0
        if initial_epoch is None:
            return epochs + last, last
        start = check_int("initial_epoch", initial_epoch, low=0)
        if start > epochs:
            raise ValueError(
                f"initial_epoch ({start}) is past epochs ({epochs}): with initial_epoch, epochs is the epoch to "
                f"train up to, not how many more (fit(epochs={start + epochs}, initial_epoch={start}) trains "
                f"{epochs} more)"
            )
        if start < last:
            raise ValueError(
                f"initial_epoch ({start}) is before the last epoch of the history ({last}); continue from {last}, "
                "or start a new curve with trainer.history = gn.History()"
            )
        return epochs, start

    def _epoch(
        self, x: Any, y: Any, dev: Any, epoch: int, batch_size: int, shuffle: bool, seed: int, classify: str | None
    ) -> dict[str, Any]:
        """Train one epoch on (x, y), already on the device, evaluate on ``dev`` = (x_dev, y_dev) or
        None, and return the epoch's record (History's fields)."""
        self._follow_model()
        if self._step_graph is not None and step_graph.stale(self._step_graph, self):
            # a callback replaced a parameter, rebound or replaced the optimizer, or changed a value
            # the step took at capture: the captured step writes the old buffers, with the old values
            self._close_step_graph()
            self._step_graph = self._start_step_graph(x, y, batch_size, classify)
        xp = array_module(x)
        n = x.shape[0]
        n_steps = -(-n // batch_size)
        start = time.perf_counter()
        self.model.train()
        with self.device:
            if self._step_graph is not None:
                order = batching.epoch_order(n, seed, epoch) if shuffle else np.arange(n)
                step_loss, step_correct = self._step_graph.epoch(order)
            else:  # the eager steps write each step's loss and count here
                step_loss = xp.zeros(n_steps, dtype=self.model.dtype)
                step_correct = xp.zeros(n_steps, dtype=np.int64)
                if self._parallel is None:
                    batches = batching.batches(x, y, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
                    for step, (xb, yb) in enumerate(batches):
                        step_loss[step], count = self._train_step(xb, yb, classify)
                        if count is not None:
                            step_correct[step] = count
                else:
                    epoch_args = (batch_size, shuffle, seed, epoch)
                    self._parallel_steps(x, y, epoch_args, step_loss, step_correct, classify)
            losses = to_numpy(step_loss)  # the one read of the epoch (it also waits for the device)
            train_seconds = time.perf_counter() - start
            # a step's loss is taken before its update: only the weights show the last update's blow-up
            weights_finite = bool(xp.isfinite(self.optimizer.flat.data).all())
            penalty = 0.0 if self.regularizer is None else float(self.regularizer.forward(self.model.parameters()))
            correct = int(to_numpy(step_correct).sum()) if classify is not None else None
        if self._parallel is not None:
            losses, correct = self._parallel.reduce_epoch(losses, correct)  # global per-step means
        message = _divergence(losses, weights_finite, epoch + 1, n_steps)
        if message is not None:
            error = TrainingDivergedError(message)
            # every rank read the same global losses, and after the sum of gradients holds the same weights
            error.collective = self._parallel is not None
            raise error
        sizes = np.full(n_steps, batch_size, dtype=np.float64)
        sizes[-1] = n - batch_size * (n_steps - 1)
        cost = float(losses.astype(np.float64) @ sizes / n)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "cost": cost,
            "objective": cost + penalty,
            "train_accuracy": None if correct is None else correct / n,
            "dev_loss": None,
            "dev_accuracy": None,
            "lr": self.optimizer.lr,
            "samples_per_s": n / train_seconds,
        }
        if dev is not None:
            model, loss, device = self.model, self.loss, self.device
            metrics = inference.evaluate_on_device(model, loss, device, *dev, classify, parallel=self._parallel)
            record["dev_loss"], record["dev_accuracy"] = metrics["loss"], metrics.get("accuracy")
        record["seconds"] = time.perf_counter() - start
        return record

    def _train_step(self, xb: Any, yb: Any, classify: str | None) -> tuple[Any, Any]:
        """One training step on a batch: forward, loss, backward, update. Returns the loss and the
        number of correct predictions (None without accuracy) as 0-d device arrays."""
        value, logits = self._gradients(xb, yb)
        self.optimizer.step(self.regularizer)  # the regularizer's gradient is added in the update
        return value, None if classify is None else inference.correct(logits, yb, classify)

    def _gradients(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        """Forward, loss and backward on a batch, writing every parameter's gradient; returns
        the loss (a 0-d device array) and the logits."""
        logits = self.model.forward(xb)
        value = self.loss.forward(logits, yb)
        self.model.backward(self.loss.backward())
        return value, logits

    def _parallel_steps(
        self, x: Any, y: Any, order: tuple[int, bool, int, int], step_loss: Any, step_correct: Any, classify: str | None
    ) -> None:
        """One epoch's steps on this rank's slices; ``order`` = (batch_size, shuffle, seed, epoch)."""
        parallel = self._parallel
        grad = pack(self.model.parameters()).grad
        for step, (xb, yb) in enumerate(parallel.batches(x, y, *order)):
            if xb.shape[0]:  # the last batch may leave a rank without rows
                step_loss[step], logits = self._gradients(xb, yb)
                if classify is not None:
                    step_correct[step] = inference.correct(logits, yb, classify)
            parallel.reduce_gradients(grad, step)  # the batch mean, on every rank
            self.optimizer.step(self.regularizer)  # after the sum: λ·W counted once

    def _start_step_graph(self, x: Any, y: Any, batch_size: int, classify: str | None) -> step_graph.StepGraph | None:
        body = functools.partial(self._train_step, classify=classify)  # an eager step's work, captured
        return step_graph.start(self, body, x, y, batch_size)

    def _close_step_graph(self) -> None:
        if self._step_graph is not None:
            self._step_graph.close()
            self._step_graph = None

    # ----------------------------------------------------------------- evaluate / predict

    def evaluate(self, x: Any, y: Any, batch_size: int = 1024) -> dict[str, float]:
        """{"loss": mean loss, "accuracy": fraction correct (classifiers only)} on (x, y)."""
        return inference.evaluate(self.model, self.loss, self.device, x, y, batch_size)

    def predict_output(self, x: Any, batch_size: int = 1024) -> Any:
        """The model's raw output (logits) for x, on the host for host input."""
        return inference.predict_output(self.model, self.loss, self.device, x, batch_size)

    def predict_proba(self, x: Any, batch_size: int = 1024) -> Any:
        """Class probabilities (N, C): softmax of the logits (sigmoid for SigmoidBCELoss)."""
        return inference.predict_proba(self.model, self.loss, self.device, x, batch_size)

    def predict(self, x: Any, batch_size: int = 1024) -> Any:
        """Predicted class labels (N,) for classifiers; the outputs themselves for regression."""
        return inference.predict(self.model, self.loss, self.device, x, batch_size)

    @property
    def is_root(self) -> bool:
        """True in a single process, and on rank 0 of a distributed one (which prints and writes files)."""
        return self.comm is None or self.comm.is_root

    # ----------------------------------------------------------------- helpers

    def _follow_model(self) -> None:
        """The binding rule of the class docstring. Partial bindings are widened: the step graph and the
        distributed gradient sum work on the whole buffer. Names by place keep checkpoints' keys."""
        params = self.model.parameters()
        bound = self.optimizer.params if self.optimizer.bound else None
        if bound is not None and not same_parameters(bound, params) and not same_parameters(bound, self._bound):
            present = {id(p) for p in params}
            ours = sum(id(p) in present for p in bound)
            if len(bound) != len(params) and ours:  # as many, some replaced (or another model like it): silent
                message = (
                    f"the optimizer was bound to {len(bound)} parameters, {ours} of them among the model's "
                    f"{len(params)}; the Trainer binds it to all of the model's parameters (freezing layers "
                    "through a partial optimizer is not supported)"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=3)
        self.optimizer.bind(params)
        self._bound = params
        for name, p in self.model.named_parameters():
            p.name = name  # a replacement, or a parameter bound by hand since, takes its place's name

    def dropout_states(self) -> dict[str, Any]:
        """The NumPy generator state of each Dropout layer (for bit-exact resume on the CPU)."""
        return dropout.states(self.model, self.device)

    def load_dropout_states(self, states: dict[str, Any]) -> None:
        """Continue each Dropout layer's stream from :meth:`dropout_states` (on the CPU)."""
        if self.comm is not None and self.comm.rank > 0:
            return  # the saved states are rank 0's; other ranks keep their own streams
        dropout.load_states(self.model, self.device, states)


def _checked_callbacks(callbacks: Any) -> list[Callback]:
    """The callbacks as a list, each callable as ``callback(trainer, record)``: checked before training."""
    if callable(callbacks) or isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of functions callback(trainer, record), got {callbacks!r}")
    callbacks = list(callbacks)
    for i, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(f"callbacks[{i}] must be callable as callback(trainer, record), got {callback!r}")
    return callbacks
