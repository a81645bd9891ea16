"""gpunn.Trainer: fit, evaluate, predict, History, early stopping, callbacks, errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

import gpunn as gn
from gpunn.nn.parameter import FlatParameters
from gpunn.train.history import FIELDS


@pytest.fixture(scope="module")
def spiral() -> tuple[np.ndarray, np.ndarray]:
    return gn.data.make_spiral(points_per_class=60, classes=3, seed=0)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = gn.data.load_digits()
    return x / 16.0, y


def classifier(sizes=(2, 16, 3), lr=1e-2, regularizer=None, dropout=0.0, optimizer=None, device="cpu", loss=None):
    """A small softmax classifier; on the CPU unless a test asks for its ``device``."""
    model = gn.mlp(list(sizes), seed=0, dropout=dropout)
    optimizer = optimizer if optimizer is not None else gn.optim.Adam(lr=lr)
    return gn.Trainer(model, loss or gn.SoftmaxWithLoss(), optimizer, regularizer=regularizer, device=device)


def weights(trainer: gn.Trainer) -> list[np.ndarray]:
    return [gn.to_numpy(p.data).copy() for p in trainer.model.parameters()]


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- construction


def test_trainer_binds_an_optimizer_built_without_parameters():
    model = gn.mlp([2, 8, 3], seed=0)
    optimizer = gn.optim.Adam(lr=1e-2)
    with pytest.raises(RuntimeError):
        optimizer.params  # noqa: B018 — unbound before the Trainer
    gn.Trainer(model, gn.SoftmaxWithLoss(), optimizer, device="cpu")
    assert len(optimizer.params) == len(model.parameters())
    assert all(a is b for a, b in zip(optimizer.params, model.parameters(), strict=True))


def test_trainer_keeps_an_optimizer_already_bound_to_the_model():
    model = gn.mlp([2, 8, 3], seed=0)
    optimizer = gn.optim.Adam(model.parameters(), lr=1e-2)
    bound = optimizer.params
    gn.Trainer(model, gn.SoftmaxWithLoss(), optimizer, device="cpu")
    assert optimizer.params is bound


@pytest.mark.default_device  # gpunn's own choice: cuda:0 under ci/gpu-check, so the asserts hold on either
def test_device_none_picks_the_default_device_and_moves_the_model(monkeypatch):
    trainer = classifier(device=None)
    assert trainer.device == gn.device()
    assert trainer.model.device == trainer.device
    monkeypatch.setenv("GPUNN_DEVICE", "cpu")
    trainer = classifier(device=None)
    assert trainer.device == gn.device("cpu")
    assert trainer.model.device == gn.device("cpu")


def test_device_given_as_a_string():
    trainer = classifier(device="cpu")
    assert isinstance(trainer.device, gn.Device)
    assert trainer.device.kind == "cpu"


@pytest.mark.parametrize(
    ("argument", "kwargs"),
    [
        ("model", {"model": [gn.Linear(2, 3)]}),
        ("loss", {"loss": "cross_entropy"}),
        ("optimizer", {"optimizer": "adam"}),
        ("optimizer", {"optimizer": gn.optim.Adam}),
        ("regularizer", {"regularizer": 1e-4}),
    ],
)
def test_trainer_refuses_bad_types_naming_the_argument(argument, kwargs):
    arguments = {
        "model": gn.mlp([2, 3], seed=0),
        "loss": gn.SoftmaxWithLoss(),
        "optimizer": gn.optim.SGD(lr=0.1),
        "regularizer": None,
    }
    arguments.update(kwargs)
    with pytest.raises(TypeError, match=argument):
        gn.Trainer(**arguments)


# ----------------------------------------------------------------------------- fit, evaluate, predict


def test_fit_learns_the_spiral_and_evaluate_agrees_with_numpy(device, spiral):
    x, y = spiral
    trainer = classifier(sizes=(2, 32, 3), device=device)
    assert trainer.device == device and trainer.model.device == device
    history = trainer.fit(x, y, epochs=40, batch_size=32, verbose=False)
    assert len(history) == 40
    assert history["cost"][-1] < 0.6 * history["cost"][0]
    assert history["train_accuracy"][-1] > history["train_accuracy"][0] + 0.2

    result = trainer.evaluate(x, y)
    assert set(result) == {"loss", "accuracy"}
    assert all(type(v) is float for v in result.values())

    proba = trainer.predict_proba(x)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(x), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    p = proba.astype(np.float64)
    assert result["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-4, abs=1e-5)

    labels = trainer.predict(x)
    assert isinstance(labels, np.ndarray) and labels.shape == (len(x),)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    assert result["accuracy"] == pytest.approx(float(np.mean(labels == y)))
    assert result["accuracy"] > 0.7

    # device input gives device output
    xd = gn.to_device(x, device)
    out = trainer.predict(xd)
    assert gn.device_of(out) == device
    np.testing.assert_array_equal(gn.to_numpy(out), labels)


def test_history_records_every_field_each_epoch(digits):
    x, y = digits
    l2 = gn.L2(1e-3)
    trainer = classifier(sizes=(64, 32, 10), regularizer=l2)
    x_dev, y_dev = x[300:450], y[300:450]
    history = trainer.fit(x[:300], y[:300], epochs=5, batch_size=64, validation_data=(x_dev, y_dev), verbose=False)
    assert history is trainer.history
    assert history["epoch"] == [1, 2, 3, 4, 5]
    for record in history.records:
        assert set(record) == set(FIELDS)
        assert np.isfinite(record["cost"]) and record["objective"] > record["cost"]
        assert 0.0 <= record["train_accuracy"] <= 1.0
        assert np.isfinite(record["dev_loss"]) and 0.0 <= record["dev_accuracy"] <= 1.0
        assert record["lr"] == pytest.approx(1e-2)
        assert record["seconds"] > 0 and record["samples_per_s"] > 0
    assert history["cost"][-1] < history["cost"][0]
    assert history["train_accuracy"][-1] > history["train_accuracy"][0]
    assert history["dev_loss"][-1] < history["dev_loss"][0]
    assert history["dev_accuracy"][-1] > 0.6
    # objective = cost + ½·λ·ΣW² at the epoch's final weights
    decayed = [gn.to_numpy(p.data).astype(np.float64) for p in trainer.model.parameters() if p.decay]
    assert len(decayed) == 2  # the two weight matrices, not the biases
    penalty = 0.5 * 1e-3 * sum(float(np.sum(w**2)) for w in decayed)
    assert history.last["objective"] - history.last["cost"] == pytest.approx(penalty, rel=1e-4)
    # the dev loss recorded is the loss of the final weights on the dev set
    assert trainer.evaluate(x_dev, y_dev)["loss"] == pytest.approx(history.last["dev_loss"], abs=1e-6)


def test_without_regularizer_or_dev_set_objective_equals_cost(spiral):
    x, y = spiral
    history = classifier().fit(x, y, epochs=3, batch_size=64, verbose=False)
    assert history["objective"] == history["cost"]
    assert history["dev_loss"] == [None] * 3 and history["dev_accuracy"] == [None] * 3
    assert all(a is not None for a in history["train_accuracy"])


def test_fit_accepts_python_lists(spiral):
    x, y = spiral
    trainer = classifier()
    history = trainer.fit(x[:40].tolist(), y[:40].tolist(), epochs=2, batch_size=16, verbose=False)
    assert len(history) == 2 and np.isfinite(history.last["cost"])


def test_evaluate_accepts_one_hot_targets(spiral):
    x, y = spiral
    trainer = classifier()
    trainer.fit(x, y, epochs=5, batch_size=32, verbose=False)
    by_label = trainer.evaluate(x, y)
    by_one_hot = trainer.evaluate(x, gn.data.one_hot(y, 3))
    assert by_one_hot["loss"] == pytest.approx(by_label["loss"], rel=1e-6)
    assert by_one_hot["accuracy"] == by_label["accuracy"]


def test_validation_split_equals_the_stratified_split_given_as_validation_data(spiral):
    x, y = spiral
    (x_train, y_train), (x_dev, y_dev) = gn.data.split(x, y, fractions=(0.8, 0.2), stratify=True, seed=7)
    assert np.array_equal(np.bincount(y_dev), [12, 12, 12])
    by_split = classifier().fit(x, y, epochs=4, batch_size=32, validation_split=0.2, seed=7, verbose=False)
    explicit = classifier()
    by_data = explicit.fit(
        x_train, y_train, epochs=4, batch_size=32, validation_data=(x_dev, y_dev), seed=7, verbose=False
    )
    assert by_split["cost"] == by_data["cost"]
    assert by_split["dev_loss"] == by_data["dev_loss"]
    assert by_split["dev_accuracy"] == by_data["dev_accuracy"]
    assert explicit.evaluate(x_dev, y_dev)["loss"] == pytest.approx(by_split.last["dev_loss"], abs=1e-6)


def test_validation_data_and_split_together_are_refused(spiral):
    x, y = spiral
    with pytest.raises(ValueError, match=r"validation_data or validation_split"):
        classifier().fit(x, y, epochs=1, validation_data=(x, y), validation_split=0.2, verbose=False)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_validation_split_must_lie_strictly_between_0_and_1(spiral, fraction):
    x, y = spiral
    with pytest.raises(ValueError, match="validation_split"):
        classifier().fit(x, y, epochs=1, validation_split=fraction, verbose=False)


# ----------------------------------------------------------------------------- reproducibility


def run(data, seed, shuffle=True, epochs=3):
    x, y = data
    trainer = classifier()
    history = trainer.fit(x, y, epochs=epochs, batch_size=32, seed=seed, shuffle=shuffle, verbose=False)
    return history["cost"], weights(trainer)


def test_same_seed_reproduces_history_and_weights(spiral):
    cost_a, w_a = run(spiral, seed=3)
    cost_b, w_b = run(spiral, seed=3)
    assert cost_a == cost_b
    assert same_weights(w_a, w_b)


def test_different_seed_shuffles_differently(spiral):
    cost_a, w_a = run(spiral, seed=3)
    cost_b, w_b = run(spiral, seed=4)
    assert cost_a != cost_b
    assert not same_weights(w_a, w_b)


def test_without_shuffle_the_seed_does_not_matter(spiral):
    cost_a, w_a = run(spiral, seed=3, shuffle=False)
    cost_b, w_b = run(spiral, seed=4, shuffle=False)
    cost_c, _ = run(spiral, seed=3, shuffle=True)
    assert cost_a == cost_b and same_weights(w_a, w_b)
    assert cost_a != cost_c


# ----------------------------------------------------------------------------- early stopping


def overfitting_setup(digits, device="cpu"):
    x, y = digits
    trainer = classifier(sizes=(64, 128, 10), lr=3e-2, device=device)
    return trainer, (x[:150], y[:150]), (x[1000:1300], y[1000:1300])


def test_early_stopping_stops_and_restores_the_best_weights(device, digits):
    trainer, (x, y), dev = overfitting_setup(digits, device)
    snapshots = {}

    def snapshot(t, record):
        snapshots[record["epoch"]] = weights(t)

    patience = 3
    history = trainer.fit(
        x, y, epochs=200, batch_size=32, validation_data=dev, patience=patience, callbacks=[snapshot], verbose=False
    )
    assert len(history) < 200
    best_epoch = int(np.argmin(history["dev_loss"])) + 1
    assert len(history) == best_epoch + patience  # stopped after `patience` epochs without improvement
    assert best_epoch < len(history)
    assert same_weights(weights(trainer), snapshots[best_epoch])
    assert not same_weights(weights(trainer), snapshots[len(history)])
    assert trainer.evaluate(*dev)["loss"] == pytest.approx(min(history["dev_loss"]), abs=1e-6)


def test_early_stopping_without_restore_keeps_the_last_weights(digits):
    trainer, (x, y), dev = overfitting_setup(digits)
    snapshots = {}
    history = trainer.fit(
        x,
        y,
        epochs=200,
        batch_size=32,
        validation_data=dev,
        patience=3,
        restore_best=False,
        callbacks=[lambda t, r: snapshots.__setitem__(r["epoch"], weights(t))],
        verbose=False,
    )
    assert len(history) < 200
    assert same_weights(weights(trainer), snapshots[len(history)])
    assert trainer.evaluate(*dev)["loss"] == pytest.approx(history.last["dev_loss"], abs=1e-6)


@pytest.mark.parametrize(("patience", "error"), [(0, ValueError), (1.5, TypeError)])
def test_patience_is_checked(spiral, patience, error):
    x, y = spiral
    with pytest.raises(error, match="patience"):
        classifier().fit(x, y, epochs=1, patience=patience, verbose=False)


@pytest.mark.parametrize("graph", [False, True])
def test_a_replaced_parameter_is_trained(spiral, graph):
    """layer.W = Parameter(...) after the Trainer was made, or by a callback during a fit:
    the optimizer follows the model (else it would update the old arrays, and the model
    would silently not train), and the fit equals one that had the new weights from the start."""
    x, y = spiral

    def replaced(trainer: gn.Trainer) -> gn.Parameter:
        layer = trainer.model.layers[0]
        layer.W = gn.Parameter(np.full(layer.W.shape, 0.1, np.float32), name=layer.W.name)
        return layer.W

    before = classifier()
    new = replaced(before)
    before.graph = graph
    before.fit(x, y, epochs=2, batch_size=64, verbose=False)
    assert before.model.layers[0].W is new and not np.all(new.data == np.float32(0.1))
    from_start = classifier()
    layer = from_start.model.layers[0]
    layer.W.data[...] = 0.1
    from_start.fit(x, y, epochs=2, batch_size=64, verbose=False)
    assert same_weights(weights(before), weights(from_start))

    during = classifier()
    during.graph = graph
    swapped = []
    during.fit(
        x,
        y,
        epochs=3,
        batch_size=64,
        callbacks=[lambda t, r: r["epoch"] == 1 and swapped.append(replaced(t))],
        verbose=False,
    )
    trained = during.model.layers[0].W
    assert trained is swapped[0] and not np.all(trained.data == np.float32(0.1))


@pytest.mark.parametrize("when", ["construction", "after", "after, then replaced"])
def test_an_optimizer_bound_to_part_of_the_model_is_widened_with_a_warning(spiral, when):
    """The Trainer trains the whole model: a binding to part of it (at construction, after it,
    or with one of its parameters replaced since) is widened to all of it, with a warning,
    and the fit equals a plain layered loop, bit for bit."""
    x, y = spiral
    model = gn.mlp([2, 16, 3], seed=0)
    last = model.layers[-1]
    partial = [last.W, last.b]
    optimizer = gn.optim.Adam(partial if when == "construction" else None, lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), optimizer, device="cpu")
        if when != "construction":
            optimizer.bind(partial)
        if when == "after, then replaced":
            last.W = gn.Parameter(last.W.data.copy())
        trainer.fit(x, y, epochs=2, batch_size=64, verbose=False)
    warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    messages = [str(w.message) for w in warned]
    among = 1 if when == "after, then replaced" else 2
    assert len(messages) == 1 and f"bound to 2 parameters, {among} of them among the model's 4" in messages[0]
    assert warned[0].filename == __file__  # the caller's line, whether the constructor or fit widened it
    assert len(optimizer.params) == 4
    twin = gn.mlp([2, 16, 3], seed=0)
    twin_opt = gn.optim.Adam(twin.parameters(), lr=1e-2)
    loss = gn.SoftmaxWithLoss()
    for epoch in range(2):
        for xb, yb in gn.data.batches(x.astype(np.float32), y, 64, shuffle=True, seed=0, epoch=epoch):
            loss.forward(twin.forward(xb), yb)
            twin.backward(loss.backward(), input_grad=False)
            twin_opt.step()
    assert same_weights(weights(trainer), [gn.to_numpy(p.data) for p in twin.parameters()])


def test_a_trainer_trains_its_whole_model_whatever_other_model_the_optimizer_was_bound_to(spiral):
    """Bound at construction to another model sharing some layers (6 parameters, 4 here):
    the Trainer binds the optimizer to its model, keeping the shared layers' state."""
    x, y = spiral
    base = gn.mlp([2, 16, 16, 3], seed=0)
    optimizer = gn.optim.Adam(base.parameters(), lr=1e-2)
    base.layers[0].W.grad[...] = 1.0
    optimizer.step()
    moments = optimizer.state_dict()["state"]["0.W"]["exp_avg"].copy()
    model = gn.Sequential([base.layers[0], gn.Linear(16, 3, seed=1)])
    with pytest.warns(RuntimeWarning, match="bound to 6 parameters, 2 of them among the model's 4"):
        trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), optimizer, device="cpu")
    assert all(a is b for a, b in zip(optimizer.params, model.parameters(), strict=True))
    np.testing.assert_array_equal(optimizer.state_dict()["state"]["0.W"]["exp_avg"], moments)
    before = weights(trainer)
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=False)
    assert all(not np.array_equal(a, b) for a, b in zip(before, weights(trainer), strict=True))


