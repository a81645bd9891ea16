"""Trainer(graph=True): a replayed step trains exactly like an eager one.

On the CPU the "replay" re-runs the step through the graph's fixed buffers, device-side batch
gather, the learning rate and step number read from the device ([lr, t], advanced there) and
step bookkeeping, so these tests check all of that without a GPU; on a GPU (``device`` = cuda:0)
the step is really captured as a CUDA graph.
"""

from __future__ import annotations

import contextlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import gpunn as gn
import gpunn.train.graph
from gpunn.train.graph import WARMUP_STEPS, StepGraph


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = gn.data.load_digits()
    return (x[:500] / 16.0).astype(np.float32), y[:500]


def _trainer(device, graph: bool, optimizer=None, regularizer=None, loss=None, sizes=(64, 32, 10)) -> gn.Trainer:
    model = gn.mlp(list(sizes), seed=0)
    optimizer = optimizer if optimizer is not None else gn.optim.Adam(lr=3e-3)
    return gn.Trainer(model, loss or gn.SoftmaxWithLoss(), optimizer, regularizer, device=device, graph=graph)


def _graph(trainer: gn.Trainer, x, y, batch_size: int) -> StepGraph:
    """A step graph over (x, y) on the CPU whose body is the trainer's layered step."""

    def body(xb, yb):
        logits = trainer.model.forward(xb)
        value = trainer.loss.forward(logits, yb)
        trainer.model.backward(trainer.loss.backward())
        trainer.optimizer.step(trainer.regularizer)
        return value, (logits.argmax(axis=1) == yb).sum()

    return StepGraph(body, trainer.optimizer, x, y, batch_size, gn.device("cpu"))


def _weights(trainer: gn.Trainer) -> list[np.ndarray]:
    return [gn.to_numpy(p.data).copy() for p in trainer.model.parameters()]


def _assert_same_training(eager: gn.Trainer, replayed: gn.Trainer, device: gn.Device) -> None:
    """The same weights and history: exactly on the CPU, which runs the very same operations;
    closely on a GPU, whose replay multiplies through gpunn's own cuBLAS handle (its kernel
    choice may round differently from CuPy's, and Adam carries such differences along)."""
    exact = device.kind == "cpu"
    for a, b in zip(_weights(eager), _weights(replayed), strict=True):
        if exact:
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    for field in ("cost", "objective", "train_accuracy"):
        got, want = replayed.history[field], eager.history[field]
        if None in want:  # no accuracy for this loss
            assert got == want
        elif exact:
            np.testing.assert_allclose(got, want, rtol=1e-12)
        elif field == "train_accuracy":
            np.testing.assert_allclose(got, want, atol=3 / 500)  # a few predictions may flip
        else:
            np.testing.assert_allclose(got, want, rtol=1e-3)
    assert replayed.optimizer.step_count == eager.optimizer.step_count


def _fit_both(device, digits, epochs=3, batch_size=64):
    x, y = digits
    runs = []
    for graph in (False, True):
        trainer = _trainer(device, graph)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed capture must not pass unnoticed
            trainer.fit(x, y, epochs=epochs, batch_size=batch_size, seed=3)
        runs.append(trainer)
    return runs


def test_replayed_training_equals_eager_training(device, digits):
    # 500 rows in batches of 64: 7 full steps replayed (after the warm-up) and one of 52 eager
    eager, replayed = _fit_both(device, digits)
    _assert_same_training(eager, replayed, device)


def test_replay_with_l2_clipping_and_a_changing_learning_rate(device, digits):
    x, y = digits

    def make(graph: bool) -> gn.Trainer:
        opt = gn.optim.AdamW(lr=5e-3, weight_decay=0.05, max_grad_norm=0.5)
        return _trainer(device, graph, optimizer=opt, regularizer=gn.L2(1e-3))

    runs = []
    for graph in (False, True):
        trainer = make(graph)
        schedule = gn.optim.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
        trainer.fit(x, y, epochs=3, batch_size=100, seed=1, callbacks=[lambda t, r, s=schedule: s.step()])
        runs.append(trainer)
    _assert_same_training(*runs, device)
    assert runs[1].history["lr"] == runs[0].history["lr"] == [5e-3, 2.5e-3, 1.25e-3]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adagrad"])
