"""PyTorch's optimizer keywords with PyTorch's meaning: SGD's momentum, dampening, nesterov and
weight_decay, Adam's (and RMSprop's, AdaGrad's) coupled weight_decay, AdamW's decoupled one.

The updates are checked against ``torch.optim`` itself, step by step in float64, where torch is
installed; then the checks of the arguments, the state through a checkpoint, and the route
through the device's Ops (one launch of the fused kernel on a GPU, recorded here on NumPy).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend.cuda import compile as raw_kernels
from gpunn.backend.cuda.ops import CupyOps
from gpunn.backend.ops import NumpyOps
from gpunn.optim import base

STEPS = 5

# (gpunn class, PyTorch class, keywords both take)
CASES = {
    "sgd": ("SGD", "SGD", {"lr": 0.1}),
    "sgd-momentum": ("SGD", "SGD", {"lr": 0.1, "momentum": 0.9}),
    "sgd-dampening": ("SGD", "SGD", {"lr": 0.1, "momentum": 0.8, "dampening": 0.3}),
    "sgd-nesterov": ("SGD", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd-weight-decay": ("SGD", "SGD", {"lr": 0.1, "weight_decay": 0.2}),
    "sgd-all": ("SGD", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-1}),
    "sgd-dampening-weight-decay": ("SGD", "SGD", {"lr": 0.1, "momentum": 0.7, "dampening": 0.5, "weight_decay": 0.3}),
    "adam-weight-decay": ("Adam", "Adam", {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-3, "weight_decay": 0.2}),
    "adamw": ("AdamW", "AdamW", {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-3, "weight_decay": 0.5}),
    "rmsprop-weight-decay": ("RMSprop", "RMSprop", {"lr": 0.05, "alpha": 0.9, "eps": 1e-2, "weight_decay": 0.2}),
    "adagrad-weight-decay": ("AdaGrad", "Adagrad", {"lr": 0.1, "eps": 1e-2, "weight_decay": 0.2}),
}


def make_model() -> gn.Sequential:
    return gn.mlp([3, 4, 2], dtype="float64", seed=0).to("cpu")


def gradients(seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = {p.name: p.shape for p in make_model().parameters()}
    return [{n: rng.standard_normal(s) * (1.0 + k) for n, s in shapes.items()} for k in range(STEPS)]


def set_grads(model: gn.Sequential, grads: dict[str, np.ndarray]) -> None:
    for p in model.parameters():
        p.grad[...] = grads[p.name]


@pytest.mark.parametrize("case", CASES)
def test_updates_match_torch_optim(case: str) -> None:
    torch = pytest.importorskip("torch")
    ours, theirs, kwargs = CASES[case]
    model = make_model()
    opt = getattr(gn.optim, ours)(model.parameters(), **kwargs)
    tensors = {p.name: torch.tensor(p.data.copy(), requires_grad=True) for p in model.parameters()}
    if ours == "AdamW":  # gpunn's AdamW decays the weights only: in torch, biases in a group without decay
        groups = [
            {"params": [t for n, t in tensors.items() if n.endswith("W")]},
            {"params": [t for n, t in tensors.items() if n.endswith("b")], "weight_decay": 0.0},
        ]
    else:
        groups = list(tensors.values())
    reference = getattr(torch.optim, theirs)(groups, **kwargs)
    for step, grads in enumerate(gradients()):
        set_grads(model, grads)
        for name, t in tensors.items():
            t.grad = torch.tensor(grads[name])
        opt.step()
        reference.step()
        for p in model.parameters():
            expected = tensors[p.name].detach().numpy()
            np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14, err_msg=f"{p.name}, step {step + 1}")
    if "momentum" in kwargs:  # the buffer is PyTorch's momentum_buffer
        state = opt.state_dict()["state"]
        for name, t in tensors.items():
            buffer = reference.state[t]["momentum_buffer"].numpy()
            np.testing.assert_allclose(state[name]["momentum_buffer"], buffer, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [gn.optim.SGD, gn.optim.Adam, gn.optim.RMSprop, gn.optim.AdaGrad])
def test_weight_decay_reaches_the_biases_as_in_pytorch(cls: type) -> None:
    """PyTorch's weight_decay acts on every parameter; gn.L2 on the weights only."""
    decayed, penalized = make_model(), make_model()
    opt_decay = cls(decayed.parameters(), lr=0.1, weight_decay=0.5)
    opt_l2 = cls(penalized.parameters(), lr=0.1)
    for model in (decayed, penalized):
        for p in model.parameters():
            p.data[...] = 1.0
            p.grad[...] = 0.0
    opt_decay.step()
    opt_l2.step(gn.L2(0.5))
    for p, q in zip(decayed.parameters(), penalized.parameters(), strict=True):
        assert np.all(p.data < 1.0), p.name  # decayed, biases too
        if p.name.endswith("W"):
            np.testing.assert_array_equal(p.data, q.data)  # the same term on the weights
        else:
            np.testing.assert_array_equal(q.data, 1.0)  # gn.L2 leaves the biases alone