@pytest.mark.parametrize("copy", [None, "deepcopy", "pickle"])
@pytest.mark.parametrize("change", ["new model", "deeper head", "layer removed", "layer appended"])
def test_a_changed_model_is_trained_whole(spiral, change, copy):
    """The Trainer bound the optimizer to its whole model: whatever the model becomes between
    fits (in the Trainer or in a copy of it), the next fit trains all of it, with the state of
    the parameters that stay, and without a warning: its own binding is no partial one."""
    import copy as copying  # noqa: PLC0415
    import pickle  # noqa: PLC0415

    x, y = spiral
    trainer = classifier(sizes=(2, 16, 3))
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=False)
    if copy == "deepcopy":
        trainer = copying.deepcopy(trainer)
    elif copy == "pickle":
        trainer = pickle.loads(pickle.dumps(trainer))
    layers = trainer.model.layers
    if change == "new model":
        trainer.model = gn.mlp([2, 16, 16, 3], seed=3)
    elif change == "deeper head":
        layers[1:] = [gn.Linear(16, 8, activation="relu", seed=3), gn.Linear(8, 3, seed=4)]
    elif change == "layer removed":
        layers[:] = [gn.Linear(2, 3, seed=3)]
    else:
        layers += [gn.ReLU(), gn.Linear(3, 3, seed=3)]
    if change != "new model":
        trainer.model = gn.Sequential(layers)
    before = weights(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.fit(x, y, epochs=2, initial_epoch=1, batch_size=64, verbose=False)
    assert len(trainer.optimizer.params) == len(trainer.model.parameters())
    assert all(not np.array_equal(a, b) for a, b in zip(before, weights(trainer), strict=True))
    assert [p.name for p in trainer.model.parameters()] == [n for n, _ in trainer.model.named_parameters()]


def test_a_parameter_replaced_before_the_trainer_keeps_its_place_s_name_and_the_others_state(spiral, tmp_path):
    x, y = spiral
    model = gn.mlp([2, 16, 3], seed=0)
    optimizer = gn.optim.Adam(model.parameters(), lr=1e-2)
    model.layers[1].W.grad[...] = 1.0
    optimizer.step()
    moments = optimizer.state_dict()["state"]["1.W"]["exp_avg"].copy()
    model.layers[0].W = gn.Parameter(np.full((2, 16), 0.1, np.float32))  # unnamed
    trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), optimizer, device="cpu")
    assert model.layers[0].W.name == "0.W"
    np.testing.assert_array_equal(optimizer.state_dict()["state"]["1.W"]["exp_avg"], moments)
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=False)
    gn.save(tmp_path / "m.safetensors", model, optimizer)
    assert gn.checkpoint.read(tmp_path / "m.safetensors", "cpu").optimizer().step_count == optimizer.step_count


