"""Layers, activations, Sequential and mlp: forward values against independent NumPy formulas,
backward bookkeeping, caller arrays left alone, parameters and initialization."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend.selection import ops_of

ACTIVATION_FORMULAS = {  # g(z) and g'(z), written out plainly in float64
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.2 * z), lambda z: np.where(z > 0, 1.0, 0.2)),
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2),
    "tanh": (np.tanh, lambda z: 1.0 / np.cosh(z) ** 2),
    "identity": (lambda z: z, np.ones_like),
}


# ----------------------------------------------------------------------------- Linear


def test_linear_forward_is_x_at_w_plus_b(device, rng):
    layer = gn.Linear(4, 3, dtype="float64", seed=0).to(device)
    b = rng.standard_normal(3)
    layer.b.data[...] = device.send(b)
    x = rng.standard_normal((5, 4))
    y = gn.to_numpy(layer.forward(device.send(x)))
    W = gn.to_numpy(layer.W.data)
    assert y.shape == (5, 3)
    np.testing.assert_allclose(y, x @ W + b, rtol=1e-12, atol=1e-12)


def test_linear_backward_formulas(device, rng):
    layer = gn.Linear(4, 3, dtype="float64", seed=0).to(device)
    x = rng.standard_normal((5, 4))
    dy = rng.standard_normal((5, 3))
    layer.forward(device.send(x))
    dx = gn.to_numpy(layer.backward(device.send(dy)))
    W = gn.to_numpy(layer.W.data)
    np.testing.assert_allclose(gn.to_numpy(layer.W.grad), x.T @ dy, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gn.to_numpy(layer.b.grad), dy.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dy @ W.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", sorted(ACTIVATION_FORMULAS))
def test_linear_with_an_activation_is_g_of_the_affine_map(device, rng, activation):
    """a = g(x·W + b); backward dz = dy ⊙ g'(z), ∂W = xᵀ·dz, ∂b = Σ_n dz, ∂x = dz·Wᵀ."""
    g, g_prime = ACTIVATION_FORMULAS[activation]
    layer = gn.Linear(4, 3, activation=activation, negative_slope=0.2, dtype="float64", seed=0).to(device)
    b = rng.standard_normal(3)
    layer.b.data[...] = device.send(b)
    W = gn.to_numpy(layer.W.data)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    z = x @ W + b
    np.testing.assert_allclose(gn.to_numpy(layer.forward(device.send(x))), g(z), rtol=1e-12, atol=1e-14)
    dx = gn.to_numpy(layer.backward(device.send(dy)))
    dz = dy * g_prime(z)
    np.testing.assert_allclose(gn.to_numpy(layer.W.grad), x.T @ dz, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gn.to_numpy(layer.b.grad), dz.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dz @ W.T, rtol=1e-10, atol=1e-12)
    fresh = gn.Linear(4, 3, activation=activation, dtype="float64", seed=1).to(device)
    assert gn.gradcheck(fresh, device.send(x)) < 1e-6


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_linear_activation_computes_the_bits_of_the_separate_layers(rng, activation, dtype):
    """Linear(activation=g) and Linear followed by g's own layer: the same forward and
    backward bits on the CPU (one formula, through the same Ops)."""
    fused = gn.Linear(6, 5, activation=activation, negative_slope=0.3, dtype=dtype, seed=0)
    plain = gn.Linear(6, 5, dtype=dtype, seed=0)
    act = {"relu": gn.ReLU(), "leaky_relu": gn.LeakyReLU(0.3), "sigmoid": gn.Sigmoid(), "tanh": gn.Tanh()}[activation]
    fused.b.data[...] = plain.b.data[...] = rng.standard_normal(5)
    x, dy = rng.standard_normal((9, 6)).astype(dtype), rng.standard_normal((9, 5)).astype(dtype)
    np.testing.assert_array_equal(fused.forward(x), act.forward(plain.forward(x)))
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(act.backward(dy)))
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        np.testing.assert_array_equal(a.grad, b.grad)


