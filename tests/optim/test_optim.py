"""Optimizers: textbook updates, convergence, state_dict, validation and gradient clipping.

The reference updates below are written from the formulas in the optimizers' docstrings
(PyTorch's forms), in float64 NumPy, independently of gpunn.backend.ops.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

import gpunn as gn
from gpunn.nn.parameter import FlatParameters

SHAPES = {p.name: p.shape for p in gn.mlp([3, 4, 2], seed=0).parameters()}  # two Linear layers: W, b, W, b
NAMES = tuple(SHAPES)

# (optimizer class, hyperparameters chosen so that every constant matters: eps is large
# enough for its place in the formula to show, betas differ from the defaults, ...)
CUSTOM = {
    "sgd": (gn.optim.SGD, {"lr": 0.1}),
    "momentum": (gn.optim.Momentum, {"lr": 0.1, "momentum": 0.8}),
    "nesterov": (gn.optim.Nesterov, {"lr": 0.1, "momentum": 0.8}),
    "adagrad": (gn.optim.AdaGrad, {"lr": 0.1, "eps": 1e-2}),
    "rmsprop": (gn.optim.RMSprop, {"lr": 0.05, "alpha": 0.9, "eps": 1e-2}),
    "adam": (gn.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-3}),
    "adamw": (gn.optim.AdamW, {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-3, "weight_decay": 0.5}),
}

# The defaults of the public contract (PyTorch's).
DEFAULTS = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
}

# The name of each rule's state buffer(s) in state_dict, and the textbook symbol it holds.
STATE_NAMES = {
    "sgd": (),
    "momentum": ("velocity",),
    "nesterov": ("velocity",),
    "adagrad": ("sum_sq",),
    "rmsprop": ("square_avg",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}

RULES = tuple(CUSTOM)


def textbook_step(rule: str, hyper: dict, w: np.ndarray, g: np.ndarray, state: dict, t: int, decay: bool):
    """One update of ``w`` (float64) by the textbook formula; updates ``state`` in place."""
    lr = hyper["lr"]
    if rule == "sgd":
        return w - lr * g
    if rule in ("momentum", "nesterov"):
        mu = hyper["momentum"]
        v = mu * state.get("velocity", 0.0) + g
        state["velocity"] = v
        return w - lr * v if rule == "momentum" else w - lr * (g + mu * v)
    if rule == "adagrad":
        h = state.get("sum_sq", 0.0) + g**2
        state["sum_sq"] = h
        return w - lr * g / (np.sqrt(h) + hyper["eps"])
    if rule == "rmsprop":
        a = hyper["alpha"]
        s = a * state.get("square_avg", 0.0) + (1 - a) * g**2
        state["square_avg"] = s
        return w - lr * g / (np.sqrt(s) + hyper["eps"])
    # Adam / AdamW (PyTorch's arithmetic)
    b1, b2 = hyper["betas"]
    if rule == "adamw" and decay:
        w = w * (1 - lr * hyper["weight_decay"])
    m = b1 * state.get("exp_avg", 0.0) + (1 - b1) * g
    v = b2 * state.get("exp_avg_sq", 0.0) + (1 - b2) * g**2
    state["exp_avg"], state["exp_avg_sq"] = m, v
    return w - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + hyper["eps"])


def make_model(dtype: str = "float64", device: gn.Device | str = "cpu") -> gn.Sequential:
    return gn.mlp([3, 4, 2], dtype=dtype, seed=0).to(device)


def gradients(n_steps: int, dtype: str, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Different hand-made gradients for each step, rounded to ``dtype`` (then held as float64)."""
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(n_steps):
        scale = (1.0, 0.3, 2.5, 0.7, 1.3, 0.1)[k % 6]
        steps.append(
            {
                name: (scale * rng.standard_normal(shape) + 0.1 * k).astype(dtype).astype(np.float64)
                for name, shape in SHAPES.items()
            }
        )
    return steps


def set_grads(model: gn.Sequential, grads: dict[str, np.ndarray]) -> None:
    for p in model.parameters():
        p.grad[...] = p.device.send(grads[p.name], dtype=p.data.dtype)


def params_numpy(model: gn.Sequential) -> dict[str, np.ndarray]:
    return {p.name: gn.to_numpy(p.data).copy() for p in model.parameters()}


