"""A small model's CPU update (gpunn.optim.cpu_update) is optimizer.step's, bit for bit.

Two copies of one set of parameters are stepped from the same gradients, one through
``optimizer.step(regularizer)`` and one through :class:`SmallUpdate`, for every rule, with the
hyperparameters and the penalty changing between steps as scikit-learn's loops change them;
parameters, moments and step counts must be equal at every step. What it does not do (clipping,
live scalars, L1, a subclass, a big buffer, a rebound optimizer) must reach optimizer.step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gpunn as gn
import gpunn.train.cpu_step
from gpunn import optim
from gpunn.backend.kernels import CHUNK
from gpunn.nn.parameter import Parameter
from gpunn.optim.cpu_update import SmallUpdate, compile_update


def _params(dtype: Any, bias: bool = True, seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    params = [
        Parameter(rng.standard_normal((13, 7)).astype(dtype), "W0"),
        Parameter(rng.standard_normal((7, 3)).astype(dtype), "W1"),
    ]
    if bias:
        params += [Parameter(rng.standard_normal(7).astype(dtype), "b0", decay=False)]
        params += [Parameter(rng.standard_normal(3).astype(dtype), "b1", decay=False)]
    return params


def _pair(cls: type, dtype: Any = np.float32, bias: bool = True, **hyper: Any) -> tuple[Any, Any, Any]:
    """(reference optimizer, optimizer driven by the fast update, the fast update)."""
    reference = cls(_params(dtype, bias), **hyper)
    fast = cls(_params(dtype, bias), **hyper)
    update = compile_update(fast)
    assert isinstance(update, SmallUpdate)
    return reference, fast, update


def _set_grads(opts: tuple[Any, ...], rng: np.random.Generator) -> None:
    grad = rng.standard_normal(opts[0]._flat.size)
    for opt in opts:
        opt._flat.grad[...] = grad.astype(opt._flat.dtype)


def _assert_same(reference: Any, fast: Any) -> None:
    assert fast.step_count == reference.step_count
    assert np.array_equal(fast._flat.data, reference._flat.data)
    for name in reference.state_names:
        assert np.array_equal(fast._state[name], reference._state[name]), name


def _step_both(reference: Any, fast: Any, update: Any, rng: np.random.Generator, regularizer: Any = None) -> None:
    """One step from the same new gradients, by optimizer.step and by the small update; the
    same bits after it."""
    _set_grads((reference, fast), rng)
    reference.step(regularizer)
    update(regularizer)
    _assert_same(reference, fast)


# each rule, and the hyperparameters a schedule or scikit-learn's loops change between steps
RULES = {
    optim.SGD: {"lr": 0.05},
    optim.Momentum: {"lr": 0.05, "momentum": 0.9},
    optim.Nesterov: {"lr": 0.05, "momentum": 0.9},
    optim.AdaGrad: {"lr": 0.05, "eps": 1e-10},
    optim.RMSprop: {"lr": 0.01, "alpha": 0.99, "eps": 1e-8},
    optim.Adam: {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8},
    optim.AdamW: {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05},
}


def _changed(hyper: dict[str, Any], i: int) -> dict[str, Any]:
    """Every hyperparameter of ``hyper`` moved for step i (lr decays, the others drift)."""
    moved = {}
    for name, value in hyper.items():
        if name == "betas":
            moved[name] = (0.9 - 0.01 * i, 0.999 - 0.001 * i)
        elif name in ("momentum", "alpha"):
            moved[name] = value - 0.01 * i
        else:
            moved[name] = value / (1 + i)
    return moved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", list(RULES), ids=lambda c: c.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_optimizer_step_bit_for_bit(cls, dtype, bias):
    reference, fast, update = _pair(cls, dtype, bias, **RULES[cls])
    rng = np.random.default_rng(1)
    penalty_ref, penalty_fast = gn.L2(1e-2), gn.L2(1e-2)
    # no penalty, an L2 whose coefficient changes per batch (as scikit-learn's loop sets it),
    # a zero L2, and hyperparameters changed between steps
    plan = [None, "l2", "l2", None, "zero", "l2", None, "l2"]
    for i, kind in enumerate(plan):
        _set_grads((reference, fast), rng)
        for opt in (reference, fast):
            for name, value in _changed(RULES[cls], i).items():
                setattr(opt, name, value)
        if kind is None:
            reference.step()
            update(None)
        else:
            lam = 0.0 if kind == "zero" else 1e-2 / (i + 1)
            penalty_ref.lam = penalty_fast.lam = lam
            reference.step(penalty_ref)
            update(penalty_fast)
        _assert_same(reference, fast)


@pytest.mark.parametrize("cls", [optim.Momentum, optim.Nesterov])
def test_nesterov_is_read_from_the_optimizer_as_its_update_reads_it(cls):
    reference, fast, update = _pair(cls, lr=0.05)
    rng = np.random.default_rng(6)
    for flip in (True, False, True):
        for opt in (reference, fast):
            opt.nesterov = flip if cls is optim.Momentum else not flip
        _step_both(reference, fast, update, rng)


def test_a_hyperparameter_that_is_not_a_number_goes_to_optimizer_step():
    # an array set as lr: NumPy's own arithmetic with it, which a 0-d operand would not mirror
    reference, fast, update = _pair(optim.Adam, lr=1e-2)
    rng = np.random.default_rng(7)
    for i in range(3):
        for opt in (reference, fast):
            opt.lr = np.array([0.01 / (i + 1)])
        _step_both(reference, fast, update, rng)


def test_the_compiled_step_updates_through_it():
    """CompiledStep (Trainer.fit's and the estimators' CPU step) takes it for a small model;
    tests/test_cpu_step.py checks those steps against the layered ones bit for bit."""
    model = gn.mlp([6, 8, 3], seed=0)
    step = gpunn.train.cpu_step.CompiledStep(model, gn.SoftmaxWithLoss(), optim.Adam(model.parameters()), gn.L2(1e-3))
    assert isinstance(step._update, SmallUpdate)


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda opt: setattr(opt, "max_grad_norm", 0.5), id="clipping"),
        pytest.param(lambda opt: opt.use_live_scalars(), id="live-scalars"),
        pytest.param(lambda opt: opt.bind(opt.params), id="rebound"),
    ],
)
def test_what_it_does_not_do_goes_to_optimizer_step(setup):
    reference, fast, update = _pair(optim.Adam, lr=1e-2)
    for opt in (reference, fast):
        setup(opt)
    rng = np.random.default_rng(3)
    for _ in range(3):
        _step_both(reference, fast, update, rng, gn.L2(1e-3))


def test_an_l1_penalty_goes_to_optimizer_step():
    reference, fast, update = _pair(optim.Adam)
    rng = np.random.default_rng(4)
    for _ in range(3):
        _step_both(reference, fast, update, rng, gn.L1(1e-2))


def test_a_wrong_regularizer_raises_as_optimizer_step_does():
    _, fast, update = _pair(optim.Adam)
    with pytest.raises(TypeError, match="regularizer must be"):
        update(0.01)
    assert fast.step_count == 0


def test_a_failed_update_is_not_counted():
    _, fast, update = _pair(optim.Adam)
    fast._flat.data.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        update(None)
    assert fast.step_count == 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: type("MyAdam", (optim.Adam,), {})(_params(np.float32)), id="a-subclass"),
        pytest.param(optim.Adam, id="unbound"),
        pytest.param(lambda: optim.Adam([Parameter(np.zeros(CHUNK + 1, np.float32))]), id="more-than-one-piece"),
    ],
)
def test_compile_update_leaves_the_rest_to_optimizer_step(make):
    opt = make()
    assert compile_update(opt) == opt.step