def test_linear_activation_names_config_and_formula():
    layer = gn.Linear(3, 2, activation="logistic", seed=0)
    assert layer.activation == "sigmoid" and "sigmoid" in repr(layer)
    assert layer.config()["activation"] == "sigmoid"
    assert layer.formula(2) == "a^[2] = σ(a^[1]·W^[2] + b^[2])"
    assert gn.Linear(3, 2, seed=0).formula(1) == "z^[1] = a^[0]·W^[1] + b^[1]"
    leaky = gn.Linear(3, 2, activation="leaky_relu", negative_slope=0.3, seed=0)
    assert leaky.config()["negative_slope"] == 0.3
    with pytest.raises(ValueError, match="activation"):
        gn.Linear(3, 2, activation="softplus")
    with pytest.raises(ValueError, match="negative_slope"):
        gn.Linear(3, 2, activation="leaky_relu", negative_slope=-1.0)


def test_linear_backward_without_input_grad_still_writes_grads(rng):
    layer = gn.Linear(4, 3, dtype="float64", seed=0)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer.forward(x)
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_allclose(layer.W.grad, x.T @ dy, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_keeps_dtype(device, rng, dtype):
    layer = gn.Linear(4, 3, dtype=dtype, seed=0).to(device)
    x = device.send(rng.standard_normal((5, 4)).astype(dtype))
    y = layer.forward(x)
    dx = layer.backward(device.send(np.ones((5, 3), dtype=dtype)))
    assert y.dtype == np.dtype(dtype)
    assert dx.dtype == np.dtype(dtype)
    assert layer.W.grad.dtype == np.dtype(dtype)


def test_linear_bias_starts_at_zero_and_shapes():
    layer = gn.Linear(7, 2, seed=0)
    assert layer.W.shape == (7, 2)
    assert layer.b.shape == (2,)
    assert layer.W.data.dtype == np.float32
    assert not layer.b.data.any()
    assert layer.W.decay is True
    assert layer.b.decay is False


def test_linear_seed_is_reproducible():
    a, b, c = gn.Linear(5, 4, seed=7), gn.Linear(5, 4, seed=7), gn.Linear(5, 4, seed=8)
    np.testing.assert_array_equal(a.W.data, b.W.data)
    assert not np.array_equal(a.W.data, c.W.data)


# ----------------------------------------------------------------------------- activations


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("make", "formula"),
    [
        (gn.ReLU, lambda z: np.maximum(z, 0.0)),
        (lambda: gn.LeakyReLU(negative_slope=0.2), lambda z: np.where(z > 0, z, 0.2 * z)),
        (gn.Sigmoid, lambda z: 1.0 / (1.0 + np.exp(-z))),
        (gn.Tanh, np.tanh),
        (gn.Identity, lambda z: z),
        (gn.Softmax, _np_softmax),
    ],
    ids=["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Identity", "Softmax"],
)
def test_activation_forward_matches_formula(device, rng, make, formula):
    z = 3.0 * rng.standard_normal((6, 5))
    z_before = z.copy()
    a = gn.to_numpy(make().forward(device.send(z)))
    np.testing.assert_allclose(a, formula(z_before), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(z, z_before)  # a layer built by the user does not overwrite its input


@pytest.mark.parametrize(
    ("make", "derivative"),
    [
        (gn.ReLU, lambda z: (z > 0).astype(float)),
        (lambda: gn.LeakyReLU(negative_slope=0.2), lambda z: np.where(z > 0, 1.0, 0.2)),
        (gn.Sigmoid, lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2),
        (gn.Tanh, lambda z: 1.0 / np.cosh(z) ** 2),
        (gn.Identity, np.ones_like),
    ],
    ids=["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Identity"],
)
def test_activation_backward_matches_derivative(device, rng, make, derivative):
    z = 2.0 * rng.standard_normal((6, 5))
    dy = rng.standard_normal((6, 5))
    layer = make()
    layer.forward(device.send(z))
    dx = gn.to_numpy(layer.backward(device.send(dy)))
    np.testing.assert_allclose(dx, dy * derivative(z), rtol=1e-10, atol=1e-14)


def test_softmax_layer_backward_is_jacobian_product(rng):
    z = rng.standard_normal((3, 4))
    dy = rng.standard_normal((3, 4))
    layer = gn.Softmax()
    layer.forward(z)
    dx = layer.backward(dy)
    s = _np_softmax(z)
    for n in range(3):
        jacobian = np.diag(s[n]) - np.outer(s[n], s[n])
        np.testing.assert_allclose(dx[n], jacobian @ dy[n], rtol=1e-12, atol=1e-15)


def test_softmax_rows_sum_to_one_and_equal_exp_ratio(device, rng):
    z = 4.0 * rng.standard_normal((10, 6))
    s = gn.to_numpy(gn.softmax(device.send(z), axis=1))
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(s, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_is_stable_for_large_logits(device, dtype):
    z = device.send(np.array([[1000.0, 1001.0], [-1000.0, 0.0]], dtype=dtype))
    s = gn.to_numpy(gn.softmax(z, axis=1))
    assert np.isfinite(s).all()
    e = math.e
    np.testing.assert_allclose(s[0], [1.0 / (1.0 + e), e / (1.0 + e)], rtol=1e-6)
    np.testing.assert_allclose(s[1], [0.0, 1.0], atol=1e-7)
    s_layer = gn.to_numpy(gn.Softmax().forward(z))
    np.testing.assert_allclose(s_layer, s, rtol=1e-7)


def test_log_softmax_is_stable(device):
    z = device.send(np.array([[1000.0, 1001.0], [0.0, -1000.0]]))
    lp = gn.to_numpy(gn.log_softmax(z, axis=1))
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(lp[0], [-math.log1p(math.e), -math.log1p(math.exp(-1.0))], rtol=1e-12)
    # a confidently wrong class gets log-probability -1000, not log(0) = -inf
    np.testing.assert_allclose(lp[1], [0.0, -1000.0], atol=1e-12)


def test_log_softmax_equals_log_of_softmax(device, rng):
    z = rng.standard_normal((5, 4))
    lp = gn.to_numpy(gn.log_softmax(device.send(z), axis=1))
    np.testing.assert_allclose(lp, np.log(_np_softmax(z)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_finite_and_saturates(device, dtype):
    z = device.send(np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], dtype=dtype))
    s = gn.to_numpy(gn.sigmoid(z))
    assert np.isfinite(s).all()
    assert s.dtype == np.dtype(dtype)
    expected = [0.0, 1.0 / (1.0 + math.exp(30.0)), 0.5, 1.0 / (1.0 + math.exp(-30.0)), 1.0]
    np.testing.assert_allclose(s, expected, rtol=1e-6, atol=1e-300)
    assert s[0] < 1e-30
    assert s[-1] == 1.0


@pytest.mark.parametrize("make", [gn.ReLU, gn.LeakyReLU, gn.Sigmoid, gn.Tanh], ids=lambda m: m.__name__)
def test_activation_keeps_float32(device, rng, make):
    z = device.send(rng.standard_normal((4, 3)).astype(np.float32))
    layer = make()
    a = layer.forward(z)
    dz = layer.backward(device.send(np.ones((4, 3), np.float32)))
    assert a.dtype == np.float32
    assert dz.dtype == np.float32


# ----------------------------------------------------------------------------- Dropout


def test_dropout_eval_is_identity(device, rng):
    layer = gn.Dropout(p=0.5, seed=0).eval()
    x = device.send(rng.standard_normal((20, 10)))
    y = layer.forward(x)
    np.testing.assert_array_equal(gn.to_numpy(y), gn.to_numpy(x))
    dy = device.send(rng.standard_normal((20, 10)))
    np.testing.assert_array_equal(gn.to_numpy(layer.backward(dy)), gn.to_numpy(dy))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_train_zeroes_about_p_and_scales_the_rest(device, p):
    layer = gn.Dropout(p=p, seed=1).train()
    x = np.full((400, 250), 3.0)
    y = gn.to_numpy(layer.forward(device.send(x)))
    dropped = y == 0.0
    assert abs(dropped.mean() - p) < 0.01  # 100 000 Bernoulli draws: std ≈ 0.0016
    np.testing.assert_allclose(y[~dropped], 3.0 / (1.0 - p), rtol=1e-12)
    assert abs(y.mean() - 3.0) < 0.05  # inverted dropout preserves the mean
    np.testing.assert_array_equal(x, 3.0)  # the input was not overwritten


def test_dropout_backward_uses_the_forward_mask(device, rng):
    p = 0.3
    layer = gn.Dropout(p=p, seed=2).train()
    x = rng.standard_normal((50, 20))
    y = gn.to_numpy(layer.forward(device.send(x)))
    dy = rng.standard_normal((50, 20))
    dx = gn.to_numpy(layer.backward(device.send(dy)))
    kept = y != 0.0
    np.testing.assert_allclose(dx[kept], dy[kept] / (1.0 - p), rtol=1e-12)
    np.testing.assert_array_equal(dx[~kept], 0.0)


def test_dropout_seed_reproducible(device):
    x = device.send(np.ones((30, 30)))
    a = gn.to_numpy(gn.Dropout(0.5, seed=4).forward(x))
    b = gn.to_numpy(gn.Dropout(0.5, seed=4).forward(x))
    np.testing.assert_array_equal(a, b)


def test_dropout_zero_p_is_identity_in_training():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(gn.Dropout(p=0.0).train().forward(x), x)


def test_model_train_and_eval_switch_dropout(rng):
    model = gn.mlp([5, 50, 2], dropout=0.5, dtype="float64", seed=0)
    x = rng.standard_normal((10, 5))
    model.eval()
    assert all(not layer.training for layer in model)
    np.testing.assert_array_equal(model.forward(x), model.forward(x))  # deterministic
    model.train()
    assert all(layer.training for layer in model)
    assert not np.array_equal(model.forward(x), model.forward(x))  # fresh masks


# ----------------------------------------------------------------------------- Sequential


def _manual_mlp_grads(x, dlogits, W1, b1, W2):
    z1 = x @ W1 + b1
    a1 = np.maximum(z1, 0.0)
    dW2 = a1.T @ dlogits
    db2 = dlogits.sum(axis=0)
    dz1 = (dlogits @ W2.T) * (z1 > 0)
    return {"0.W": x.T @ dz1, "0.b": dz1.sum(axis=0), "1.W": dW2, "1.b": db2}, dz1 @ W1.T


def test_sequential_forward_backward_match_manual(device, rng):
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0).to(device)
    params = dict(model.named_parameters())
    params["0.b"].data[...] = device.send(rng.standard_normal(8))
    params["1.b"].data[...] = device.send(rng.standard_normal(3))
    W1, b1, W2, b2 = (gn.to_numpy(params[k].data).copy() for k in ("0.W", "0.b", "1.W", "1.b"))
    x, dlogits = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))

    logits = gn.to_numpy(model.forward(device.send(x)))
    np.testing.assert_allclose(logits, np.maximum(x @ W1 + b1, 0.0) @ W2 + b2, rtol=1e-12)

    for p in model.parameters():
        p.grad[...] = np.nan  # backward must write every grad, not add to it
    dx = gn.to_numpy(model.backward(device.send(dlogits), input_grad=True))
    expected, expected_dx = _manual_mlp_grads(x, dlogits, W1, b1, W2)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(gn.to_numpy(p.grad), expected[name], rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-12, atol=1e-14)