# ----------------------------------------------------------------------------- textbook updates


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hyper_set", ["custom", "defaults"])
@pytest.mark.parametrize("rule", RULES)
def test_first_three_updates_match_textbook(device, rule, hyper_set, dtype):
    cls, custom = CUSTOM[rule]
    hyper = custom if hyper_set == "custom" else DEFAULTS[rule]
    model = make_model(dtype, device)
    opt = cls(model.parameters(), **hyper) if hyper_set == "custom" else cls(model.parameters())
    weights = {name: w.astype(np.float64) for name, w in params_numpy(model).items()}
    decay = {p.name: p.decay for p in model.parameters()}
    assert list(decay.values()) == [True, False, True, False]  # weights decay, biases do not
    states: dict[str, dict] = {name: {} for name in NAMES}
    rtol, atol = (1e-12, 1e-14) if dtype == "float64" else (2e-5, 2e-6)

    for t, grads in enumerate(gradients(3, dtype), start=1):
        set_grads(model, grads)
        opt.step()
        assert opt.step_count == t
        for name in NAMES:
            weights[name] = textbook_step(rule, hyper, weights[name], grads[name], states[name], t, decay[name])
        for p in model.parameters():
            assert p.data.dtype == np.dtype(dtype)
            np.testing.assert_allclose(
                gn.to_numpy(p.data), weights[p.name], rtol=rtol, atol=atol, err_msg=f"{rule} step {t} {p.name}"
            )
        saved = opt.state_dict()["state"]
        for name in NAMES:
            assert set(saved[name]) == set(STATE_NAMES[rule])
            for buffer in STATE_NAMES[rule]:
                np.testing.assert_allclose(
                    gn.to_numpy(saved[name][buffer]),
                    states[name][buffer],
                    rtol=rtol,
                    atol=atol,
                    err_msg=f"{rule} step {t} state {name}.{buffer}",
                )


def test_adamw_decays_weights_not_biases():
    """With zero gradients Adam's step is 0, so AdamW only decays: W·(1 − lr·wd), b unchanged."""
    model = make_model()
    before = params_numpy(model)
    opt = gn.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad[...] = 0.0
        p.data[...] += 1.0  # biases start at zero; make the check meaningful for them too
    opt.step()
    for p in model.parameters():
        expected = (before[p.name] + 1.0) * (0.95 if p.decay else 1.0)
        np.testing.assert_allclose(p.data, expected, rtol=1e-14, err_msg=p.name)
    # Adam proper never decays
    model2 = make_model()
    opt2 = gn.optim.Adam(model2.parameters(), lr=0.1)
    for p in model2.parameters():
        p.grad[...] = 0.0
    opt2.step()
    for p in model2.parameters():
        np.testing.assert_array_equal(p.data, before[p.name])


@pytest.mark.parametrize("rule", RULES)
def test_defaults_follow_pytorch(rule):
    cls, _ = CUSTOM[rule]
    hyper = cls().hyperparameters()
    assert hyper == DEFAULTS[rule]
    for name, value in hyper.items():
        for v in value if isinstance(value, tuple) else (value,):
            assert type(v) is (bool if name == "nesterov" else float)


def test_hyperparameters_become_python_floats():
    # NumPy scalars would make NEP 50 promote float32 updates to float64
    opt = gn.optim.Adam(lr=np.float64(0.01), betas=(np.float32(0.5), np.float64(0.9)), eps=np.float32(1e-6))
    assert type(opt.lr) is float
    assert all(type(b) is float for b in opt.betas)
    assert type(opt.eps) is float
    assert type(gn.optim.Momentum(momentum=np.float32(0.5)).momentum) is float
    # and so do values set later (a schedule, scikit-learn's per-step eps)
    opt.lr, opt.betas, opt.eps = np.float64(0.02), (np.float64(0.8), np.float32(0.99)), np.float64(1e-7)
    assert type(opt.lr) is float and opt.lr == 0.02
    assert type(opt.betas) is tuple and all(type(b) is float for b in opt.betas)
    assert type(opt.eps) is float
    assert type(gn.L2(1e-3).fused_coefficients()[0]) is float


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_a_numpy_float64_hyperparameter_rounds_like_a_python_float(rule):
    """np.float64 lr / eps / L2 coefficient give a float32 update the bits of the same Python
    floats (rounded once to float32, as the fused kernels do), not a float64 computation."""
    rng = np.random.default_rng(8)
    start = rng.standard_normal(64).astype(np.float32)
    grads = rng.standard_normal((3, 64)).astype(np.float32)
    results = []
    for make in (float, np.float64):
        params = [gn.Parameter(start.copy(), name="w")]
        opt = gn.optim.create(rule, params, lr=0.1)
        penalty = gn.L2(0.0)
        for i, g in enumerate(grads):
            params[0].grad[...] = g
            opt.lr, penalty.lam = make(0.1 / 3 / (i + 1)), make(1e-3 / 7)
            if rule == "adam":
                opt.eps = make(1e-3 / 7)
            opt.step(penalty)
        results.append(params[0].data.copy())
    np.testing.assert_array_equal(results[0], results[1])


# ----------------------------------------------------------------------------- convergence


def _least_squares(device: gn.Device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5))
    t = x @ rng.standard_normal((5, 2)) + np.array([0.5, -1.0])
    return device.send(x), device.send(t)