@pytest.mark.parametrize(
    "change",
    [
        "another optimizer",
        "repacked",
        "regularizer",
        "penalty",
        "betas",
        "nesterov",
        "slope",
        "nested slope",
        "layer slope",
        "dropout",
    ],
)
def test_a_callback_changing_the_optimizer_s_buffers_recaptures_the_step_graph(spiral, change):
    """With graph=True the captured step holds the optimizer and its buffers: a callback that
    puts another optimizer in, or repacks the model (new flat and state arrays), or changes a
    value the step took at capture, gets a new capture at the next epoch, and the fit equals
    the same fit without a graph."""
    x, y = spiral
    runs = []
    for graph in (True, False):
        trainer = classifier(
            regularizer=gn.L2(1e-3) if change == "penalty" else None,
            optimizer=gn.optim.Momentum(lr=0.05) if change == "nesterov" else None,
        )
        if change == "slope":
            trainer.model = gn.mlp([2, 16, 3], activation="leaky_relu", seed=0)
            trainer.optimizer.bind(trainer.model.parameters())
        elif change in ("nested slope", "layer slope"):
            inner = gn.mlp([2, 16, 16], activation="leaky_relu", seed=0)
            trainer.model = gn.Sequential([inner, gn.LeakyReLU(), gn.Linear(16, 3, seed=1)])
            trainer.optimizer.bind(trainer.model.parameters())
        trainer.graph = graph
        graphs: list = []

        def change_it(t, record, graphs=graphs):
            graphs.append(t._step_graph)
            if record["epoch"] != 1:
                return
            if change == "another optimizer":
                t.optimizer = gn.optim.Adam(t.model.parameters(), lr=1e-2)
            elif change == "repacked":
                FlatParameters(t.model.parameters(), t.model.device)
            elif change == "regularizer":
                t.regularizer = gn.L2(1e-3)
            elif change == "penalty":
                t.regularizer.lam = 2e-3
            elif change == "betas":  # a launch argument of the captured update, unlike lr
                t.optimizer.betas = (0.8, 0.99)
            elif change == "nesterov":
                t.optimizer.nesterov = True
            elif change == "slope":  # a Linear layer's activation
                t.model.layers[0].negative_slope = 0.3
            elif change == "nested slope":  # inside a nested Sequential
                t.model.layers[0].layers[0].negative_slope = 0.3
            elif change == "layer slope":  # an activation layer's
                t.model.layers[1].negative_slope = 0.3
            else:  # a Dropout cannot be replayed: the fit goes on eagerly, with a warning
                layers = t.model.layers
                t.model = gn.Sequential([*layers[:2], gn.Dropout(0.5, seed=0), *layers[2:]])

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(x, y, epochs=3, batch_size=64, callbacks=[change_it], verbose=False)
        eager = [w for w in caught if "training eagerly" in str(w.message)]
        if graph and change == "dropout":
            assert graphs[0] is not None and graphs[1] is None and len(eager) == 1
        elif graph:
            assert graphs[0] is not graphs[1] and graphs[1] is graphs[2]
            assert graphs[1].optimizer is trainer.optimizer  # captured around the optimizer in use
        runs.append(weights(trainer))
    assert same_weights(*runs)