def test_sequential_backward_overwrites_grads(device, rng):
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0).to(device)
    x, dlogits = device.send(rng.standard_normal((6, 4))), device.send(rng.standard_normal((6, 3)))
    model.forward(x)
    model.backward(dlogits)
    first = [gn.to_numpy(p.grad).copy() for p in model.parameters()]
    assert all(np.abs(g).sum() > 0 for g in first)
    model.forward(x)
    model.backward(dlogits)
    for g1, p in zip(first, model.parameters(), strict=True):
        np.testing.assert_array_equal(gn.to_numpy(p.grad), g1)


def test_sequential_backward_computes_the_input_gradient_only_when_asked(monkeypatch, rng):
    """model.backward(dy) writes every grad and returns None without the first layer's dx
    (one matrix product fewer: 3 for two Linear layers, 4 with input_grad=True)."""
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0)
    ops = ops_of(model[0].W.data)
    products = []
    original = type(ops).matmul

    def counted(self, a, b, out=None):
        products.append(1)
        return original(self, a, b, out)

    monkeypatch.setattr(type(ops), "matmul", counted)
    x, dlogits = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    model.forward(x)
    products.clear()
    assert model.backward(dlogits) is None
    assert len(products) == 3 and all(np.abs(p.grad).sum() > 0 for p in model.parameters())
    grads = [p.grad.copy() for p in model.parameters()]
    products.clear()
    assert model.backward(dlogits, input_grad=True).shape == (6, 4) and len(products) == 4
    for g, p in zip(grads, model.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, g)
    nested = gn.Sequential(gn.ReLU(), gn.Sequential(gn.Linear(4, 3, dtype="float64", seed=0), gn.Tanh()))
    nested.forward(x)
    assert nested.backward(dlogits) is None
    dx = nested.backward(dlogits, input_grad=True)
    assert dx.shape == (6, 4) and np.all(dx[x <= 0] == 0)