CONVEX_LR = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adagrad": 0.5,
    "rmsprop": 0.01,
    "adam": 0.05,
    "adamw": 0.05,
}


@pytest.mark.parametrize("rule", RULES)
def test_drives_least_squares_loss_down(device, rule):
    x, t = _least_squares(device)
    layer = gn.Linear(5, 2, dtype="float64", seed=0).to(device)
    criterion = gn.MSELoss()
    opt = CUSTOM[rule][0](layer.parameters(), lr=CONVEX_LR[rule])
    losses = []
    for _ in range(200):
        losses.append(float(gn.to_numpy(criterion.forward(layer.forward(x), t))))
        layer.backward(criterion.backward())
        opt.step()
    final = float(gn.to_numpy(criterion.forward(layer.forward(x), t)))
    assert np.isfinite(final)
    assert final < 1e-3 * losses[0], (rule, losses[0], final)


@pytest.mark.parametrize("rule", RULES)
def test_drives_softmax_regression_loss_down(device, rule):
    rng = np.random.default_rng(3)
    centers = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    labels = np.repeat(np.arange(3), 30)
    x = (centers[labels] + 0.5 * rng.standard_normal((90, 2))).astype(np.float32)
    x, labels = device.send(x), device.send(labels)
    model = gn.mlp([2, 3], dtype="float32", seed=0).to(device)
    criterion = gn.SoftmaxWithLoss()
    lr = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.5, "rmsprop": 0.05}.get(rule, 0.1)
    opt = CUSTOM[rule][0](model.parameters(), lr=lr)
    first = float(gn.to_numpy(criterion.forward(model.forward(x), labels)))
    for _ in range(100):
        criterion.forward(model.forward(x), labels)
        model.backward(criterion.backward())
        opt.step()
    logits = model.forward(x)
    final = float(gn.to_numpy(criterion.forward(logits, labels)))
    assert final < 0.1 * first, (rule, first, final)
    assert (gn.to_numpy(logits).argmax(axis=1) == gn.to_numpy(labels)).all()


# ----------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_layout(device, rule):
    cls, hyper = CUSTOM[rule]
    model = make_model(device=device)
    opt = cls(model.parameters(), **hyper)
    for grads in gradients(2, "float64"):
        set_grads(model, grads)
        opt.step()
    sd = opt.state_dict()
    assert sd["type"] == cls.__name__
    assert sd["step"] == 2
    assert sd["hyper"] == {**DEFAULTS[rule], **hyper}
    assert list(sd["state"]) == list(NAMES)
    for p in model.parameters():
        assert set(sd["state"][p.name]) == set(STATE_NAMES[rule])
        for arr in sd["state"][p.name].values():
            assert tuple(arr.shape) == p.shape
            assert gn.device_of(arr) == device  # state lives on the parameters' device
            assert type(arr) is type(p.data)
            assert arr.dtype == p.data.dtype
            if rule != "sgd":
                assert np.any(gn.to_numpy(arr) != 0)


@pytest.mark.parametrize("rule", RULES)
def test_loaded_optimizer_continues_bit_identically(rule):
    cls, hyper = CUSTOM[rule]
    grads = gradients(6, "float64", seed=7)
    original = make_model()
    opt = cls(original.parameters(), **hyper)
    for g in grads[:3]:
        set_grads(original, g)
        opt.step()
    sd = opt.state_dict()
    sd_values = {k: {n: a.copy() for n, a in v.items()} for k, v in sd["state"].items()}

    resumed = make_model()
    for p, q in zip(resumed.parameters(), original.parameters(), strict=True):
        p.data[...] = q.data
    opt2 = cls(resumed.parameters(), **DEFAULTS[rule])  # hyperparameters come from the state too
    opt2.load_state_dict(sd)
    assert opt2.step_count == 3
    assert opt2.hyperparameters() == {**DEFAULTS[rule], **hyper}

    for g in grads[3:]:
        set_grads(original, g)
        set_grads(resumed, g)
        opt.step()
        opt2.step()
        for p, q in zip(resumed.parameters(), original.parameters(), strict=True):
            np.testing.assert_array_equal(p.data, q.data, err_msg=p.name)
    # state_dict returned copies: stepping on did not change them
    for key, buffers in sd["state"].items():
        for name, arr in buffers.items():
            np.testing.assert_array_equal(arr, sd_values[key][name])


def test_state_dict_moves_between_devices(device):
    model = make_model(device=device)
    opt = gn.optim.Adam(model.parameters(), lr=0.01)
    set_grads(model, gradients(1, "float64")[0])
    opt.step()
    sd = opt.state_dict()
    cpu_opt = gn.optim.Adam(make_model().parameters(), lr=0.01)
    cpu_opt.load_state_dict(sd)
    loaded = cpu_opt.state_dict()
    for key in NAMES:
        for name in ("exp_avg", "exp_avg_sq"):
            assert isinstance(loaded["state"][key][name], np.ndarray)
            np.testing.assert_array_equal(loaded["state"][key][name], gn.to_numpy(sd["state"][key][name]))