def test_a_parameter_bound_by_hand_takes_its_place_s_name(spiral, tmp_path):
    """Replaced, then bound by hand with the others: no rebinding is needed, but the newcomer
    still gets its place's name, so that a checkpoint of the optimizer reads back."""
    x, y = spiral
    trainer = classifier()
    layer = trainer.model.layers[0]
    layer.W = gn.Parameter(layer.W.data.copy())  # unnamed
    trainer.optimizer.bind(trainer.model.parameters())
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=False)
    assert layer.W.name == "0.W"
    gn.save(tmp_path / "m.safetensors", trainer.model, trainer.optimizer)
    assert gn.checkpoint.read(tmp_path / "m.safetensors", "cpu").optimizer().step_count == trainer.optimizer.step_count


class _RunningStat(gn.Layer):
    """A parameter-free custom layer that keeps a changing array under the name ``p``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = np.zeros(2)

    def forward(self, x):
        self.p = self.p + 1.0
        return x

    def backward(self, dy):
        return dy


@pytest.mark.parametrize("case", ["eval before fit", "custom layer"])
def test_a_plain_graph_fit_captures_once(spiral, monkeypatch, case):
    """Nothing that changes in a normal fit (the mode fit sets, a custom layer's own
    attributes) may count as a change of the captured step: on a GPU each capture costs."""
    import gpunn.train.graph  # noqa: PLC0415

    captures = []

    class Counting(gpunn.train.graph.StepGraph):
        def __init__(self, *args, **kwargs) -> None:
            captures.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gpunn.train.graph, "StepGraph", Counting)
    x, y = spiral
    trainer = classifier()
    if case == "custom layer":
        layers = trainer.model.layers
        trainer.model = gn.Sequential([*layers[:2], _RunningStat(), *layers[2:]])
    trainer.model.eval()
    trainer.graph = True
    trainer.fit(x, y, epochs=3, batch_size=64, verbose=False)
    assert len(captures) == 1


def test_an_unnamed_replacement_takes_its_place_s_name_and_checkpoints_resume(spiral, tmp_path):
    x, y = spiral
    trainer = classifier()
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=False)
    layer = trainer.model.layers[0]
    layer.W = gn.Parameter(np.full(layer.W.shape, 0.1, np.float32))  # no name
    trainer.fit(x, y, epochs=2, initial_epoch=1, batch_size=64, verbose=False)
    assert layer.W.name == "0.W"
    assert sorted(trainer.optimizer.state_dict()["state"]) == ["0.W", "0.b", "1.W", "1.b"]
    gn.save(tmp_path / "m.safetensors", trainer.model, trainer.optimizer)
    ckpt = gn.checkpoint.read(tmp_path / "m.safetensors", "cpu")  # its moments are compared with NumPy
    restored = ckpt.optimizer()
    assert restored.step_count == trainer.optimizer.step_count
    for key, state in trainer.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            np.testing.assert_array_equal(restored.state_dict()["state"][key][name], value)


def test_best_weights_are_restored_by_parameter_after_a_replacement_changed_the_layout(digits):
    """After each new best epoch, the next epoch's callback replaces a bias with a Parameter
    that flips its ``decay``, which moves it in the flat buffer: the best epoch's weights,
    copied before the move, must still go back where they came from."""
    trainer, (x, y), dev = overfitting_setup(digits, "cpu")
    snapshots, seen, replaced_at = {}, {"best": np.inf, "armed": False}, []

    def snapshot_and_replace(t, record):
        snapshots[record["epoch"]] = weights(t)
        if record["dev_loss"] < seen["best"]:
            seen.update(best=record["dev_loss"], armed=True)
        elif seen["armed"]:
            seen["armed"] = False
            replaced_at.append(record["epoch"])
            layer = t.model.layers[0]
            layer.b = gn.Parameter(layer.b.data.copy(), name=layer.b.name, decay=not layer.b.decay)

    history = trainer.fit(
        x,
        y,
        epochs=200,
        batch_size=32,
        validation_data=dev,
        patience=3,
        callbacks=[snapshot_and_replace],
        verbose=False,
    )
    best_epoch = int(np.argmin(history["dev_loss"])) + 1
    assert len(history) == best_epoch + 3
    assert best_epoch + 1 in replaced_at  # the layout changed after the best epoch's copy
    assert same_weights(weights(trainer), snapshots[best_epoch])


# ----------------------------------------------------------------------------- callbacks, resuming


def test_callbacks_are_called_once_per_epoch_with_trainer_and_record(spiral):
    x, y = spiral
    trainer = classifier()
    calls = []
    history = trainer.fit(
        x, y, epochs=4, batch_size=64, callbacks=[lambda t, r: calls.append((t, dict(r)))], verbose=False
    )
    assert len(calls) == 4
    assert all(t is trainer for t, _ in calls)
    assert [r["epoch"] for _, r in calls] == [1, 2, 3, 4]
    for (_, record), stored in zip(calls, history.records, strict=True):
        assert record == stored


def test_a_callback_can_stop_training(spiral):
    x, y = spiral
    trainer = classifier()

    def stop_at_2(t, record):
        if record["epoch"] == 2:
            t.stop_training = True

    calls = []
    history = trainer.fit(
        x, y, epochs=10, batch_size=64, callbacks=[stop_at_2, lambda t, r: calls.append(r)], verbose=False
    )
    assert history["epoch"] == [1, 2]
    assert len(calls) == 2  # every callback still runs for the stopping epoch
    # the flag does not leak into the next fit
    history = trainer.fit(x, y, epochs=3, batch_size=64, verbose=False)
    assert len(history) == 5


def test_initial_epoch_continues_the_numbering_and_resumes_exactly(spiral):
    x, y = spiral
    straight = classifier()
    straight.fit(x, y, epochs=4, batch_size=32, verbose=False)

    resumed = classifier()
    first = resumed.fit(x, y, epochs=2, batch_size=32, verbose=False)
    assert first["epoch"] == [1, 2]
    history = resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=32, verbose=False)
    assert history is first  # fit extends the same History
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["cost"] == straight.history["cost"]
    assert same_weights(weights(resumed), weights(straight))


def test_fit_twice_extends_the_history_and_continues_the_epoch_count(spiral):
    x, y = spiral
    trainer = classifier()
    trainer.fit(x, y, epochs=2, batch_size=64, verbose=False)
    costs = list(trainer.history["cost"])
    history = trainer.fit(x, y, epochs=3, batch_size=64, verbose=False)  # 3 more epochs, as in Keras
    assert len(history) == 5
    assert history["cost"][:2] == costs
    assert history["epoch"] == [1, 2, 3, 4, 5]  # the learning curve goes on, not back to epoch 1
    # the second fit's epochs are epochs 3 to 5 of one fit: the same shuffles, the same numbers
    straight = classifier()
    straight.fit(x, y, epochs=5, batch_size=64, verbose=False)
    assert history["cost"] == straight.history["cost"]
    assert same_weights(weights(trainer), weights(straight))


def test_fit_after_a_fresh_history_counts_from_one(spiral):
    x, y = spiral
    trainer = classifier()
    trainer.fit(x, y, epochs=2, batch_size=64, verbose=False)
    trainer.history = gn.History()  # the user starts a new curve
    assert trainer.fit(x, y, epochs=2, batch_size=64, verbose=False)["epoch"] == [1, 2]


def test_initial_epoch_at_epochs_trains_nothing(spiral):
    x, y = spiral
    trainer = classifier()
    before = weights(trainer)
    history = trainer.fit(x, y, epochs=2, initial_epoch=2, verbose=False)
    assert len(history) == 0
    assert same_weights(weights(trainer), before)


def test_initial_epoch_past_epochs_or_before_the_history_is_refused(spiral):
    """fit(epochs=2, initial_epoch=3) reads epochs as "more" (a plain fit's meaning) and would train
    nothing; an initial_epoch before the history's last epoch would number epochs twice."""
    x, y = spiral
    trainer = classifier()
    before = weights(trainer)
    with pytest.raises(ValueError, match=r"initial_epoch \(3\) is past epochs \(2\).*fit\(epochs=5, initial_epoch=3\)"):
        trainer.fit(x, y, epochs=2, initial_epoch=3, verbose=False)
    assert same_weights(weights(trainer), before)
    trainer.fit(x, y, epochs=3, batch_size=64, verbose=False)
    with pytest.raises(ValueError, match=r"initial_epoch \(1\) is before the last epoch of the history \(3\)"):
        trainer.fit(x, y, epochs=5, initial_epoch=1, verbose=False)
    assert trainer.history["epoch"] == [1, 2, 3]
    assert trainer.fit(x, y, epochs=4, initial_epoch=3, batch_size=64, verbose=False)["epoch"] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- divergence


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_infinite_loss_stops_training_naming_epoch_and_step():
    rng = np.random.default_rng(0)
    x = (100.0 * rng.standard_normal((256, 3))).astype(np.float32)
    y = x @ np.ones((3, 1), dtype=np.float32)
    trainer = gn.Trainer(gn.mlp([3, 1], seed=0), gn.MSELoss(), gn.optim.SGD(lr=10.0), device="cpu")
    with pytest.raises(gn.TrainingDivergedError, match=r"epoch 1, step \d+ of 8") as info:
        trainer.fit(x, y, epochs=3, batch_size=32, verbose=False)
    assert isinstance(info.value, FloatingPointError)
    assert "inf" in str(info.value) or "nan" in str(info.value)
    assert len(trainer.history) == 0  # the diverged epoch is not recorded


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_blow_up_in_the_last_update_of_an_epoch_stops_the_fit_before_the_epoch_counts(tmp_path, digits):
    """A step's loss is taken before its update: with one step per epoch, the update that makes
    the weights NaN would otherwise be recorded as a good epoch, saved by a callback and restored
    as the best one."""
    x, y = digits
    trainer = gn.Trainer(gn.mlp([64, 32, 10], seed=1), gn.SoftmaxWithLoss(), gn.optim.SGD(lr=1e300), device="cpu")
    before = weights(trainer)
    saved = []

    def save(t, record):
        saved.append(record["epoch"])
        gn.save(tmp_path / "last.safetensors", t.model, t.optimizer)

    with pytest.raises(
        gn.TrainingDivergedError,
        match=r"weights became NaN or infinite in the last update of epoch 1 "
        r"\(step 1 of 1\).*restored the weights and optimizer state the fit started from",
    ):
        trainer.fit(x, y, epochs=2, batch_size=len(x), callbacks=[save], verbose=False)  # fmt: skip
    assert saved == [] and len(trainer.history) == 0
    assert same_weights(weights(trainer), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_resets_a_state_buffer_made_since_the_best_epoch(digits):
    """A callback switches momentum on after epoch 1 (its buffer is made at the next step) and the
    loss diverges in epoch 2: the restored state is epoch 1's, the new buffer zeros as it was then."""
    x, y = digits
    trainer = gn.Trainer(gn.mlp([64, 16, 10], seed=0), gn.SoftmaxWithLoss(), gn.optim.SGD(lr=0.01), device="cpu")

    def blow_up(t, record):
        t.optimizer.momentum, t.optimizer.lr = 0.9, 1e30

    with pytest.raises(gn.TrainingDivergedError, match="restored the weights and optimizer state of epoch 1"):
        trainer.fit(x[:256], y[:256], epochs=3, batch_size=32, callbacks=[blow_up], verbose=False)
    assert trainer.optimizer.step_count == 8  # epoch 1's eight steps
    for buffer in trainer.optimizer.state.values():
        assert not buffer.any()


def test_a_nan_parameter_is_caught_at_the_next_step(device, digits):
    x, y = digits

    def poison(t, record):
        if record["epoch"] == 1:
            t.model.parameters()[0].data[0, 0] = np.nan

    trainer = classifier(sizes=(64, 16, 10), device=device)
    with pytest.raises(gn.TrainingDivergedError) as info:
        trainer.fit(x[:200], y[:200], epochs=3, batch_size=50, callbacks=[poison], verbose=False)
    assert "epoch 2, step 1" in str(info.value)
    assert "nan" in str(info.value)
    assert trainer.history["epoch"] == [1]


# ----------------------------------------------------------------------------- bad input


def test_wrong_number_of_features_names_the_first_layer(spiral):
    x, y = spiral
    trainer = classifier()
    with pytest.raises(ValueError, match=r"x has 3 features.*first layer.*Linear\(2 → 16, relu\).*expects 2"):
        trainer.fit(np.c_[x, x[:, :1]], y, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"x has 1 features"):
        trainer.evaluate(x[:, :1], y)
    with pytest.raises(ValueError, match=r"x has 1 features"):
        trainer.predict(x[:, :1])
    with pytest.raises(ValueError, match=r"x_dev has 1 features"):
        trainer.fit(x, y, epochs=1, validation_data=(x[:, :1], y), verbose=False)


def test_x_and_y_of_different_lengths(spiral):
    x, y = spiral
    with pytest.raises(ValueError, match=r"different numbers of samples.*\(180, 2\).*\(179,\)"):
        classifier().fit(x, y[:-1], epochs=1, verbose=False)
    with pytest.raises(ValueError, match="different numbers of samples"):
        classifier().evaluate(x[:10], y[:11])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_x_names_the_row(spiral, bad):
    x, y = spiral
    x = x.copy()
    x[17, 1] = bad
    x[40, 0] = bad
    trainer = classifier()
    with pytest.raises(ValueError, match=r"x contains NaN or infinity \(first in row 17\)"):
        trainer.fit(x, y, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"x_dev contains NaN.*row 17"):
        trainer.fit(spiral[0], y, epochs=1, validation_data=(x, y), verbose=False)
    with pytest.raises(ValueError, match=r"row 17"):
        trainer.evaluate(x, y)


def test_labels_out_of_range_are_refused(spiral):
    x, y = spiral
    trainer = classifier()
    high = y.copy()
    high[5] = 3
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\).*max 3"):
        trainer.fit(x, high, epochs=1, verbose=False)
    low = y.copy()
    low[5] = -1
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\).*min -1"):
        trainer.evaluate(x, low)
    with pytest.raises(ValueError, match=r"y_dev holds labels outside"):
        trainer.fit(x, y, epochs=1, validation_data=(x, high), verbose=False)