def test_weight_decay_with_a_regularizer_adds_both() -> None:
    """weight_decay·W on every parameter plus the regularizer's λ·W on the weights: PyTorch's
    weight_decay on top of a penalty in the loss."""
    model = make_model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.data[...], p.grad[...] = 1.0, 0.0
    opt.step(gn.L2(0.25))
    for p in model.parameters():
        expected = 1.0 - 0.1 * (0.5 + (0.25 if p.name.endswith("W") else 0.0))
        np.testing.assert_allclose(p.data, expected, rtol=1e-15)


def test_sgd_without_dampening_is_the_textbook_momentum_bit_for_bit() -> None:
    for nesterov, textbook in ((False, gn.optim.Momentum), (True, gn.optim.Nesterov)):
        a, b = make_model(), make_model()
        opt_a = gn.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov)
        opt_b = textbook(b.parameters(), lr=0.1, momentum=0.9)
        for grads in gradients():
            set_grads(a, grads)
            set_grads(b, grads)
            opt_a.step(gn.L2(0.01))
            opt_b.step(gn.L2(0.01))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "message"),
    [
        (gn.optim.SGD, {"weight_decay": -1e-4}, ValueError, "weight_decay must be >= 0.0, got -0.0001"),
        (gn.optim.Adam, {"weight_decay": -1e-4}, ValueError, "weight_decay must be >= 0.0"),
        (gn.optim.RMSprop, {"weight_decay": float("nan")}, ValueError, "weight_decay must be finite"),
        (gn.optim.AdaGrad, {"weight_decay": "0.1"}, TypeError, "weight_decay must be a real number"),
        (gn.optim.SGD, {"momentum": -0.5}, ValueError, "momentum must be >= 0.0"),
        (gn.optim.SGD, {"momentum": 1.0}, ValueError, "momentum must be < 1.0"),
        (gn.optim.SGD, {"dampening": 1.5}, ValueError, "dampening must be <= 1.0"),
        (gn.optim.SGD, {"nesterov": True}, ValueError, "nesterov=True needs momentum > 0 and dampening = 0"),
        (
            gn.optim.SGD,
            {"momentum": 0.9, "dampening": 0.1, "nesterov": True},
            ValueError,
            "got momentum=0.9, dampening=0.1",
        ),
        (gn.optim.SGD, {"momentum": 0.9, "nesterov": "yes"}, TypeError, "nesterov must be True or False"),
    ],
)
def test_bad_values_name_the_argument(cls: type, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        cls(**kwargs)


def test_sgd_accepts_pytorch_positional_order() -> None:
    # torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)
    opt = gn.optim.SGD(None, 0.1, 0.9, 0.0, 1e-4, True)
    assert opt.hyperparameters() == {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 1e-4,
        "nesterov": True,
    }
    assert gn.optim.Adam(None, 1e-3, (0.9, 0.999), 1e-8, 1e-4).weight_decay == 1e-4


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.2}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
        ("adam", {"lr": 0.05, "weight_decay": 0.2}),
        ("adamw", {"lr": 0.05, "weight_decay": 0.3}),
        ("rmsprop", {"lr": 0.05, "weight_decay": 0.2}),
        ("adagrad", {"lr": 0.1, "weight_decay": 0.2}),
    ],
)
def test_checkpoint_round_trip_keeps_the_new_hyperparameters(tmp_path: Path, name: str, kwargs: dict) -> None:
    grads = gradients(seed=4)
    model = make_model()
    opt = gn.optim.create(name, model.parameters(), **kwargs)
    for g in grads[:2]:
        set_grads(model, g)
        opt.step()
    gn.save(tmp_path / "m.safetensors", model, opt)
    checkpoint = gn.checkpoint.read(tmp_path / "m.safetensors", device="cpu")
    resumed = checkpoint.optimizer()
    assert type(resumed) is type(opt)
    assert resumed.hyperparameters() == opt.hyperparameters() == {**resumed.hyperparameters(), **kwargs}
    # and state_dict / load_state_dict into an optimizer made with the defaults
    fresh_model = make_model()
    for p, q in zip(fresh_model.parameters(), model.parameters(), strict=True):
        p.data[...] = q.data
    loaded = gn.optim.create(name, fresh_model.parameters())
    loaded.load_state_dict(opt.state_dict())
    assert loaded.hyperparameters() == opt.hyperparameters()
    for g in grads[2:]:
        for m, o in ((model, opt), (checkpoint.model, resumed), (fresh_model, loaded)):
            set_grads(m, g)
            o.step()
    for other in (checkpoint.model, fresh_model):
        for p, q in zip(other.parameters(), model.parameters(), strict=True):
            np.testing.assert_array_equal(p.data, q.data)


def test_a_state_dict_with_a_bad_combination_is_refused_and_changes_nothing() -> None:
    opt = gn.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sd = opt.state_dict()
    target = gn.optim.SGD(make_model().parameters(), lr=0.2)
    sd["hyper"]["dampening"] = 0.5
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0 and dampening = 0"):
        target.load_state_dict(sd)
    assert target.hyperparameters()["lr"] == 0.2 and target.momentum == 0.0 and target.state_names == ()