def test_sequential_sets_nothing_on_its_layers():
    """A layer computes the same inside a model as on its own: building, copying and running
    a model leaves every layer's attributes as the layer made them."""
    layers = [gn.Linear(4, 5, seed=0), gn.ReLU(), gn.Dropout(0.2, seed=0), gn.Linear(5, 3, activation="tanh", seed=1)]
    before = [{k: v for k, v in vars(layer).items() if k not in ("W", "b")} for layer in layers]
    model = gn.Sequential(layers)
    model.forward(np.ones((2, 4), np.float32))
    after = [{k: v for k, v in vars(layer).items() if k not in ("W", "b")} for layer in layers]
    assert [sorted(a) for a in after] == [sorted(b) for b in before]
    assert layers[0].activation is None and layers[3].activation == "tanh"


SAFETY_MODELS = {
    "mlp-relu": lambda: gn.mlp([4, 6, 6, 3], dtype="float64", seed=0),
    "activations-first-and-last": lambda: gn.Sequential(
        gn.ReLU(),
        gn.Linear(4, 6, dtype="float64", seed=0),
        gn.Tanh(),
        gn.Dropout(0.5, seed=0),
        gn.Linear(6, 3, dtype="float64", seed=1),
        gn.Sigmoid(),
    ),
    "leaky-dropout": lambda: gn.Sequential(
        gn.Dropout(0.3, seed=0),
        gn.LeakyReLU(),
        gn.Linear(4, 5, dtype="float64", seed=0),
        gn.LeakyReLU(),
        gn.Dropout(0.3, seed=1),
        gn.Linear(5, 3, dtype="float64", seed=1),
        gn.Tanh(),
        gn.Dropout(0.3, seed=2),
    ),
    "mlp": lambda: gn.mlp([4, 6, 5, 3], dtype="float64", seed=0),
    "relu-output": lambda: gn.Sequential(
        gn.Linear(4, 5, activation="relu", dtype="float64", seed=0),
        gn.Linear(5, 3, activation="tanh", dtype="float64", seed=1),
    ),
    "identity-wrapped": lambda: gn.Sequential(
        gn.Identity(), gn.Sigmoid(), gn.Linear(4, 3, dtype="float64", seed=0), gn.Identity(), gn.ReLU(), gn.Identity()
    ),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(SAFETY_MODELS))