def test_float_labels_are_refused_for_softmax(spiral):
    x, y = spiral
    with pytest.raises(TypeError, match=r"y must hold integer class labels.*float"):
        classifier().fit(x, y.astype(np.float32), epochs=1, verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"epochs": -1}, ValueError, "epochs"),
        ({"epochs": 2.5}, TypeError, "epochs"),
        ({"epochs": True}, TypeError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": "32"}, TypeError, "batch_size"),
        ({"initial_epoch": -1}, ValueError, "initial_epoch"),
        ({"seed": -1}, ValueError, "seed"),
        ({"validation_data": "dev"}, TypeError, "validation_data must be a pair"),
    ],
)
def test_fit_arguments_are_checked(spiral, kwargs, error, name):
    x, y = spiral
    with pytest.raises(error, match=name):
        classifier().fit(x, y, verbose=False, **kwargs)


def test_validation_data_must_be_a_pair(spiral):
    x, y = spiral
    trainer = classifier()
    for bad in [(x,), (x, y, y), x]:
        with pytest.raises(TypeError, match=r"validation_data must be a pair \(x_dev, y_dev\)"):
            trainer.fit(x, y, epochs=1, validation_data=bad, verbose=False)
    assert len(trainer.history) == 0


def test_x_must_be_a_2d_numeric_array(spiral):
    x, y = spiral
    trainer = classifier()
    with pytest.raises(ValueError, match=r"x must have shape \(N, features\)"):
        trainer.fit(x[:, 0], y, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="x must be an array"):
        trainer.fit("data", y, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        trainer.fit(x.astype(str), y, epochs=1, verbose=False)


def test_evaluate_checks_batch_size(spiral):
    x, y = spiral
    with pytest.raises(ValueError, match="batch_size"):
        classifier().evaluate(x, y, batch_size=0)


# ----------------------------------------------------------------------------- the loss's validate flag


@pytest.mark.parametrize("initial", [True, False])
def test_loss_validate_is_restored_after_fit_and_evaluate(spiral, initial):
    x, y = spiral
    loss = gn.SoftmaxWithLoss(validate=initial)
    trainer = classifier(loss=loss)
    trainer.fit(x, y, epochs=2, batch_size=64, validation_data=(x, y), verbose=False)
    assert loss.validate is initial
    trainer.evaluate(x, y)
    assert loss.validate is initial

    def fail(t, record):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        trainer.fit(x, y, epochs=2, callbacks=[fail], verbose=False)
    assert loss.validate is initial

    def poison(t, record):
        t.model.parameters()[0].data[...] = np.nan

    with pytest.raises(gn.TrainingDivergedError):
        trainer.fit(x, y, epochs=2, callbacks=[poison], verbose=False)
    assert loss.validate is initial


# ----------------------------------------------------------------------------- regression and binary


def test_mse_regression_reports_loss_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)).astype(np.float32)
    trainer = gn.Trainer(gn.mlp([3, 16, 1], seed=0), gn.MSELoss(), gn.optim.Adam(lr=1e-2), device="cpu")
    history = trainer.fit(x, y, epochs=10, batch_size=32, validation_split=0.2, verbose=False)
    assert history["train_accuracy"] == [None] * 10
    assert history["dev_accuracy"] == [None] * 10
    assert all(v is not None for v in history["dev_loss"])
    assert history["cost"][-1] < 0.5 * history["cost"][0]

    result = trainer.evaluate(x, y)
    assert set(result) == {"loss"}
    prediction = trainer.predict(x)
    assert isinstance(prediction, np.ndarray) and prediction.shape == (200, 1)
    np.testing.assert_array_equal(prediction, trainer.predict_output(x))
    expected = 0.5 * np.mean(np.sum((prediction.astype(np.float64) - y) ** 2, axis=1))
    assert result["loss"] == pytest.approx(expected, rel=1e-4)


