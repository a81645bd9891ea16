"""The compiled CPU step (gpunn.train.cpu_step) computes the layered step's bits exactly.

Each test trains two copies of one model from the same weights, one layer by layer
(``model.forward`` … ``optimizer.step``) and one through :class:`CompiledStep`, over batches
of changing size, and asserts equal losses, logits, parameters and optimizer state, bit for
bit — for every activation, loss, optimizer, penalty and the layer arrangements Sequential
treats differently (fused or not, the hand-over of the output layer's bias sum).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import gpunn as gn
from gpunn.nn.parameter import FlatParameters
from gpunn.optim import OPTIMIZERS, create
from gpunn.train import cpu_step
from gpunn.train.cpu_step import MAX_BATCH_SIZES, CompiledStep, compile_step, unsupported_reason

BATCHES = (7, 7, 3, 7, 1, 5)  # full batches, a short last one, a single row, a new size


def _targets(loss: gn.Loss, rng: np.random.Generator, n: int, n_out: int, dtype: Any) -> np.ndarray:
    if isinstance(loss, gn.SoftmaxWithLoss):
        return rng.integers(0, n_out, n)
    if isinstance(loss, gn.SigmoidBCELoss):
        return rng.integers(0, 2, (n, n_out)).astype(dtype)
    return rng.standard_normal((n, n_out)).astype(dtype)


def _assert_trains_alike(
    model: gn.Sequential,
    loss: gn.Loss,
    optimizer: str = "adam",
    regularizer: gn.Regularizer | None = None,
    dtype: Any = np.float32,
    **hyper: Any,
) -> CompiledStep:
    """Train ``model`` and a deep copy, layered and compiled, on the same batches; assert the
    same bits at every step. Returns the compiled step."""
    twin = copy.deepcopy(model)
    layered_opt = create(optimizer, model.parameters(), **hyper)
    compiled_opt = create(optimizer, twin.parameters(), **hyper)
    step = CompiledStep(twin, copy.deepcopy(loss), compiled_opt, copy.deepcopy(regularizer))
    rng = np.random.default_rng(5)
    linears = [layer for layer in model.layers if isinstance(layer, gn.Linear)]
    n_in, n_out = linears[0].n_in, linears[-1].n_out
    for n in BATCHES:
        x = rng.standard_normal((n, n_in)).astype(dtype)
        t = _targets(loss, rng, n, n_out, dtype)
        logits = model.forward(x)
        want = loss.forward(logits, t)
        model.backward(loss.backward(), input_grad=False)
        layered_opt.step(regularizer)
        got = step(x, t)
        assert got.dtype == want.dtype and got == want, (n, got, want)
        np.testing.assert_array_equal(step.logits, logits)
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            np.testing.assert_array_equal(b.data, a.data, err_msg=a.name)
            np.testing.assert_array_equal(b.grad, a.grad, err_msg=a.name)
        for name, buffer in layered_opt._state.items():
            np.testing.assert_array_equal(compiled_opt._state[name], buffer, err_msg=name)
    assert compiled_opt.step_count == layered_opt.step_count == len(BATCHES)
    return step


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_activation_trains_bit_for_bit_like_the_layered_step(activation, dtype):
    model = gn.mlp([6, 9, 5, 4], activation=activation, dtype=dtype, seed=1)
    _assert_trains_alike(model, gn.SoftmaxWithLoss(), "adam", gn.L2(1e-3), dtype=dtype)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("regularizer", [None, gn.L2(1e-2), gn.L1(1e-3)], ids=["none", "l2", "l1"])
def test_every_optimizer_and_penalty_trains_bit_for_bit(optimizer, regularizer):
    _assert_trains_alike(gn.mlp([6, 8, 3], seed=2), gn.SoftmaxWithLoss(), optimizer, regularizer)


def test_gradient_clipping_trains_bit_for_bit():
    _assert_trains_alike(gn.mlp([6, 8, 3], seed=3), gn.SoftmaxWithLoss(), "sgd", lr=0.5, max_grad_norm=1e-3)


@pytest.mark.parametrize("loss", [gn.MSELoss(), gn.SigmoidBCELoss()], ids=["mse", "sigmoid_bce"])
def test_other_losses_train_bit_for_bit(loss):
    _assert_trains_alike(gn.mlp([6, 8, 3], activation="tanh", seed=4), loss, "adam", gn.L2(1e-3))


def test_one_hot_targets_train_bit_for_bit():
    class OneHot(gn.SoftmaxWithLoss):  # labels drawn as integers, handed over as one-hot rows
        def forward(self, logits: Any, t: Any) -> Any:
            return super().forward(logits, np.eye(logits.shape[1], dtype=logits.dtype)[t])

    _assert_trains_alike(gn.mlp([6, 8, 3], seed=5), OneHot(), "momentum")


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [gn.Linear(6, 3, seed=0)],  # one layer: no hidden activation, no hand-over
        lambda: [gn.Linear(6, 8, seed=0), gn.ReLU(), gn.Linear(8, 8, seed=1), gn.Tanh(), gn.Linear(8, 3, seed=2)],
        # an Identity between the fused activation and the output layer: no hand-over in Sequential
        lambda: [gn.Linear(6, 8, seed=0), gn.ReLU(), gn.Identity(), gn.Linear(8, 3, seed=1)],
        # an Identity between a Linear and its activation: the activation is not fused
        lambda: [gn.Linear(6, 8, seed=0), gn.Identity(), gn.Sigmoid(), gn.Linear(8, 3, seed=1)],
        # dropout that draws nothing (p = 0), and an activation on the output
        lambda: [gn.Linear(6, 8, seed=0), gn.Dropout(0.0), gn.LeakyReLU(0.2), gn.Linear(8, 3, seed=1), gn.Tanh()],
        # an activation first: it acts on the caller's x, which must stay untouched
        lambda: [gn.ReLU(), gn.Linear(6, 8, seed=0), gn.ReLU(), gn.Linear(8, 3, seed=1)],
    ],
    ids=["single", "deep", "identity-before-output", "unfused", "dropout0-output-activation", "activation-first"],
)
def test_layer_arrangements_train_bit_for_bit(layers):
    _assert_trains_alike(gn.Sequential(layers()), gn.MSELoss(), "rmsprop", gn.L2(1e-3))


def test_the_callers_arrays_are_left_as_they_were():
    model = gn.Sequential([gn.ReLU(), gn.Linear(4, 5, seed=0), gn.Sigmoid(), gn.Linear(5, 2, seed=1)])
    step = CompiledStep(model, gn.MSELoss(), create("sgd", model.parameters()), None)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    t = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    saved_x, saved_t = x.copy(), t.copy()
    step(x, t)
    np.testing.assert_array_equal(x, saved_x)
    np.testing.assert_array_equal(t, saved_t)


def test_dropout_in_eval_mode_is_compiled_and_in_training_mode_refused():
    model = gn.Sequential([gn.Linear(6, 8, seed=0), gn.ReLU(), gn.Dropout(0.5, seed=0), gn.Linear(8, 3, seed=1)])
    assert "draws a mask" in unsupported_reason(model)
    model.eval()
    assert unsupported_reason(model) is None
    _assert_trains_alike(model, gn.SoftmaxWithLoss(), "adam")


class _MyLinear(gn.Linear):
    def forward(self, x: Any) -> Any:
        return super().forward(x) * 2.0


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (lambda: gn.Sequential([gn.Linear(4, 3), gn.Softmax()]), "Softmax"),
        (lambda: gn.Sequential([_MyLinear(4, 3)]), "_MyLinear"),
        (lambda: gn.Sequential([gn.Sequential([gn.Linear(4, 3)])]), "Sequential"),
        (lambda: gn.Linear(4, 3), "needs a gpunn Sequential"),
        (lambda: gn.Sequential([gn.ReLU()]), "no parameters"),
    ],
)
def test_what_cannot_be_compiled_is_refused_with_a_reason(model, words):
    m = model()
    reason = unsupported_reason(m)
    assert reason is not None and words in reason
    assert compile_step(m, gn.SoftmaxWithLoss(), create("sgd"), None) is None
    with pytest.raises(ValueError, match=words):
        CompiledStep(m, gn.SoftmaxWithLoss(), create("sgd"), None)


def test_an_optimizer_of_part_of_the_model_is_refused():
    """Bound to some parameters (the others frozen), the optimizer has a buffer of its own: a
    compiled step, which keeps views of the whole model's buffer, would repack the model away
    from it and train on stale weights; the caller steps layer by layer instead."""
    model = gn.mlp([4, 5, 3], seed=0)
    last = model.layers[-1]
    partial = create("adam", [last.W, last.b])
    assert compile_step(model, gn.SoftmaxWithLoss(), partial, None) is None
    with pytest.raises(ValueError, match="not bound to all of the model's parameters"):
        CompiledStep(model, gn.SoftmaxWithLoss(), partial, None)
    whole = create("adam", model.parameters())  # now the model's buffer again: compiled
    step = compile_step(model, gn.SoftmaxWithLoss(), whole, None)
    assert step is not None and step.current()
    partial.bind([last.W, last.b])  # moves them to a buffer of its own: the step is stale
    assert not step.current()


def test_a_repacked_model_is_compiled_at_once():
    # what model.to(another device) does: the optimizer follows at its next step, and the
    # compiled step does that first instead of leaving the first epoch to the layered path
    model = gn.mlp([4, 5, 3], seed=0)
    opt = create("adam", model.parameters())
    FlatParameters(model.parameters(), model.device)
    step = compile_step(model, gn.SoftmaxWithLoss(), opt, None)
    assert step is not None and step.current() and opt._flat is step._flat


def test_a_step_is_stale_once_two_layers_swapped_their_parameters():
    # the same buffer and the same Parameter objects, but each closure holds the other's weights
    model = gn.mlp([4, 4, 4, 3], seed=0)
    step = CompiledStep(model, gn.SoftmaxWithLoss(), create("adam", model.parameters()), None)
    assert step.current()
    a, b = model.layers[0], model.layers[2]
    a.b, b.b = b.b, a.b
    assert not step.current()


def test_a_compiled_step_is_reused_while_current_and_rebuilt_when_the_model_changes():
    model = gn.Sequential([gn.Linear(6, 8, seed=0), gn.ReLU(), gn.Dropout(0.5), gn.Linear(8, 3, seed=1)]).eval()
    loss, opt = gn.SoftmaxWithLoss(), create("adam", model.parameters())
    first = compile_step(model, loss, opt, None)
    assert first is not None and first.current()
    penalty = gn.L2(0.1)
    again = compile_step(model, loss, opt, penalty, previous=first)
    assert again is first and again.regularizer is penalty  # the regularizer follows the caller
    assert compile_step(model, gn.SoftmaxWithLoss(), opt, None, previous=first) is not first  # another loss
    model.train()  # the dropout would now draw masks
    assert not first.current()
    assert compile_step(model, loss, opt, None, previous=first) is None
    model.eval()
    model.layers[3] = gn.Linear(8, 3, seed=2)  # a replaced layer
    assert not first.current()
    model = gn.mlp([6, 8, 3], seed=0)
    step = CompiledStep(model, loss, create("adam", model.parameters()), None)
    FlatParameters(model.parameters(), gn.device("cpu"))  # repacked: the step's views are stale
    assert not step.current()


def test_a_changed_leaky_slope_reaches_the_fused_forward_and_the_backward_alike():
    """The fused Linear reads its activation's slope at every forward (it used to keep the
    slope of the day the model was built, while backward read the new one)."""
    model = gn.Sequential([gn.Linear(3, 4, seed=0), gn.LeakyReLU(0.1)])
    assert model.layers[0].activation is model.layers[1]  # fused
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    model.layers[1].negative_slope = 0.3
    z = x @ model.layers[0].W.data  # b is 0
    assert (z < 0).any() and (z > 0).any()
    np.testing.assert_allclose(model.forward(x), np.where(z > 0, z, 0.3 * z), rtol=1e-5)
    dx = model.backward(np.ones((16, 4), np.float32))
    np.testing.assert_allclose(dx, np.where(z > 0, 1.0, 0.3) @ model.layers[0].W.data.T, rtol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        lambda model: setattr(model.layers[2], "p", 0.5),  # a Dropout that starts drawing masks
        lambda model: setattr(model.layers[1], "negative_slope", 0.3),  # another LeakyReLU slope
        lambda model: model.layers[2].train(False),  # a mode (Dropout p = 0 draws nothing either way)
    ],
    ids=["dropout-rate", "leaky-slope", "mode"],
)
def test_a_changed_layer_setting_makes_the_step_stale(change):
    model = gn.Sequential([gn.Linear(6, 8, seed=0), gn.LeakyReLU(0.1), gn.Dropout(0.0), gn.Linear(8, 3, seed=1)])
    loss, opt = gn.SoftmaxWithLoss(), create("adam", model.parameters())
    step = compile_step(model, loss, opt, None)
    assert step is not None and step.current()
    change(model)
    assert not step.current()
    again = compile_step(model, loss, opt, None, previous=step)
    assert again is not step
    if again is not None:  # recompiled with the new setting: still the layered step's bits
        _assert_trains_alike(model, loss, "adam")


def test_a_trainer_follows_a_model_changed_by_a_callback_between_epochs(monkeypatch):
    """A callback that swaps a layer or changes a slope between epochs: the next epoch
    recompiles (with or without graph=True), so the fit trains as the layered one does."""
    x, y = gn.data.load_digits()
    x, y = (x[:256] / 16.0).astype(np.float32), y[:256]

    def change(trainer: gn.Trainer, record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            trainer.model.layers[2] = gn.Tanh()  # was an Identity
            trainer.model.layers[1].negative_slope = 0.3

    def fit(compiled: bool, graph: bool) -> gn.Trainer:
        monkeypatch.setattr(cpu_step, "compile_step", compile_step if compiled else lambda *a, **k: None)
        model = gn.Sequential([gn.Linear(64, 16, seed=0), gn.LeakyReLU(0.1), gn.Identity(), gn.Linear(16, 10, seed=1)])
        trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), gn.optim.Adam(lr=3e-3), device="cpu", graph=graph)
        trainer.fit(x, y, epochs=3, batch_size=64, verbose=False, callbacks=[change])
        return trainer

    layered = fit(compiled=False, graph=False)
    for graph in (False, True):
        compiled = fit(compiled=True, graph=graph)
        for a, b in zip(layered.model.parameters(), compiled.model.parameters(), strict=True):
            np.testing.assert_array_equal(b.data, a.data)
        assert compiled.history["cost"] == layered.history["cost"]


def test_a_trainer_can_be_pickled_by_a_callback_during_a_fit():
    import pickle  # noqa: PLC0415

    x, y = gn.data.load_digits()
    x, y = x[:128] / 16.0, y[:128]

    def pickled_at_each_epoch(graph: bool, epochs: int) -> list[bytes]:
        copies: list[bytes] = []
        trainer = gn.Trainer(
            gn.mlp([64, 16, 10], seed=0), gn.SoftmaxWithLoss(), gn.optim.Adam(), device="cpu", graph=graph
        )
        trainer.fit(
            x, y, epochs=epochs, batch_size=64, verbose=False, callbacks=[lambda t, r: copies.append(pickle.dumps(t))]
        )
        return copies

    copies = pickled_at_each_epoch(graph=False, epochs=2)
    assert len(copies) == 2
    restored = pickle.loads(copies[-1])
    assert restored._compiled is None and restored._step_graph is None
    assert restored.loss.validate  # the fit's own switch is undone in the copy
    restored.fit(x, y, epochs=1, batch_size=64, verbose=False)  # it trains on
    with pytest.raises(ValueError, match="labels outside"):
        restored.loss.forward(np.zeros((2, 10), np.float32), np.array([0, 99]))

    copies = pickled_at_each_epoch(graph=True, epochs=1)
    restored = pickle.loads(copies[0])
    assert restored.loss.validate and not restored.optimizer._live_on  # live scalars were the fit's


def test_batch_sizes_beyond_the_kept_programs_evict_the_oldest():
    model = gn.mlp([5, 6, 3], seed=0)
    step = CompiledStep(model, gn.SoftmaxWithLoss(), create("sgd", model.parameters()), None)
    rng = np.random.default_rng(0)
    for n in range(1, MAX_BATCH_SIZES + 3):
        step(rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n))
    assert len(step._programs) == MAX_BATCH_SIZES
    assert sorted(step._programs) == list(range(3, MAX_BATCH_SIZES + 3))


def test_bad_inputs_get_the_layered_paths_errors():
    model = gn.mlp([5, 6, 3], seed=0)
    step = CompiledStep(model, gn.SoftmaxWithLoss(), create("sgd", model.parameters()), None)
    t = np.zeros(4, dtype=np.int64)
    with pytest.raises(TypeError, match="x has dtype float64"):
        step(np.zeros((4, 5)), t)
    with pytest.raises(ValueError, match="x has 4 features but the first Linear layer"):
        step(np.zeros((4, 4), np.float32), t)
    starts_with_relu = gn.Sequential([gn.ReLU(), gn.Linear(5, 3, seed=0)])
    step = CompiledStep(starts_with_relu, gn.SoftmaxWithLoss(), create("sgd", starts_with_relu.parameters()), None)
    with pytest.raises(ValueError, match=r"x has 4 features but the first Linear layer, Linear\(5 → 3\), expects 5"):
        step(np.zeros((4, 4), np.float32), t)
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        step([[0.0] * 5] * 4, t)
    with pytest.raises(ValueError, match="x must have shape"):
        step(np.zeros(5, np.float32), t)
    with pytest.raises(ValueError, match="t holds labels outside"):
        step(np.zeros((4, 5), np.float32), t + 7)


def test_trainer_and_estimator_fits_on_the_cpu_step_through_it_with_the_same_results(monkeypatch):
    x, y = gn.data.load_digits()
    x, y = (x[:300] / 16.0).astype(np.float32), y[:300]
    calls = {"n": 0}
    real_call = CompiledStep.__call__

    def counting(self: CompiledStep, xb: Any, tb: Any) -> Any:
        calls["n"] += 1
        return real_call(self, xb, tb)

    def fit(compiled: bool) -> gn.Trainer:
        monkeypatch.setattr(cpu_step, "compile_step", compile_step if compiled else lambda *a, **k: None)
        model = gn.mlp([64, 16, 10], seed=0)
        trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), gn.optim.Adam(lr=3e-3), gn.L2(1e-4), device="cpu")
        trainer.fit(x, y, epochs=2, batch_size=64, verbose=False)
        return trainer

    monkeypatch.setattr(CompiledStep, "__call__", counting)
    layered, compiled = fit(False), fit(True)
    assert calls["n"] == 2 * 5  # 300 rows in batches of 64: 5 steps an epoch, all compiled
    assert compiled._compiled is None  # the fit's buffers are not kept after it
    for a, b in zip(layered.model.parameters(), compiled.model.parameters(), strict=True):
        np.testing.assert_array_equal(b.data, a.data)
    for field in ("cost", "objective", "train_accuracy"):
        assert compiled.history[field] == layered.history[field]

    sklearn = pytest.importorskip("gpunn.sklearn")
    from gpunn.sklearn import network as _sklearn_network  # noqa: PLC0415 — needs scikit-learn

    estimators = []
    for compiled_step in (True, False):
        monkeypatch.setattr(_sklearn_network, "compile_step", compile_step if compiled_step else lambda *a, **k: None)
        calls["n"] = 0
        clf = sklearn.MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0, device="cpu")
        with pytest.warns(Warning):  # 3 epochs do not converge
            clf.fit(x, y)
        assert calls["n"] == (3 * 2 if compiled_step else 0)  # batches of 200: 2 steps an epoch
        assert getattr(clf._net, "compiled", None) is None  # the fit's buffers (and its last batch) are let go
        estimators.append(clf)
    for a, b in zip(estimators[0].coefs_, estimators[1].coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert estimators[0].loss_curve_ == estimators[1].loss_curve_