def test_sequential_never_modifies_caller_arrays(device, rng, name, mode):
    model = SAFETY_MODELS[name]().to(device)
    model.train(mode == "train")
    x_host = rng.standard_normal((7, 4))  # negative entries: an in-place ReLU would change them
    dl_host = rng.standard_normal((7, 3))
    x, dlogits = device.send(x_host.copy()), device.send(dl_host.copy())
    model.forward(x)
    model.backward(dlogits)
    np.testing.assert_array_equal(gn.to_numpy(x), x_host)
    np.testing.assert_array_equal(gn.to_numpy(dlogits), dl_host)


def test_sequential_lets_a_linear_layer_write_dz_over_the_input_gradient_above_it(rng):
    """Inside a model, each Linear layer's ∂L/∂x is a fresh array the layer below may overwrite
    with its dz (one batch-sized array fewer at a step's peak); the gradients are the bits of a
    layer-by-layer backward that overwrites nothing."""
    model = gn.mlp([4, 6, 5, 3], dtype="float64", seed=0)
    x, dlogits = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    model.forward(x)
    dy = dlogits
    for layer in reversed(model.layers):
        dy = layer.backward(dy, input_grad=True)
    separate = [p.grad.copy() for p in model.parameters()]
    model.backward(dlogits)
    for p, want in zip(model.parameters(), separate, strict=True):
        np.testing.assert_array_equal(p.grad, want)
    hidden = model.layers[1]
    a = hidden.forward(model.layers[0].forward(x))
    dy = rng.standard_normal((7, 5))
    expected = dy * (a > 0)
    hidden.backward(dy, overwrite_dy=True)
    np.testing.assert_array_equal(dy, expected)  # dz took dy's place