def binary_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def binary_trainer():
    return gn.Trainer(gn.mlp([3, 16, 1], seed=0), gn.SigmoidBCELoss(), gn.optim.Adam(lr=1e-2), device="cpu")


def test_sigmoid_bce_binary_classification_gets_accuracy():
    x, y = binary_data()
    trainer = binary_trainer()
    history = trainer.fit(x, y, epochs=10, batch_size=32, validation_split=0.2, verbose=False)
    assert all(a is not None for a in history["train_accuracy"] + history["dev_accuracy"])
    assert history.last["train_accuracy"] > 0.9
    result = trainer.evaluate(x, y)
    assert set(result) == {"loss", "accuracy"}
    p = trainer.predict_proba(x).astype(np.float64)[:, 0]
    assert np.all((p > 0) & (p < 1))
    expected_loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert result["accuracy"] == pytest.approx(float(np.mean((p > 0.5) == y)))


def test_sigmoid_bce_predict_returns_one_label_per_sample():
    # Trainer.predict's docstring: "Predicted class labels (N,) for classifiers".
    x, y = binary_data()
    trainer = binary_trainer()
    trainer.fit(x, y, epochs=2, batch_size=32, verbose=False)
    labels = trainer.predict(x)
    assert labels.shape == y.shape
    assert set(np.unique(labels)) <= {0, 1}