def test_every_optimizer_replays_like_it_steps(device, digits, optimizer):
    x, y = digits
    runs = []
    for graph in (False, True):
        trainer = _trainer(device, graph, optimizer=gn.optim.create(optimizer))
        trainer.fit(x, y, epochs=2, batch_size=50, shuffle=False)
        runs.append(trainer)
    _assert_same_training(*runs, device)


def test_regression_targets_without_accuracy(device, digits):
    x, y = digits
    targets = gn.data.one_hot(y, 10).astype(np.float32)
    runs = []
    for graph in (False, True):
        trainer = _trainer(device, graph, loss=gn.MSELoss())
        trainer.fit(x, targets, epochs=2, batch_size=64)
        runs.append(trainer)
    _assert_same_training(*runs, device)


def test_a_second_fit_and_resuming_keep_replaying_correctly(device, digits):
    x, y = digits
    eager, replayed = _trainer(device, False), _trainer(device, True)
    for trainer in (eager, replayed):
        trainer.fit(x, y, epochs=1, batch_size=64)
        trainer.fit(x[:300], y[:300], epochs=2, batch_size=32, initial_epoch=1)
    _assert_same_training(eager, replayed, device)


def test_the_step_graph_counts_and_records_every_step(device, digits):
    x, y = digits
    trainer = _trainer(device, True, loss=gn.SoftmaxWithLoss(validate=False))  # labels are checked below, once
    calls = []

    def body(xb, yb):
        calls.append(xb.shape[0])
        logits = trainer.model.forward(xb)
        value = trainer.loss.forward(logits, yb)
        trainer.model.backward(trainer.loss.backward(), input_grad=False)
        trainer.optimizer.step()
        return value, (logits.argmax(axis=1) == yb).sum()

    assert y.min() >= 0 and y.max() < 10
    with device:
        xd, yd = device.send(x), device.send(y)
    graph = StepGraph(body, trainer.optimizer, xd, yd, 128, device)
    losses, correct = graph.epoch(np.random.default_rng(0).permutation(500))
    assert graph.steps_run == 3  # full batches; the 116-row rest runs eagerly
    assert gn.to_numpy(losses).shape == (4,) and np.all(np.isfinite(gn.to_numpy(losses)))
    assert 0 <= int(gn.to_numpy(correct).sum()) <= 500
    assert int(gn.to_numpy(graph.counter)[0]) == 0  # wrapped after the epoch's last step
    assert trainer.optimizer.step_count == 4
    assert graph.failed is None and graph.graph is not None  # the third full step was captured
    if device.kind == "cpu":
        assert calls == [128] * 3 + [116]
    graph.close()


def test_capture_happens_after_the_warm_up(digits):
    x, y = digits
    trainer = _trainer("cpu", True, loss=gn.SoftmaxWithLoss(validate=False))  # as fit builds it
    graph = _graph(trainer, x, y, 50)
    graph.epoch(np.arange(500))
    assert graph.graph is not None and graph.steps_run == 10 > WARMUP_STEPS
    graph.close()
    assert graph.graph is None