def test_nested_sequential_never_modifies_caller_x(rng):
    # An inner Sequential that only passes its input through returns the caller's array itself;
    # the outer model must not treat it as its own and let the ReLU overwrite it.
    model = gn.Sequential(gn.Sequential(gn.Dropout(0.5)).eval(), gn.ReLU(), gn.Linear(4, 2, dtype="float64"))
    model.eval()
    x = rng.standard_normal((5, 4))
    x_before = x.copy()
    model.forward(x)
    np.testing.assert_array_equal(x, x_before)


def test_sequential_tanh_forward_matches_formula(rng):
    model = gn.mlp([4, 6, 3], activation="tanh", dtype="float64", seed=0)
    for p in model.parameters():
        if not p.decay:
            p.data[...] = rng.standard_normal(p.shape)
    x = rng.standard_normal((5, 4))
    W1, b1, W2, b2 = (p.data for p in model.parameters())
    expected = np.tanh(x @ W1 + b1) @ W2 + b2
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-12)


def test_summary_uses_seed_notation_and_counts():
    model = gn.mlp([4, 8, 3], seed=0)
    text = model.summary()
    for token in ("a^[0]", "W^[1]", "b^[1]", "W^[2]", "b^[2]", "(4, 8)", "(8, 3)"):
        assert token in text, token
    total = 4 * 8 + 8 + 8 * 3 + 3
    assert total == 67
    assert "67 parameters" in text
    assert sum(p.size for p in model.parameters()) == total
    assert "a^[1] = relu(a^[0]·W^[1] + b^[1])" in text and "z^[2] = a^[1]·W^[2] + b^[2]" in text


def test_sequential_indexing_and_repr():
    model = gn.mlp([4, 8, 3], seed=0)
    assert len(model) == 2
    assert isinstance(model[0], gn.Linear) and model[0].activation == "relu" and model[1].activation is None
    assert [type(layer).__name__ for layer in model] == ["Linear", "Linear"]
    assert "Linear(4 → 8, relu)" in repr(model) and "Linear(8 → 3)" in repr(model)


# ----------------------------------------------------------------------------- mlp and parameters


def test_mlp_same_seed_same_weights_different_seed_different():
    a, b, c = gn.mlp([4, 8, 3], seed=0), gn.mlp([4, 8, 3], seed=0), gn.mlp([4, 8, 3], seed=1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)
    weights = [(pa.data, pc.data) for pa, pc in zip(a.parameters(), c.parameters(), strict=True) if pa.decay]
    assert len(weights) == 2
    for wa, wc in weights:
        assert not np.array_equal(wa, wc)