def test_load_state_dict_of_another_type_raises():
    model = make_model()
    adam = gn.optim.Adam(model.parameters())
    sd = adam.state_dict()
    for other in (gn.optim.AdamW, gn.optim.SGD, gn.optim.Momentum):
        with pytest.raises(ValueError, match=r"Adam"):
            other(model.parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"Momentum"):
        gn.optim.Nesterov(model.parameters()).load_state_dict(gn.optim.Momentum(model.parameters()).state_dict())


def test_load_state_dict_with_mismatched_params_raises():
    sd = gn.optim.Adam(make_model().parameters()).state_dict()
    wider = gn.mlp([3, 5, 2], dtype="float64", seed=0)  # same names, other shapes
    with pytest.raises(ValueError, match=r"shape"):
        gn.optim.Adam(wider.parameters()).load_state_dict(sd)
    deeper = gn.mlp([3, 4, 4, 2], dtype="float64", seed=0)  # extra parameters
    with pytest.raises(ValueError, match=re.escape(f"missing {[p.name for p in deeper.parameters()][4:]}")):
        gn.optim.Adam(deeper.parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match=re.escape(f"unexpected {sorted(NAMES[1:])}")):
        gn.optim.Adam(make_model().parameters()[:1]).load_state_dict(sd)
    with pytest.raises(TypeError):
        gn.optim.Adam(make_model().parameters()).load_state_dict({"exp_avg": 1})


@pytest.mark.parametrize("rule", ["momentum", "adam", "adamw"])
def test_optimizer_follows_model_to(device, rule):
    """After model.to(device) (cpu → cpu, or cpu → cuda:0) and back to the CPU, step() updates
    the model's current parameters and keeps the optimizer state; the results match a model
    that stayed put."""
    cls, hyper = CUSTOM[rule]
    grads = gradients(4, "float64", seed=5)
    model, still = make_model(), make_model()
    opt, opt_still = cls(model.parameters(), **hyper), cls(still.parameters(), **hyper)

    def step_both(g):
        for m, o in ((model, opt), (still, opt_still)):
            set_grads(m, g)
            o.step()

    def assert_same():
        for p, q in zip(model.parameters(), still.parameters(), strict=True):
            np.testing.assert_allclose(gn.to_numpy(p.data), q.data, rtol=1e-12, atol=1e-14, err_msg=p.name)

    step_both(grads[0])
    model.to(device)
    assert model.device == device
    for g in grads[1:3]:
        step_both(g)
    assert opt.step_count == 3
    assert all(gn.device_of(p.data) == device for p in model.parameters())
    assert_same()
    for buffers in opt.state_dict()["state"].values():
        for arr in buffers.values():
            assert gn.device_of(arr) == device
    model.to("cpu")
    step_both(grads[3])
    assert opt.step_count == 4
    assert_same()
    for buffers in opt.state_dict()["state"].values():
        for arr in buffers.values():
            assert isinstance(arr, np.ndarray)


def test_state_dict_keys_of_free_parameters():
    """Named parameters key the state by name; unnamed (or clashing) ones by position."""
    named = [gn.Parameter(np.zeros(3), name="w"), gn.Parameter(np.zeros(2), name="b", decay=False)]
    assert list(gn.optim.Momentum(named).state_dict()["state"]) == ["w", "b"]
    unnamed = [gn.Parameter(np.zeros(3)), gn.Parameter(np.zeros(2))]
    assert list(gn.optim.Momentum(unnamed).state_dict()["state"]) == ["0", "1"]
    clashing = [gn.Parameter(np.zeros(3), name="W"), gn.Parameter(np.zeros(2), name="W")]
    assert list(gn.optim.Momentum(clashing).state_dict()["state"]) == ["0", "1"]


@pytest.mark.parametrize("rule", ["momentum", "adagrad", "adam"])
def test_optimizer_follows_repacked_parameters(rule):
    """The CPU-only version of a move: the model's parameters are packed into a new flat
    buffer (what model.to(other device) does); the optimizer repacks and carries on exactly."""
    cls, hyper = CUSTOM[rule]
    grads = gradients(3, "float64", seed=6)
    model, still = make_model(), make_model()
    opt, opt_still = cls(model.parameters(), **hyper), cls(still.parameters(), **hyper)
    for m, o in ((model, opt), (still, opt_still)):
        set_grads(m, grads[0])
        o.step()
    old_views = [p.data for p in model.parameters()]
    FlatParameters(model.parameters(), model.device)
    assert not any(np.shares_memory(a, p.data) for a, p in zip(old_views, model.parameters(), strict=True))
    for g in grads[1:]:
        for m, o in ((model, opt), (still, opt_still)):
            set_grads(m, g)
            o.step()
    for p, q in zip(model.parameters(), still.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=p.name)
    # and the model computes with the updated parameters
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_array_equal(model.forward(x), still.forward(x))