def test_graph_argument_errors():
    model = gn.mlp([4, 8, 2], seed=0, dropout=0.3)
    with pytest.raises(ValueError, match=r"graph=True cannot replay Dropout"):
        gn.Trainer(model, gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu", graph=True)
    nested = gn.Sequential([gn.mlp([4, 8, 8], seed=0, dropout=0.3), gn.ReLU(), gn.Linear(8, 2, seed=1)])
    with pytest.raises(ValueError, match=r"graph=True cannot replay Dropout"):  # inside a nested Sequential
        gn.Trainer(nested, gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu", graph=True)
    with pytest.raises(TypeError, match="graph must be True or False"):
        gn.Trainer(gn.mlp([4, 2], seed=0), gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu", graph="yes")
    gn.Trainer(model, gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu", graph=False)  # eager is fine


def test_step_refuses_data_that_end_in_a_short_batch(digits):
    """step() replays full batches: with a short last batch its full-size gather would read
    past the end of the epoch's order on a GPU, so it says why instead."""
    x, y = digits
    trainer = _trainer("cpu", True)
    graph = _graph(trainer, x, y, 128)  # 500 rows: 3 full batches and 116
    with pytest.raises(ValueError, match="multiple of batch_size = 128"):
        graph.step()
    graph.close()


def test_a_step_graph_that_cannot_be_built_leaves_training_eager(monkeypatch, digits):
    """No cuBLAS handle, stream or memory for the graph: a warning, then the same training
    as eager, and the loss validates its labels again afterwards."""
    x, y = digits

    def unavailable(*args, **kwargs):
        raise RuntimeError("libcublas not found")

    eager = _trainer("cpu", False)
    eager.fit(x, y, epochs=2, batch_size=100, seed=0, verbose=False)
    replayed = _trainer("cpu", True)
    monkeypatch.setattr(gpunn.train.graph, "StepGraph", unavailable)
    with pytest.warns(RuntimeWarning, match="graph replay is unavailable .libcublas not found"):
        replayed.fit(x, y, epochs=2, batch_size=100, seed=0, verbose=False)
    for a, b in zip(_weights(eager), _weights(replayed), strict=True):
        np.testing.assert_array_equal(b, a)
    assert replayed.loss.validate is True


@pytest.mark.parametrize("loss", [gn.SoftmaxWithLoss, gn.SigmoidBCELoss], ids=["softmax", "sigmoid_bce"])
def test_a_step_that_reads_the_host_is_refused_at_capture_and_trains_eagerly(device, digits, loss):
    """A body whose loss still validates its targets (two host reads per call) cannot be
    captured: the capture is refused with a message naming the loss, and every step runs
    eagerly, training as the same body with a non-validating loss does under replay."""
    x, y = digits
    if loss is gn.SigmoidBCELoss:
        y = np.eye(10, dtype=np.float32)[y]  # one-hot targets in [0, 1]

    def run(validate: bool) -> tuple[StepGraph, np.ndarray, list[np.ndarray]]:
        trainer = _trainer(device, True, loss=loss(validate=validate))

        def body(xb, yb):
            logits = trainer.model.forward(xb)
            value = trainer.loss.forward(logits, yb)
            trainer.model.backward(trainer.loss.backward())
            trainer.optimizer.step()
            return value, None

        with device:
            xd, yd = device.send(x), device.send(y)
        steps = StepGraph(body, trainer.optimizer, xd, yd, 100, device)
        losses, _ = steps.epoch(np.random.default_rng(0).permutation(500))
        assert steps.steps_run == 5 and trainer.optimizer.step_count == 5
        return steps, gn.to_numpy(losses), _weights(trainer)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-validating body is captured without a word
        replayed, want, weights = run(validate=False)
    assert replayed.failed is None and replayed.graph is not None
    with pytest.warns(RuntimeWarning, match=rf"StepCaptureError: {loss.__name__}\(validate=True\) reads the"):
        eager, got, trained = run(validate=True)
    assert eager.graph is None and eager.failed.startswith("StepCaptureError")
    exact = device.kind == "cpu"  # on a GPU the replay multiplies through gpunn's own cuBLAS handle
    np.testing.assert_allclose(got, want, rtol=0 if exact else 1e-3)
    for a, b in zip(weights, trained, strict=True):
        np.testing.assert_allclose(b, a, rtol=0 if exact else 1e-3, atol=0 if exact else 1e-4)


class _CudaWithoutPool:
    """CuPy's ``cuda`` module as far as a capture uses it: the allocator switch, here a no-op."""

    @staticmethod
    @contextlib.contextmanager
    def using_allocator(malloc):
        yield


def _batch_indices(perm, counter, batch, idx):
    """What the ``batch_indices`` kernel computes: idx[i] = perm[counter[0]·batch + i] (the
    gathered batch must be real rows: the buffer it fills starts uninitialized)."""
    start = int(counter[0]) * int(batch)
    idx[...] = perm[start : start + idx.shape[0]]


def _capture_with_stand_ins(graph, stream, **xp):
    """From here on ``graph`` takes the capture path, with stand-ins for CuPy's stream, memory
    pool and bookkeeping kernels (``xp``: array functions the path calls besides ``take``)."""
    graph.emulate = False
    graph.xp = SimpleNamespace(cuda=_CudaWithoutPool, take=np.take, **xp)
    graph.stream, graph.pool = stream, SimpleNamespace(malloc=None)
    graph._kernels = {"batch_indices": _batch_indices, "record_step": lambda *args, size: None}


def test_a_failed_capture_reports_the_step_error_not_the_invalidated_capture(digits):
    """An error inside the captured step invalidates the capture, and ending it then raises
    cudaErrorStreamCaptureInvalidated: the warning must name the step's own error, the cause.
    The CUDA side is played by stand-ins that behave as CuPy's stream does."""
    x, y = digits
    trainer = _trainer("cpu", True, loss=gn.SoftmaxWithLoss(validate=False))

    def body(xb, yb):
        raise ValueError("the step's own error")

    class InvalidatedStream:
        capturing = False

        def begin_capture(self):
            self.capturing = True

        def end_capture(self):
            assert self.capturing, "end_capture without begin_capture"
            self.capturing = False
            raise RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error")

    graph = StepGraph(body, trainer.optimizer, x, y, 100, gn.device("cpu"))
    _capture_with_stand_ins(graph, InvalidatedStream())
    with pytest.warns(RuntimeWarning, match=r"capture failed \(ValueError: the step's own error\)"):
        graph._capture()
    assert graph.graph is None and not graph.stream.capturing  # capture was ended, its error set aside
    assert trainer.optimizer.step_count == 0


def test_the_step_scalars_follow_the_optimizer(digits):
    """[lr, t] on the device: written from the optimizer at each epoch (a schedule moved lr in
    between), advanced by every update, equal to the host's count after the epoch."""
    x, y = digits
    trainer = _trainer("cpu", True, loss=gn.SoftmaxWithLoss(validate=False))
    graph = _graph(trainer, x, y, 100)
    np.testing.assert_array_equal(graph.step_scalars, [3e-3, 0.0])
    graph.epoch(np.arange(500))
    np.testing.assert_array_equal(graph.step_scalars, [3e-3, 5.0])
    trainer.optimizer.lr = 1e-3
    graph.epoch(np.arange(500))
    np.testing.assert_array_equal(graph.step_scalars, [1e-3, 10.0])
    assert trainer.optimizer.step_count == 10
    graph.close()


def test_a_captured_step_is_counted_once_per_replay(digits):
    """Capturing records the step without running it: the optimizer's count is put back after
    the capture, and each replay adds one (the device advanced t). Played on the CPU by
    stand-ins for the CUDA stream and graph."""
    x, y = digits
    trainer = _trainer("cpu", True, loss=gn.SoftmaxWithLoss(validate=False))
    launches = []

    def body(xb, yb):
        trainer.optimizer.step()  # what a capture records (the stand-in runs it once)
        return np.zeros(()), None

    class Stream:
        def begin_capture(self):
            pass

        def end_capture(self):
            return SimpleNamespace(launch=launches.append)

    graph = StepGraph(body, trainer.optimizer, x, y, 100, gn.device("cpu"))
    _capture_with_stand_ins(graph, Stream(), zeros=np.zeros)
    before = trainer.optimizer.step_count
    graph._capture()
    assert graph.failed is None and trainer.optimizer.step_count == before
    for k in range(3):
        graph._replay()
        assert trainer.optimizer.step_count == before + k + 1
    assert launches == [graph.stream] * 3