def test_mlp_takes_sizes_as_any_sequence_or_one_dimensional_integer_array():
    expected = gn.mlp([4, 8, 3], seed=0)
    for sizes in [(4, 8, 3), np.array([4, 8, 3]), np.array([4, 8, 3], np.uint16), [np.int64(4), 8, np.int32(3)]]:
        model = gn.mlp(sizes, seed=0)
        assert model.config() == expected.config()
        assert all(type(layer.n_in) is int and type(layer.n_out) is int for layer in model)  # JSON-ready
        for p, q in zip(model.parameters(), expected.parameters(), strict=True):
            np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize(
    ("sizes", "error", "message"),
    [
        (np.array([4.0, 8.0, 3.0]), TypeError, r"^sizes\[0\] must be an integer"),
        (np.array([[4, 8, 3]]), ValueError, r"^sizes must list at least an input and an output size"),
        (np.array([4]), ValueError, r"^sizes must list at least"),
        ("483", ValueError, r"^sizes must list at least"),
        (np.array([4, 0, 3]), ValueError, r"^sizes\[1\] must be >= 1, got 0"),
    ],
)
def test_mlp_refuses_sizes_that_are_not_layer_widths(sizes, error, message):
    with pytest.raises(error, match=message):
        gn.mlp(sizes, seed=0)


@pytest.mark.parametrize("build", [lambda: gn.mlp([4, 8, 3], seed=-1), lambda: gn.Linear(2, 2, seed=-1)])
def test_a_negative_seed_is_named(build):
    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -1"):
        build()


def test_mlp_layers_get_different_weights():
    model = gn.mlp([5, 5, 5, 5], seed=0)
    w = [p.data for p in model.parameters() if p.decay]
    assert not np.array_equal(w[0], w[1])
    assert not np.array_equal(w[1], w[2])


def test_mlp_parameter_names_and_order():
    model = gn.mlp([4, 8, 3], seed=0)
    assert [p.name for p in model.parameters()] == ["0.W", "0.b", "1.W", "1.b"]
    assert [n for n, _ in model.named_parameters()] == ["0.W", "0.b", "1.W", "1.b"]
    assert [p.shape for p in model.parameters()] == [(4, 8), (8,), (8, 3), (3,)]
    assert [p.decay for p in model.parameters()] == [True, False, True, False]


def test_mlp_with_dropout_names_skip_dropout_layers():
    model = gn.mlp([4, 8, 8, 3], dropout=0.2, seed=0)
    assert [type(layer).__name__ for layer in model] == ["Linear", "Dropout", "Linear", "Dropout", "Linear"]
    assert [p.name for p in model.parameters()] == ["0.W", "0.b", "2.W", "2.b", "4.W", "4.b"]


def test_nested_sequential_parameter_names_are_unique():
    inner = gn.Sequential(gn.Linear(4, 5), gn.Tanh(), gn.Linear(5, 2))
    model = gn.Sequential(gn.Linear(3, 4), gn.ReLU(), inner)
    names = [p.name for p in model.parameters()]
    assert len(names) == 6
    assert len(set(names)) == len(names), names


def test_parameters_are_views_of_one_flat_buffer():
    model = gn.mlp([4, 8, 3], seed=0)
    params = model.parameters()
    flat = params[0].flat
    assert flat is not None
    assert flat.data.ndim == 1
    assert flat.data.size == sum(p.size for p in params)
    for p in params:
        assert p.flat is flat
        assert np.shares_memory(p.data, flat.data), p.name
        assert np.shares_memory(p.grad, flat.grad), p.name
    # a write through the flat buffer is seen by the parameter, and the other way round
    flat.data[...] = 2.5
    assert all((p.data == 2.5).all() for p in params)
    params[2].data[...] = -1.0
    assert (flat.data == -1.0).sum() == params[2].size


def test_flat_buffer_puts_weights_first():
    model = gn.mlp([4, 8, 3], seed=0)
    flat = model.parameters()[0].flat
    assert flat.n_decay == 4 * 8 + 8 * 3
    flat.data[...] = 0.0
    flat.data[: flat.n_decay] = 1.0
    for p in model.parameters():
        assert (p.data == (1.0 if p.decay else 0.0)).all(), p.name


def test_model_to_device_keeps_values(device):
    model = gn.mlp([4, 8, 3], seed=0)
    before = [p.data.copy() for p in model.parameters()]
    model.to(device)
    assert model.device == device
    for b, p in zip(before, model.parameters(), strict=True):
        assert p.device == device
        np.testing.assert_array_equal(gn.to_numpy(p.data), b)


