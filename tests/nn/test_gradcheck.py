"""Numerical gradient checks (float64, central differences) of every layer, loss and regularizer.

Each check compares a backward() with (f(a + ε) − f(a − ε)) / 2ε through ``gn.gradcheck``;
a correct backward gives a normwise relative error far below the 1e-6 we require.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn

TOL = 1e-6


def away_from_zero(a: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """``a`` with every entry moved at least ``margin`` away from 0 (off ReLU's and |·|'s kinks)."""
    return np.where(a >= 0, a + margin, a - margin)


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("activation", [None, "identity", "relu", "leaky_relu", "sigmoid", "tanh"])
def test_gradcheck_linear(device, rng, activation):
    layer = gn.Linear(4, 3, activation=activation, negative_slope=0.1, dtype="float64", seed=0).to(device)
    layer.b.data[...] = device.send(rng.standard_normal(3))
    x = device.send(rng.standard_normal((5, 4)))
    errors = gn.gradient_errors(layer, x)
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) < TOL


@pytest.mark.parametrize(
    "make",
    [
        gn.ReLU,
        lambda: gn.LeakyReLU(negative_slope=0.1),
        gn.Sigmoid,
        gn.Tanh,
        gn.Identity,
        gn.Softmax,
    ],
    ids=["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Identity", "Softmax"],
)
def test_gradcheck_activation(device, rng, make):
    x = device.send(away_from_zero(rng.standard_normal((4, 5))))
    layer = make()
    errors = gn.gradient_errors(layer, x)
    assert set(errors) == {"x"}
    assert errors["x"] < TOL


def test_gradcheck_dropout_training(device, rng):
    layer = gn.Dropout(p=0.4, seed=3).train()
    x = device.send(rng.standard_normal((6, 5)))
    assert gn.gradcheck(layer, x) < TOL
    # the check is not vacuous: the mask it used zeroed some entries and kept others
    mask = gn.to_numpy(layer._mask)
    assert (mask == 0).any()
    assert (mask != 0).any()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
def test_gradcheck_sequential(device, rng, activation):
    model = gn.mlp([4, 6, 5, 3], activation=activation, dtype="float64", seed=1).to(device)
    for p in model.parameters():
        if not p.decay:
            p.data[...] = device.send(0.1 * rng.standard_normal(p.shape))
    x = device.send(rng.standard_normal((5, 4)))
    errors = gn.gradient_errors(model, x)
    assert set(errors) == {"x", "0.W", "0.b", "1.W", "1.b", "2.W", "2.b"}
    assert max(errors.values()) < TOL


def test_gradcheck_sequential_with_relu_dropout_training(device, rng):
    model = gn.mlp([4, 6, 3], activation="relu", dtype="float64", seed=2, dropout=0.5).to(device).train()
    x = device.send(rng.standard_normal((5, 4)))
    assert gn.gradcheck(model, x) < TOL


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_gradcheck_sequential_with_saturating_activation_and_dropout(device, rng, activation):
    # Sigmoid and Tanh keep their output for backward (σ' = a(1 − a), tanh' = 1 − a²); the
    # Dropout after them must not overwrite that saved output.
    model = gn.mlp([4, 6, 3], activation=activation, dtype="float64", seed=2, dropout=0.5).to(device).train()
    x = device.send(rng.standard_normal((5, 4)))
    assert gn.gradcheck(model, x) < TOL


def test_gradcheck_nested_sequential(device, rng):
    inner = gn.Sequential(gn.Linear(4, 5, dtype="float64", seed=1), gn.Tanh(), gn.Linear(5, 2, dtype="float64", seed=2))
    model = gn.Sequential(gn.Linear(3, 4, dtype="float64", seed=0), gn.Sigmoid(), inner).to(device)
    x = device.send(rng.standard_normal((4, 3)))
    errors = gn.gradient_errors(model, x)
    # every parameter is checked under its own name, plus x
    assert len(errors) == len(model.parameters()) + 1
    assert max(errors.values()) < TOL


# ----------------------------------------------------------------------------- losses


def test_gradcheck_softmax_with_loss_int_labels(device, rng):
    logits = device.send(rng.standard_normal((6, 4)))
    t = device.send(np.array([0, 3, 1, 2, 3, 0]))
    assert gn.gradcheck(gn.SoftmaxWithLoss(), (logits, t)) < TOL


def test_gradcheck_softmax_with_loss_one_hot(device, rng):
    logits = device.send(rng.standard_normal((6, 4)))
    t = device.send(np.eye(4)[[0, 3, 1, 2, 3, 0]])
    assert gn.gradcheck(gn.SoftmaxWithLoss(), (logits, t)) < TOL


def test_gradcheck_softmax_with_loss_soft_targets(device, rng):
    logits = device.send(rng.standard_normal((5, 3)))
    p = rng.random((5, 3))
    t = device.send(p / p.sum(axis=1, keepdims=True))
    assert gn.gradcheck(gn.SoftmaxWithLoss(), (logits, t)) < TOL


@pytest.mark.parametrize("shape", [(6, 3), (6,)])
def test_gradcheck_mse(device, rng, shape):
    y = device.send(rng.standard_normal(shape))
    t = device.send(rng.standard_normal(shape))
    assert gn.gradcheck(gn.MSELoss(), (y, t)) < TOL


def test_gradcheck_sigmoid_bce(device, rng):
    logits = device.send(3.0 * rng.standard_normal((6, 2)))
    t = device.send(rng.random((6, 2)))  # soft targets in [0, 1]
    assert gn.gradcheck(gn.SigmoidBCELoss(), (logits, t)) < TOL


def test_gradcheck_sigmoid_bce_hard_targets(device, rng):
    logits = device.send(rng.standard_normal(8))
    t = device.send(rng.integers(0, 2, 8).astype(np.float64))
    assert gn.gradcheck(gn.SigmoidBCELoss(), (logits, t)) < TOL


# ----------------------------------------------------------------------------- regularizers


def test_gradcheck_l2_on_parameters(device, rng):
    params = [
        gn.Parameter(device.send(rng.standard_normal((3, 4))), "W"),
        gn.Parameter(device.send(rng.standard_normal(4)), "b", decay=False),
    ]
    errors = gn.gradient_errors(gn.L2(0.3), params)
    assert errors["W"] < TOL
    assert errors["b"] == 0.0  # biases are not penalized: zero analytic and numerical gradient


def test_gradcheck_l1_on_parameters(device, rng):
    params = [
        gn.Parameter(device.send(away_from_zero(rng.standard_normal((3, 4)))), "W"),
        gn.Parameter(device.send(away_from_zero(rng.standard_normal((2, 3)))), "V"),
    ]
    assert gn.gradcheck(gn.L1(0.2), params) < TOL


@pytest.mark.parametrize("reg", [gn.L2(0.5), gn.L1(0.5)], ids=["L2", "L1"])
def test_gradcheck_regularizer_on_model(device, rng, reg):
    model = gn.mlp([3, 4, 2], dtype="float64", seed=0).to(device)
    for p in model.parameters():
        p.data[...] = device.send(away_from_zero(rng.standard_normal(p.shape)))
    errors = gn.gradient_errors(reg, model)
    assert set(errors) == {"0.W", "0.b", "1.W", "1.b"}
    assert max(errors.values()) < TOL


# ----------------------------------------------------------------------------- a whole objective


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_gradcheck_three_layer_model_with_l2(device, rng, activation):
    """Obj = SoftmaxWithLoss(model(x), t) + L2(W), differentiated w.r.t. every parameter."""
    model = gn.mlp([5, 7, 6, 3], activation=activation, dtype="float64", seed=4).to(device)
    for p in model.parameters():
        if not p.decay:
            p.data[...] = device.send(0.1 * rng.standard_normal(p.shape))
    criterion = gn.SoftmaxWithLoss()
    reg = gn.L2(0.05)
    x = device.send(rng.standard_normal((8, 5)))
    t = device.send(rng.integers(0, 3, 8))
    params = model.parameters()

    def objective(*arrays):
        logits = model.forward(x)
        value = criterion.forward(logits, t) + reg.forward(model)
        model.backward(criterion.backward())
        reg.backward(model)
        return float(value), [p.grad for p in params]

    errors = gn.gradient_errors(objective, [p.data for p in params])
    assert len(errors) == 6
    assert max(errors.values()) < TOL


def test_gradcheck_detects_a_wrong_gradient(rng):
    """The checker itself must fail a wrong backward (here: the L2 gradient off by a factor 2)."""
    w = rng.standard_normal((3, 3))

    def half_l2(a):
        return 0.5 * float((a * a).sum()), [2.0 * a]

    assert gn.gradcheck(half_l2, [w]) > 0.4

    def correct(a):
        return 0.5 * float((a * a).sum()), [a.copy()]

    assert gn.gradcheck(correct, [w]) < TOL


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eps": 0}, ValueError, r"^eps must be > 0\.0, got 0\.0"),
        ({"eps": -1.0}, ValueError, r"^eps must be > 0\.0, got -1\.0"),
        ({"eps": float("nan")}, ValueError, r"^eps must be finite"),
        ({"eps": "1e-6"}, TypeError, r"^eps must be a real number"),
        ({"seed": -1}, ValueError, r"^seed must be >= 0, got -1"),
        ({"seed": 0.5}, TypeError, r"^seed must be an integer"),
    ],
)
def test_gradcheck_checks_eps_and_seed(kwargs, error, message):
    with pytest.raises(error, match=message):
        gn.gradcheck(gn.Tanh(), np.ones((2, 2)), **kwargs)


def test_gradcheck_of_a_regularizer_names_params():
    with pytest.raises(TypeError, match=r"^params must be an iterable of Parameters.*got NoneType"):
        gn.gradcheck(gn.L2(0.1), None)


def test_a_nan_gradient_is_an_infinite_error_wherever_it_sits():
    """max() over the arrays' errors would drop a NaN that is not first: a backward that writes
    NaN must not pass."""

    def f(a, b):
        return float((a**2).sum() + (b**2).sum()), [2 * a, np.full_like(b, np.nan)]

    rng = np.random.default_rng(0)
    errors = gn.nn.gradcheck.gradient_errors(f, [rng.standard_normal(3), rng.standard_normal(3)])
    assert errors["inputs[0]"] < 1e-7 and errors["inputs[1]"] == np.inf
    assert gn.gradcheck(f, [rng.standard_normal(3), rng.standard_normal(3)]) == np.inf


def test_a_regularizer_check_covers_parameters_that_share_a_name():
    class TripledFirst(gn.L2):
        def backward(self, params):
            super().backward(params)
            params[0].grad[...] *= 3  # wrong for the first layer's W only

    first, second = gn.Linear(3, 4, dtype="float64", seed=0), gn.Linear(4, 2, dtype="float64", seed=1)
    params = first.parameters() + second.parameters()  # named W, b, W, b
    errors = gn.nn.gradcheck.gradient_errors(TripledFirst(0.1), params)
    assert sorted(errors) == ["params[0]", "params[1]", "params[2]", "params[3]"]
    assert errors["params[0]"] > 0.4 and gn.gradcheck(TripledFirst(0.1), params) > 0.4


def test_nothing_to_check_is_named():
    with pytest.raises(ValueError, match="gradcheck: inputs hold no arrays to check"):
        gn.gradcheck(gn.L2(0.1), [])
