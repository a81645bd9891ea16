"""CUDA-graph replay of a whole training step: ``Trainer(..., graph=True)``.

A small network on a GPU spends its step launching kernels (CuPy: 15–20 µs of host time each).
Captured once as a CUDA graph, the step (batch gather, forward, loss, backward, update, accuracy
count, bookkeeping) costs one launch. What makes a replay correct:

- every buffer the graph touches keeps its address: the epoch's order (``perm``), the step counter,
  the batch buffers and the per-step figures are allocated once per fit; capture temporaries come
  from a memory pool private to the graph, so no later array can take a captured address;
- nothing the host decides per step is frozen in: a kernel reads the batch rows from ``perm`` at
  ``counter · batch``, and the updates read lr and the step number t from a device array [lr, t]
  (``NumpyOps.step_scalars``), advancing t there; the host rewrites it each epoch;
- matrix products go through gpunn's own cuBLAS handle (:mod:`gpunn.backend.cuda.gemm`): CuPy
  refuses cuBLAS calls during capture.

The first steps of a fit run eagerly (kernels compile, pools fill), then one step is captured and
every further full batch replays it; an epoch's last, smaller batch runs eagerly. If capture fails,
training continues eagerly with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend.cuda.gemm import CapturableMatmul, CublasHandle
from ..backend.cuda.ops import CupyOps
from ..backend.device import Device, StepCaptureError, capturing_step, matmul_precision
from ..backend.ops import NumpyOps
from ..nn.layers import Dropout

WARMUP_STEPS = 2  # eager steps before capture: NVRTC compiles, pools and cuBLAS warm up


def leaf_layers(model: Any) -> list[Any]:
    """The layers a model runs, in order, nested Sequentials opened up."""
    leaves = []
    for layer in getattr(model, "layers", ()):
        leaves.extend(leaf_layers(layer) if hasattr(layer, "layers") else [layer])
    return leaves


def unsupported_reason(model: Any, distributed: bool) -> str | None:
    """Why a model cannot be trained with graph replay, or None when it can."""
    if distributed:
        return "graph=True is not supported for distributed training yet"
    for layer in leaf_layers(model):
        if isinstance(layer, Dropout) and layer.p > 0:
            return f"graph=True cannot replay {layer!r}: its random masks are drawn per step on the host's command"
    return None


def start(trainer: Any, body: Callable[..., tuple[Any, Any]], x: Any, y: Any, batch_size: int) -> StepGraph | None:
    """A step graph of ``body``, ``trainer``'s eager step, for a fit, or None (and a warning) when its model
    cannot be replayed (a callback added a Dropout) or the GPU cannot give the graph a cuBLAS handle,
    a stream or memory: training then goes on eagerly, as after a failed capture."""
    reason = unsupported_reason(trainer.model, trainer.comm is not None)
    if reason is not None:  # a callback changed the model since the Trainer was made
        warnings.warn(f"{reason}; training eagerly", RuntimeWarning, stacklevel=4)
        return None
    try:
        graph = StepGraph(body, trainer.optimizer, x, y, batch_size, trainer.device)
    except (RuntimeError, OSError, MemoryError) as exc:
        warnings.warn(f"graph replay is unavailable ({exc}); training eagerly", RuntimeWarning, stacklevel=4)
        return None
    graph.key = capture_key(trainer)
    return graph


def capture_key(trainer: Any) -> tuple[tuple[Any, ...], str]:
    """What a step captured for ``trainer`` holds: its optimizer, the optimizer's buffers and its
    regularizer (compared by identity), and, as text, the values the kernels took as launch arguments
    (all but lr and the step number, which the graph reads from device memory) and the layers it ran
    with their settings (an activation, its slope, a Dropout's rate; not the mode: fit sets train()
    after the first capture)."""
    opt, reg = trainer.optimizer, trainer.regularizer
    values = {k: v for k, v in opt.hyperparameters().items() if k != "lr"}
    values["max_grad_norm"] = opt.max_grad_norm
    values["nesterov"] = getattr(opt, "nesterov", None)
    values["regularizer"] = None if reg is None else (type(reg).__name__, reg.lam)
    values["layers"] = [(id(layer), layer.config()) for layer in leaf_layers(trainer.model)]
    return (opt, opt.flat, *opt.state.values(), reg), repr(sorted(values.items()))


def stale(graph: StepGraph, trainer: Any) -> bool:
    """Whether ``graph`` is out of date for ``trainer``: its :func:`capture_key` changed."""
    (held, values), (now, now_values) = graph.key, capture_key(trainer)
    return len(held) != len(now) or any(a is not b for a, b in zip(held, now, strict=True)) or values != now_values


class StepGraph:
    """One fit's captured training step.

    ``body(xb, yb)`` runs one step on a batch and returns (loss, correct) as 0-d device arrays (correct
    may be None); it must queue device work only (no host reads). ``x``, ``y`` are the training data on
    ``device``. On the CPU (``emulate``) a replay calls the body again instead of a CUDA graph: the same
    buffers, gathers and bookkeeping, which is how the tests check them without a GPU.
    """

    def __init__(
        self,
        body: Callable[[Any, Any], tuple[Any, Any]],
        optimizer: Any,
        x: Any,
        y: Any,
        batch_size: int,
        device: Device,
    ) -> None:
        self.body, self.optimizer, self.x, self.y = body, optimizer, x, y
        self.batch = batch_size
        self.device = device
        self.emulate = device.kind == "cpu"
        xp = self.xp = device.xp
        n = x.shape[0]
        self.n_full, self.rest = divmod(n, batch_size)
        with device:
            self.perm = xp.arange(n, dtype=np.int64)
            self.counter = xp.zeros(1, dtype=np.int64)
            self.idx = xp.empty(batch_size, dtype=np.int64)
            self.xb = xp.empty((batch_size, *x.shape[1:]), dtype=x.dtype)
            self.yb = xp.empty((batch_size, *y.shape[1:]), dtype=y.dtype)
            n_steps = self.n_full + (1 if self.rest else 0)
            self.step_loss = xp.zeros(n_steps, dtype=np.float64)
            self.step_correct = xp.zeros(n_steps, dtype=np.int64)
            # [lr, t] that the updates read (rewritten from the optimizer at each epoch)
            self.step_scalars = xp.asarray(self._optimizer_scalars())
        self.graph: Any = None
        self.key: tuple[tuple[Any, ...], str] | None = None  # what a Trainer captured it with (capture_key)
        self.failed: str | None = None
        self.steps_run = 0
        if self.emulate:
            self.stream = self.handle = self.pool = None
        else:
            with device:  # the stream and the cuBLAS handle belong to the current GPU
                self.stream = xp.cuda.Stream(non_blocking=True)
                self.handle = CublasHandle(xp, self.stream, tf32=matmul_precision() == "tf32")
            self.pool = xp.cuda.MemoryPool()  # the graph's temporaries live here, and only they
            self._kernels = _device_kernels(xp)
            device.synchronize()  # the data came on the default stream; ours does not wait

    # ------------------------------------------------------------------ one epoch

    def epoch(self, order: np.ndarray) -> tuple[Any, Any]:
        """Train one epoch over the rows in ``order`` (a host permutation of range(N)); returns the
        per-step losses (float64) and correct counts as device arrays."""
        scalars = self._optimizer_scalars()
        if self.emulate:
            self.perm[...] = order
            self.counter[...] = 0
            self.step_scalars[...] = scalars
            with self._reading_step_scalars():
                return self._steps()
        with self.device, self.stream:
            # work queued on the default stream since the last epoch (an evaluation, a copy of the
            # best weights) must finish before this stream changes the weights
            self.stream.wait_event(self.xp.cuda.Stream.null.record())
            self.perm.set(order, stream=self.stream)
            self.step_scalars.set(scalars, stream=self.stream)  # a schedule or callback may have moved lr
            self.counter.fill(0)
            with CapturableMatmul(self.handle), self._reading_step_scalars():
                result = self._steps()
        self.stream.synchronize()  # the epoch's figures are read on the default stream next
        return result

    def step(self) -> None:
        """One full-batch step at the current counter (which wraps around after the last step of an
        epoch): the benchmark's steady state, replaying without per-epoch setup."""
        if self.rest:
            # after the full batches the counter points at the short one, whose full-size gather
            # would read past the end of perm
            raise ValueError(
                f"step() replays full batches only: len(x) = {self.x.shape[0]} is not a multiple of "
                f"batch_size = {self.batch}"
            )
        if self.emulate:
            with self._reading_step_scalars():
                self._next_full_step()
            return
        with self.device, self.stream, CapturableMatmul(self.handle), self._reading_step_scalars():
            self._next_full_step()

    def _optimizer_scalars(self) -> np.ndarray:
        """[lr, t] as the optimizer holds them now (t: the updates it has made)."""
        return np.array([self.optimizer.lr, self.optimizer.step_count], dtype=np.float64)  # host: two numbers

    @contextlib.contextmanager
    def _reading_step_scalars(self) -> Any:
        """The optimizer's updates inside read lr and t from :attr:`step_scalars` (advancing t)."""
        token = NumpyOps.step_scalars.set(self.step_scalars)
        try:
            yield
        finally:
            NumpyOps.step_scalars.reset(token)

    def _steps(self) -> tuple[Any, Any]:
        for _ in range(self.n_full):
            self._next_full_step()
        if self.rest:
            start = self.n_full * self.batch
            rows = self.perm[start:]
            xb, yb = self.xp.take(self.x, rows, axis=0), self.xp.take(self.y, rows, axis=0)
            self._record(*self.body(xb, yb))
        return self.step_loss, self.step_correct

    def _next_full_step(self) -> None:
        """Warm up, capture once, then replay."""
        if self.graph is None and self.steps_run >= WARMUP_STEPS and self.failed is None:
            self._capture()
        if self.graph is not None:
            self._replay()
        else:
            self._full_step()
        self.steps_run += 1

    def _full_step(self) -> None:
        """Gather the batch at ``counter`` into the fixed buffers and train on it."""
        xp = self.xp
        if self.emulate:
            start = int(self.counter[0]) * self.batch
            self.idx[...] = self.perm[start : start + self.batch]
        else:
            self._kernels["batch_indices"](self.perm, self.counter, np.int64(self.batch), self.idx)
        xp.take(self.x, self.idx, axis=0, out=self.xb)
        xp.take(self.y, self.idx, axis=0, out=self.yb)
        self._record(*self.body(self.xb, self.yb))

    def _record(self, loss: Any, correct: Any) -> None:
        """step_loss[counter] = loss; step_correct[counter] = correct; counter += 1, back to 0 after
        the epoch's last step (on the device)."""
        steps = self.step_loss.size
        if self.emulate:
            c = int(self.counter[0])
            self.step_loss[c] = loss
            self.step_correct[c] = 0 if correct is None else correct
            self.counter[0] = (c + 1) % steps
            return
        if correct is None:
            correct = self.xp.zeros((), dtype=np.int64)
        counts = (self.step_loss, self.step_correct, self.counter)
        self._kernels["record_step"](
            loss.astype(np.float64), correct.astype(np.int64), np.int64(steps), *counts, size=1
        )

    # ------------------------------------------------------------------ capture and replay

    def _capture(self) -> None:
        """Record one full step as a CUDA graph (on the CPU: mark the next steps as replays).

        Whatever the step runs must queue device work only: code that would read a device value on the
        host refuses with :class:`~gpunn.StepCaptureError` (``capturing_step``), the capture is abandoned
        with a warning naming that cause, and training goes on eagerly.
        """
        if self.emulate:
            self.graph = self._full_step
            return
        steps = self.optimizer.step_count  # capturing records the step without running it
        try:
            self.graph = self._record_graph(self.xp)
        except Exception as exc:
            self._give_up(exc)
        finally:
            self.optimizer.step_count = steps

    def _record_graph(self, xp: Any) -> Any:
        """The captured graph of one full step; raises the step's own error if it fails.

        An error inside the step leaves the stream capturing an invalidated graph: capture is ended to
        leave that state, and the step's error, the cause, is what propagates (ending it raises
        cudaErrorStreamCaptureInvalidated, which would otherwise hide the cause).
        """
        with xp.cuda.using_allocator(self.pool.malloc):
            self.stream.begin_capture()  # relaxed mode: pool allocations may happen inside
            try:
                with capturing_step():
                    self._full_step()
            except BaseException:
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
                raise
            return self.stream.end_capture()

    def _give_up(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        self.graph = None
        message = f"CUDA graph capture failed ({self.failed}); training continues without graph replay"
        warnings.warn(message, RuntimeWarning, stacklevel=5)

    def _replay(self) -> None:
        if self.emulate:
            # The body runs again, as a graph would replay it, and refuses host reads as a capture
            # does: a body that reads the host fails here on the CPU too.
            try:
                with capturing_step():
                    self._full_step()  # the body counts its optimizer step itself
            except StepCaptureError as exc:
                self._give_up(exc)  # refused before anything changed: the step runs eagerly
                self._full_step()
            return
        self.graph.launch(self.stream)
        self.optimizer.step_count += 1  # the replay advanced t on the device: the host counts it

    def close(self) -> None:
        """Free what the graph held: the graph and its stream's loss-kernel buffers."""
        self.graph = None
        if self.stream is not None:
            CupyOps.release_loss_scratch(int(self.stream.ptr))


@functools.cache
def _device_kernels(xp: Any) -> dict[str, Any]:
    """The two bookkeeping kernels of a replayed step (CuPy ElementwiseKernels, compiled once)."""
    return {
        "batch_indices": xp.ElementwiseKernel(
            "raw int64 perm, raw int64 counter, int64 batch",
            "int64 idx",
            "idx = perm[counter[0] * batch + i]",
            "gpunn_batch_indices",
        ),
        "record_step": xp.ElementwiseKernel(
            "raw float64 loss, raw int64 correct, int64 steps",
            "raw float64 step_loss, raw int64 step_correct, raw int64 counter",
            "const long long c = counter[0]; step_loss[c] = loss[0]; step_correct[c] = correct[0]; "
            "counter[0] = (c + 1) % steps;",
            "gpunn_record_step",
        ),
    }