@pytest.mark.parametrize(
    ("activation", "expected_std"),
    [
        ("relu", lambda n_in, n_out: math.sqrt(2.0 / n_in)),
        ("leaky_relu", lambda n_in, n_out: math.sqrt(2.0 / n_in)),
        ("tanh", lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out))),
        ("sigmoid", lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out))),
    ],
)
def test_mlp_init_defaults_statistically(activation, expected_std):
    n_in, n_out = 1500, 300
    model = gn.mlp([n_in, n_out, 2], activation=activation, seed=0)
    W = model[0].W.data.astype(np.float64)
    # 450 000 draws: the sample std is within ~0.1 % of the true one, the mean within ~0.15 % of it
    std = expected_std(n_in, n_out)
    assert abs(W.std() - std) < 0.01 * std
    assert abs(W.mean()) < 0.01 * std
    assert not model[0].b.data.any()


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [("he", math.sqrt(2.0 / 1000)), ("xavier", math.sqrt(2.0 / 1400)), ("normal", 0.01)],
)
def test_linear_init_methods(init, expected_std):
    W = gn.Linear(1000, 400, init=init, dtype="float64", seed=3).W.data
    assert abs(W.std() - expected_std) < 0.01 * expected_std


def test_mlp_explicit_init_overrides_default():
    W = gn.mlp([1000, 400, 2], activation="relu", init="normal", seed=0)[0].W.data
    assert abs(W.std() - 0.01) < 1e-4


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_and_optimizer_still_train_together(how: str) -> None:
    model = gn.mlp([4, 8, 3], seed=0)
    optimizer = gn.optim.Adam(model.parameters(), lr=0.1)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    t = np.arange(16) % 3
    criterion = gn.SoftmaxWithLoss()
    for _ in range(2):
        criterion.forward(model.forward(x), t)
        model.backward(criterion.backward())
        optimizer.step()
    pair = copy.deepcopy((model, optimizer)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, optimizer)))
    copied_model, copied_optimizer = pair
    flat = copied_model.parameters()[0].flat
    assert all(np.shares_memory(p.data, flat.data) for p in copied_model.parameters())
    for m, opt in ((model, optimizer), (copied_model, copied_optimizer)):
        criterion.forward(m.forward(x), t)
        m.backward(criterion.backward())
        opt.step()  # the copy's optimizer updates the copy's weights, with the copied Adam state
    for a, b in zip(model.parameters(), copied_model.parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        assert not np.shares_memory(a.data, b.data)


def test_a_linear_subclass_with_its_own_backward_trains_inside_a_model():
    """Only Linear's own backward is given dy to overwrite; a subclass keeps the documented
    backward(dy, input_grad) call, and what it returns is not written over."""

    class HalfGradient(gn.Linear):
        def backward(self, dy, input_grad=True):
            return super().backward(dy * 0.5, input_grad)

    x = np.ones((2, 3))
    plain = gn.Sequential(
        gn.Linear(3, 4, activation="relu", dtype="float64", seed=0), gn.Linear(4, 2, dtype="float64", seed=1)
    )
    halved = gn.Sequential(
        gn.Linear(3, 4, activation="relu", dtype="float64", seed=0), HalfGradient(4, 2, dtype="float64", seed=1)
    )
    dy = np.ones((2, 2))
    for model in (plain, halved):
        model.forward(x)
        model.backward(dy)
    for p, q in zip(plain.parameters(), halved.parameters(), strict=True):
        np.testing.assert_allclose(q.grad, 0.5 * p.grad)


@pytest.mark.parametrize("function", [gn.softmax, gn.log_softmax, gn.sigmoid])
def test_the_array_functions_name_z_when_given_no_float_array(function):
    with pytest.raises(TypeError, match=r"z must have dtype float32 or float64, got int64"):
        function(np.array([[1, 2, 3]]))
    with pytest.raises(TypeError, match=r"z must be a NumPy or CuPy array, got list"):
        function([[1.0, 2.0]])