def test_sigmoid_bce_targets_outside_0_1_are_refused():
    # The Trainer turns the loss's own target check off ("labels were checked once above"),
    # so it must check SigmoidBCELoss targets itself; SigmoidBCELoss alone refuses them.
    x, _ = binary_data()
    y = np.arange(200) % 3  # 0, 1, 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gn.SigmoidBCELoss().forward(x[:, :1], y)
    trainer = binary_trainer()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        trainer.fit(x, y, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        trainer.evaluate(x, y)


# ----------------------------------------------------------------------------- empty input


def test_fit_on_empty_data_raises_a_clear_value_error(spiral):
    x, y = spiral
    with pytest.raises(ValueError, match="x"):
        classifier().fit(x[:0], y[:0], epochs=1, verbose=False)


def test_evaluate_on_empty_data_raises_a_clear_value_error(spiral):
    x, y = spiral
    with pytest.raises(ValueError, match="x"):
        classifier().evaluate(x[:0], y[:0])


def test_predict_proba_on_empty_input(spiral):
    x, _ = spiral
    trainer = classifier()
    try:
        proba = trainer.predict_proba(x[:0])
    except ValueError:
        return  # refusing empty input is fine too
    assert proba.shape == (0, 3)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_predict_checks_batch_size(spiral, batch_size):
    # batch_size=-1 currently returns an empty prediction for 180 samples, silently
    x, _ = spiral
    with pytest.raises(ValueError, match="batch_size"):
        classifier().predict(x, batch_size=batch_size)


# ----------------------------------------------------------------------------- progress


def test_verbose_progress_shows_loss_and_throughput(spiral):
    x, y = spiral
    out = io.StringIO()
    classifier().fit(x, y, epochs=3, batch_size=64, validation_split=0.2, verbose=True, progress_file=out)
    text = out.getvalue()
    assert "loss=" in text
    assert "samples/s" in text
    assert "acc=" in text and "dev_acc=" in text
    assert "3/3" in text


def test_quiet_fit_writes_nothing(spiral, capsys):
    x, y = spiral
    out = io.StringIO()
    classifier().fit(x, y, epochs=3, batch_size=64, verbose=False, progress_file=out)
    assert out.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ----------------------------------------------------------------------------- dropout


def test_dropout_state_round_trip_reproduces_continued_training(digits):
    x, y = digits[0][:200], digits[1][:200]

    def trainer():
        return classifier(sizes=(64, 32, 10), dropout=0.3, optimizer=gn.optim.SGD(lr=0.1))

    straight = trainer()
    straight.fit(x, y, epochs=4, batch_size=50, verbose=False)

    first = trainer()
    first.fit(x, y, epochs=2, batch_size=50, verbose=False)
    states = first.dropout_states()
    assert list(states) == ["1"]  # the Dropout layer's index in the Sequential
    saved = weights(first)

    def resume(load_states):
        resumed = trainer()
        for p, w in zip(resumed.model.parameters(), saved, strict=True):
            p.data[...] = w
        if load_states:
            resumed.load_dropout_states(states)
        resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=50, verbose=False)
        return resumed

    assert same_weights(weights(resume(True)), weights(straight))
    assert not same_weights(weights(resume(False)), weights(straight))  # the masks matter


def test_evaluate_and_predict_switch_dropout_off(digits):
    x, y = digits[0][:200], digits[1][:200]
    trainer = classifier(sizes=(64, 32, 10), dropout=0.5)
    trainer.fit(x, y, epochs=2, batch_size=50, verbose=False)
    assert trainer.evaluate(x, y) == trainer.evaluate(x, y)
    np.testing.assert_array_equal(trainer.predict_proba(x), trainer.predict_proba(x))
    assert trainer.model.training  # the mode is put back