def test_momentum_set_after_construction_starts_a_buffer() -> None:
    """As in PyTorch, where a param group's momentum may be changed: the buffer starts as g."""
    model, reference = make_model(), make_model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    expected = gn.optim.SGD(reference.parameters(), lr=0.1)
    grads = gradients()
    for m, o in ((model, opt), (reference, expected)):
        set_grads(m, grads[0])
        o.step()
    opt.momentum, opt.dampening = 0.9, 0.5
    fresh = gn.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    for g in grads[1:]:
        for m, o in ((model, opt), (reference, fresh)):
            set_grads(m, g)
            o.step()
    assert set(opt.state_dict()["state"]["0.W"]) == {"momentum_buffer"}
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_zero_grad_sets_every_gradient_to_zero_and_takes_pytorchs_keyword() -> None:
    model = make_model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for set_to_none in (True, False):
        set_grads(model, gradients()[0])
        opt.zero_grad(set_to_none=set_to_none)
        for p in model.parameters():
            np.testing.assert_array_equal(p.grad, 0.0)


# ----------------------------------------------------------------------------- through the device's Ops


class RecordingOps(NumpyOps):
    """The reference Ops, recording each update call's name and keywords."""

    def __init__(self) -> None:
        super().__init__(np)
        self.calls: list[tuple[str, dict]] = []

    def sgd_update(self, p, g, **kw):
        self.calls.append(("sgd_update", kw))
        super().sgd_update(p, g, **kw)

    def momentum_update(self, p, g, v, **kw):
        self.calls.append(("momentum_update", kw))
        super().momentum_update(p, g, v, **kw)

    def adam_update(self, p, g, m, v, **kw):
        self.calls.append(("adam_update", kw))
        super().adam_update(p, g, m, v, **kw)


@pytest.mark.parametrize(
    ("cls", "kwargs", "method"),
    [
        (gn.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-2}, "momentum_update"),
        (gn.optim.SGD, {"weight_decay": 1e-2}, "sgd_update"),
        (gn.optim.Adam, {"weight_decay": 1e-2}, "adam_update"),
    ],
)
def test_weight_decay_is_the_ops_l2_folding_over_every_element(monkeypatch, cls, kwargs, method) -> None:
    """One Ops call per step, weight_decay passed as the L2 term over the whole buffer
    (n_decay = every element): the fused kernel's own folding on a GPU."""
    ops = RecordingOps()
    monkeypatch.setattr(base, "ops_of", lambda x: ops)
    model = make_model()
    opt = cls(model.parameters(), lr=0.1, **kwargs)
    set_grads(model, gradients()[0])
    opt.step()
    assert [name for name, _ in ops.calls] == [method]
    kw = ops.calls[0][1]
    assert kw["n_decay"] == opt.flat.size and kw["l2"] == 1e-2 and kw["l1"] == 0.0
    assert kw.get("weight_decay", 0.0) == 0.0  # not Adam's decoupled decay


def test_cupy_ops_launch_one_kernel_for_sgd_momentum_with_weight_decay(monkeypatch) -> None:
    """On a GPU, SGD(momentum, nesterov, weight_decay) is one launch of the momentum kernel
    with the L2 term over every element (launches recorded on NumPy arrays)."""
    launches: list = []
    monkeypatch.setattr(raw_kernels, "is_gpu", lambda x: True)
    ops = CupyOps(np)
    monkeypatch.setattr(ops, "_update_kernel", lambda *launch: launches.append(launch))
    monkeypatch.setattr(base, "ops_of", lambda x: ops)
    model = make_model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    set_grads(model, gradients()[0])
    opt.step()
    [(name, _, _, _, args)] = launches
    assert name == "momentum_update"
    n, n_decay, lr, momentum, nesterov, l2, l1 = args[3:10]
    assert (n, n_decay, lr, momentum, nesterov, l2, l1) == (opt.flat.size, opt.flat.size, 0.1, 0.9, 1, 1e-2, 0.0)


def test_dampening_on_cupy_ops_is_the_reference() -> None:
    """Dampening has no fused kernel: CupyOps computes v ← μ·v + (1 − d)·g' with the reference."""
    w, g, v0 = (np.random.default_rng(0).standard_normal(9) for _ in range(3))
    results = []
    for ops in (NumpyOps(np), CupyOps(np)):
        p, v = w.copy(), v0.copy()
        ops.momentum_update(p, g, v, lr=0.1, momentum=0.8, dampening=0.3, n_decay=4, l2=0.1)
        results.append((p, v))
    (p, v), (p_cupy, v_cupy) = results
    np.testing.assert_array_equal(p_cupy, p)
    np.testing.assert_array_equal(v_cupy, v)
    e = g.copy()
    e[:4] += 0.1 * w[:4]
    np.testing.assert_allclose(v, 0.8 * v0 + 0.7 * e, rtol=1e-14)
    np.testing.assert_allclose(p, w - 0.1 * (0.8 * v0 + 0.7 * e), rtol=1e-14)