def test_bind_keeps_the_state_of_the_parameters_that_stay():
    """A layer's Parameter replaced: bind keeps the others' moments bit for bit, the new one
    starts from zero state, the step count goes on, and every parameter trains from then on."""
    model = make_model()
    opt = gn.optim.Adam(model.parameters(), lr=1e-2)
    set_grads(model, gradients(1, "float64", seed=2)[0])
    opt.step()
    before = opt.state_dict()["state"]
    buffers = opt.state
    assert opt.bind(model) is opt and opt.state is buffers  # the same parameters: nothing to do
    old = model.layers[0].W
    new = gn.Parameter(np.full(old.shape, 0.25), name=old.name)
    model.layers[0].W = new
    opt.bind(model)
    assert any(p is new for p in opt.params) and not any(p is old for p in opt.params)
    after = opt.state_dict()["state"]
    for key, state in after.items():
        for name, value in state.items():
            if key == new.name:
                assert not value.any(), (key, name)
            else:
                np.testing.assert_array_equal(value, before[key][name], err_msg=f"{key} {name}")
    assert opt.step_count == 1
    set_grads(model, gradients(1, "float64", seed=3)[0])
    start = [p.data.copy() for p in model.parameters()]
    opt.step()
    assert all(not np.array_equal(a, p.data) for a, p in zip(start, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: gn.mlp([3, 5, 2], dtype="float64", seed=0), id="other-shapes"),
        pytest.param(lambda: gn.mlp([3, 4, 2], dtype="float64", seed=9), id="same-shapes-fresh-weights"),
        pytest.param(make_model, id="same-names-and-weights"),
    ],
)
def test_bind_to_another_model_starts_afresh(other):
    """Parameters the optimizer never updated (another model, even one equal to the first in
    names, shapes and values: a sweep reusing one optimizer) take no moments, and the step
    count starts again: the same updates as a fresh Adam."""
    opt = gn.optim.Adam(make_model().parameters(), lr=1e-2)
    for p in opt.params:
        p.grad[...] = 1.0
    opt.step()
    model, twin = other(), other()
    opt.bind(model)
    assert opt.step_count == 0
    assert not any(value.any() for state in opt.state_dict()["state"].values() for value in state.values())
    fresh = gn.optim.Adam(twin.parameters(), lr=1e-2)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        p.grad[...] = q.grad[...] = 0.5
    opt.step()
    fresh.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_restored_state_goes_by_name_until_the_next_step():
    """load_state_dict restores by name, and until the optimizer steps the restored state goes
    by name when it is bound anew: bound to a second model of the same names and shapes (the
    same checkpoint read twice), it resumes there exactly as the saving optimizer goes on.
    After a step the state belongs to the parameters it updated again."""
    first = make_model()
    saving = gn.optim.Adam(first.parameters(), lr=1e-2)
    set_grads(first, gradients(1, "float64", seed=2)[0])
    saving.step()
    one, two = make_model(), make_model()
    for model in (one, two):
        for p, q in zip(model.parameters(), first.parameters(), strict=True):
            p.data[...] = q.data
    opt = gn.optim.Adam(one.parameters())
    opt.load_state_dict(saving.state_dict())
    opt.bind(two)
    assert opt.step_count == 1
    for key, state in saving.state_dict()["state"].items():
        for name, value in state.items():
            np.testing.assert_array_equal(opt.state_dict()["state"][key][name], value, err_msg=f"{key} {name}")
    grads = gradients(1, "float64", seed=3)[0]
    set_grads(first, grads)
    set_grads(two, grads)
    saving.step()
    opt.step()
    for p, q in zip(first.parameters(), two.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    opt.bind(one)  # stepped since: another model's parameters start afresh
    assert opt.step_count == 0


def test_bind_binds_an_unbound_optimizer():
    model = make_model()
    opt = gn.optim.Momentum(lr=0.1)
    assert not opt.bound
    opt.bind(model.parameters())
    assert opt.bound and all(a is b for a, b in zip(opt.params, model.parameters(), strict=True))


def test_bind_in_another_order_keeps_every_state():
    model = make_model()
    params = model.parameters()
    opt = gn.optim.Adam(params[::-1], lr=1e-2)
    set_grads(model, gradients(1, "float64", seed=4)[0])
    opt.step()
    before = opt.state_dict()["state"]
    opt.bind(model)
    assert all(a is b for a, b in zip(opt.params, params, strict=True))
    assert opt.step_count == 1
    after = opt.state_dict()["state"]
    for key in before:
        for name in before[key]:
            np.testing.assert_array_equal(after[key][name], before[key][name])


def test_zero_grad_zeroes_every_bound_gradient():
    model = make_model()
    opt = gn.optim.SGD(model.parameters())
    set_grads(model, gradients(1, "float64")[0])
    opt.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_a_subclass_keeps_hyperparameters_that_are_not_numbers():
    class Tuned(gn.optim.SGD):
        hyper_names = ("lr", "mode", "warm")

        def __init__(self, params=None, lr=0.1) -> None:
            self.mode, self.warm = "fast", True
            super().__init__(params, lr=lr)

    opt = Tuned(lr=np.float32(0.5))
    assert opt.mode == "fast" and opt.warm is True and type(opt.lr) is float
    assert opt.hyperparameters() == {"lr": 0.5, "mode": "fast", "warm": True}
    opt.warm = np.int64(3)  # a NumPy integer setting: a Python int, not a float
    assert type(opt.warm) is int and opt.warm == 3
    opt.warm = False
    restored = Tuned([gn.Parameter(np.zeros(2))])
    restored.mode = "slow"
    restored.load_state_dict(Tuned([gn.Parameter(np.zeros(2))]).state_dict() | {"hyper": opt.hyperparameters()})
    assert restored.mode == "fast" and restored.warm is False  # saved settings that are no numbers come back
    with pytest.raises(ValueError, match="lr"):
        restored.load_state_dict(restored.state_dict() | {"hyper": {"lr": -1.0}})
    for bad in (True, None, "0.1"):  # a numeric hyperparameter stays a number
        with pytest.raises(TypeError, match="lr"):
            restored.load_state_dict(restored.state_dict() | {"hyper": {"lr": bad}})


def test_array_hyperparameters_become_python_numbers_or_stay_arrays():
    opt = gn.optim.Adam(lr=1e-3)
    opt.lr, opt.betas = np.array(0.02), [np.float64(0.8), np.float32(0.99)]
    assert type(opt.lr) is float and type(opt.betas) is list and all(type(b) is float for b in opt.betas)
    opt.lr = np.array([0.01])  # not a number: kept (the Ops' reference broadcasts it)
    assert isinstance(opt.lr, np.ndarray)
    betas = collections.namedtuple("Betas", "beta1 beta2")
    opt.betas = betas(0.8, 0.99)  # nothing to convert: the caller's tuple as it is
    assert opt.betas == (0.8, 0.99) and type(opt.betas) is betas
    opt.betas = betas(np.float64(0.8), 0.99)
    assert opt.betas == (0.8, 0.99) and all(type(b) is float for b in opt.betas)


# ----------------------------------------------------------------------------- validation


BAD_HYPERPARAMETERS = [
    (gn.optim.SGD, {"lr": -0.1}, "lr"),
    (gn.optim.SGD, {"lr": float("nan")}, "lr"),
    (gn.optim.Adam, {"lr": float("inf")}, "lr"),
    (gn.optim.Momentum, {"momentum": 1.0}, "momentum"),
    (gn.optim.Momentum, {"momentum": 1.5}, "momentum"),
    (gn.optim.Nesterov, {"momentum": -0.1}, "momentum"),
    (gn.optim.Adam, {"betas": (1.0, 0.999)}, "betas[0]"),
    (gn.optim.Adam, {"betas": (-0.1, 0.999)}, "betas[0]"),
    (gn.optim.AdamW, {"betas": (0.9, 1.0)}, "betas[1]"),
    (gn.optim.AdamW, {"betas": (0.9, 1.2)}, "betas[1]"),
    (gn.optim.Adam, {"eps": 0.0}, "eps"),
    (gn.optim.AdaGrad, {"eps": -1e-10}, "eps"),
    (gn.optim.RMSprop, {"eps": 0.0}, "eps"),
    (gn.optim.RMSprop, {"alpha": 1.0}, "alpha"),
    (gn.optim.AdamW, {"weight_decay": -0.01}, "weight_decay"),
    (gn.optim.SGD, {"max_grad_norm": 0.0}, "max_grad_norm"),
    (gn.optim.Adam, {"max_grad_norm": -1.0}, "max_grad_norm"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_with_their_name(cls, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        cls(**kwargs)
    with pytest.raises(ValueError, match=re.escape(name)):  # also when bound to parameters
        cls(make_model().parameters(), **kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (gn.optim.SGD, {"lr": "0.1"}, "lr"),
        (gn.optim.SGD, {"lr": True}, "lr"),
        (gn.optim.Adam, {"betas": 0.9}, "betas"),
        (gn.optim.Adam, {"betas": (0.9, 0.99, 0.999)}, "betas"),
    ],
)
def test_hyperparameters_of_wrong_type_raise_type_error(cls, kwargs, name):
    with pytest.raises(TypeError, match=re.escape(name)):
        cls(**kwargs)


def test_create_by_name():
    opt = gn.optim.create("adam", lr=0.01, betas=(0.8, 0.9))
    assert type(opt) is gn.optim.Adam
    assert opt.lr == 0.01
    assert opt.betas == (0.8, 0.9)
    model = make_model()
    bound = gn.optim.create("AdamW", model.parameters(), weight_decay=0.1)
    assert type(bound) is gn.optim.AdamW
    before = params_numpy(model)
    set_grads(model, gradients(1, "float64")[0])
    bound.step()
    assert not np.array_equal(model.parameters()[0].data, before[NAMES[0]])
    for name, cls in gn.optim.OPTIMIZERS.items():
        assert type(gn.optim.create(name)) is cls


def test_create_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="adm") as info:
        gn.optim.create("adm")
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"):
        assert repr(name) in str(info.value)


def test_step_on_unbound_optimizer_explains_how_to_bind():
    opt = gn.optim.Adam(lr=0.01)
    with pytest.raises(RuntimeError, match=r"bind") as info:
        opt.step()
    assert "model.parameters()" in str(info.value)
    with pytest.raises(RuntimeError, match=r"bind"):
        opt.state_dict()
    model = make_model()
    assert opt.bind(model) is opt  # a model works as well as its parameters
    set_grads(model, gradients(1, "float64")[0])
    before = params_numpy(model)
    opt.step()
    assert all(not np.array_equal(p.data, before[p.name]) for p in model.parameters())


def test_bind_refuses_a_single_parameter():
    with pytest.raises(TypeError, match="params"):
        gn.optim.SGD(make_model().parameters()[0])


# ----------------------------------------------------------------------------- clipping


def _joint_norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(gn.to_numpy(a).astype(np.float64) ** 2) for a in arrays)))


@pytest.mark.parametrize("which", ["model", "packed list", "subset", "free parameters"])
def test_clip_grad_norm_returns_a_0d_device_array(device, which):
    """The norm stays on the device as a 0-d array (reading it as a float would sync a GPU)."""
    model = make_model(device=device)
    set_grads(model, gradients(1, "float64")[0])
    if which == "model":
        params = model
    elif which == "packed list":
        params = model.parameters()
    elif which == "subset":
        params = model.parameters()[1:3]
    else:
        params = [gn.Parameter(device.send(np.ones((2, 3))), name="w")]
        params[0].grad[...] = 5.0
    norm = gn.optim.clip_grad_norm(params, 1.0)
    assert not isinstance(norm, float), f"expected a 0-d array, got {type(norm).__name__} {norm!r}"
    assert isinstance(norm, device.xp.ndarray), type(norm)
    assert norm.shape == ()
    assert gn.device_of(norm) == device


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clip_grad_norm_on_model_scales_to_max_norm(device, dtype):
    model = make_model(dtype, device)
    set_grads(model, gradients(1, dtype)[0])
    before = {p.name: gn.to_numpy(p.grad).astype(np.float64) for p in model.parameters()}
    total = _joint_norm(before.values())
    assert total > 1.0
    norm = gn.optim.clip_grad_norm(model, 1.0)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(float(gn.to_numpy(norm)), total, rtol=rtol)
    after = [gn.to_numpy(p.grad) for p in model.parameters()]
    np.testing.assert_allclose(_joint_norm(after), 1.0, rtol=1e-5)
    for p in model.parameters():  # the direction is kept
        np.testing.assert_allclose(gn.to_numpy(p.grad), before[p.name] / total, rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_leaves_small_gradients_alone(device):
    model = make_model(device=device)
    set_grads(model, gradients(1, "float64")[0])
    before = [gn.to_numpy(p.grad).copy() for p in model.parameters()]
    total = _joint_norm(before)
    norm = gn.optim.clip_grad_norm(model.parameters(), 10 * total)
    np.testing.assert_allclose(float(gn.to_numpy(norm)), total, rtol=1e-12)
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(gn.to_numpy(p.grad), b)


def test_clip_grad_norm_on_a_subset_of_a_model(device):
    model = make_model(device=device)
    set_grads(model, gradients(1, "float64")[0])
    params = model.parameters()
    chosen, others = [params[2], params[1]], [params[0], params[3]]
    before = {p.name: gn.to_numpy(p.grad).copy() for p in params}
    total = _joint_norm(before[p.name] for p in chosen)
    norm = gn.optim.clip_grad_norm(chosen, 0.5 * total)
    np.testing.assert_allclose(float(gn.to_numpy(norm)), total, rtol=1e-12)
    np.testing.assert_allclose(_joint_norm(p.grad for p in chosen), 0.5 * total, rtol=1e-6)
    for p in others:
        np.testing.assert_array_equal(gn.to_numpy(p.grad), before[p.name])


def test_clip_grad_norm_on_free_parameters(device):
    rng = np.random.default_rng(2)
    params = [gn.Parameter(device.send(rng.standard_normal(s)), name=f"p{i}") for i, s in enumerate([(3, 2), (5,)])]
    grads = [rng.standard_normal(p.shape) * 3 for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad[...] = device.send(g)
    total = _joint_norm(grads)
    norm = gn.optim.clip_grad_norm(params, 2.0)
    np.testing.assert_allclose(float(gn.to_numpy(norm)), total, rtol=1e-12)
    np.testing.assert_allclose(_joint_norm(p.grad for p in params), 2.0, rtol=1e-6)
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_allclose(gn.to_numpy(p.grad), g * 2.0 / total, rtol=1e-6)


def test_clip_grad_norm_bad_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="max_norm"):
        gn.optim.clip_grad_norm(model, 0.0)
    with pytest.raises(ValueError, match="max_norm"):
        gn.optim.clip_grad_norm(model, float("nan"))
    with pytest.raises(ValueError, match="params"):
        gn.optim.clip_grad_norm([], 1.0)


@pytest.mark.parametrize("scale", [10.0, 0.01])
def test_max_grad_norm_option_clips_before_the_update(device, scale):
    max_norm = 0.5
    model = make_model(device=device)
    grads = {k: scale * v for k, v in gradients(1, "float64")[0].items()}
    set_grads(model, grads)
    before = params_numpy(model)
    total = _joint_norm(grads.values())
    opt = gn.optim.SGD(model.parameters(), lr=1.0, max_grad_norm=max_norm)
    opt.step()
    factor = min(1.0, max_norm / total)
    for p in model.parameters():
        np.testing.assert_allclose(
            gn.to_numpy(p.data), before[p.name] - factor * grads[p.name], rtol=1e-5, atol=1e-12, err_msg=p.name
        )
    moved = _joint_norm(gn.to_numpy(p.data) - before[p.name] for p in model.parameters())
    np.testing.assert_allclose(moved, min(total, max_norm), rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_max_grad_norm_clips_inside_the_update(device, rule):
    """The clipping factor is applied by the update itself: param.grad keeps the unclipped
    loss gradient, and the step equals the step on a gradient clipped by hand (to rounding)."""
    cls, hyper = CUSTOM[rule]
    grads = {k: 10.0 * v for k, v in gradients(1, "float64")[0].items()}
    total = _joint_norm(grads.values())
    clipped_model, by_hand = make_model(device=device), make_model(device=device)
    set_grads(clipped_model, grads)
    set_grads(by_hand, {k: v * (1.0 / (total + 1e-6)) for k, v in grads.items()})
    cls(clipped_model.parameters(), **hyper, max_grad_norm=1.0).step()
    cls(by_hand.parameters(), **hyper).step()
    for p, q in zip(clipped_model.parameters(), by_hand.parameters(), strict=True):
        np.testing.assert_array_equal(gn.to_numpy(p.grad), grads[p.name], err_msg=p.name)
        np.testing.assert_allclose(gn.to_numpy(p.data), gn.to_numpy(q.data), rtol=1e-12, atol=1e-14, err_msg=p.name)


def test_a_refused_state_dict_changes_no_buffer():
    """Every buffer's shape is checked before any is written: a state whose last layer does not
    fit leaves the first layer's moments and the step count as they were."""
    rng = np.random.default_rng(0)
    trained = []
    for sizes in ([4, 3, 5], [4, 3, 2]):
        model = gn.mlp(sizes, seed=0, dtype="float64")
        opt = gn.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3 if sizes[-1] == 5 else 2):
            for p in model.parameters():
                p.grad[...] = rng.standard_normal(p.shape)
            opt.step()
        trained.append(opt)
    other, opt = trained
    before = {k: {n: b.copy() for n, b in v.items()} for k, v in opt.state_dict()["state"].items()}
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\['1.W'\]\['exp_avg'\] has shape \(3, 5\)"):
        opt.load_state_dict(other.state_dict())
    text = opt.state_dict()
    text["state"]["1.b"]["exp_avg_sq"] = np.full(2, "x")  # the right shape, but nothing a float can hold
    with pytest.raises(TypeError, match=r"state_dict\['state'\]\['1.b'\]\['exp_avg_sq'\] must hold real numbers"):
        opt.load_state_dict({**text, "state": {k: {n: v + 1 if v.dtype.kind == "f" else v for n, v in b.items()}
                                                for k, b in text["state"].items()}})  # fmt: skip
    assert opt.step_count == 2
    for key, buffers in opt.state_dict()["state"].items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(value, before[key][name])
