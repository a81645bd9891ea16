"""Learning-rate schedules: closed-form rates at each step, state_dict, argument checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gpunn as gn

BASE = 0.1
STEPS = 25


def opt(lr: float = BASE) -> gn.optim.Optimizer:
    return gn.optim.SGD(lr=lr)


def rates(scheduler: gn.optim.LRScheduler, n: int = STEPS) -> list[float]:
    """The optimizer's lr at construction and after each of ``n`` calls to step()."""
    out = [scheduler.optimizer.lr]
    for _ in range(n):
        returned = scheduler.step()
        assert returned == scheduler.optimizer.lr
        assert type(scheduler.optimizer.lr) is float
        out.append(scheduler.optimizer.lr)
    return out


def cosine(k: int, base: float, T: int, eta_min: float) -> float:
    k = min(k, T)
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * k / T)) / 2


def test_step_lr():
    got = rates(gn.optim.StepLR(opt(), step_size=3, gamma=0.5))
    expected = [BASE * 0.5 ** (k // 3) for k in range(STEPS + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert got[:3] == [BASE] * 3
    assert got[3] == pytest.approx(BASE / 2)


def test_step_lr_default_gamma_is_a_tenth():
    got = rates(gn.optim.StepLR(opt(), step_size=2), 5)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-14)


def test_exponential_lr():
    got = rates(gn.optim.ExponentialLR(opt(), gamma=0.9))
    np.testing.assert_allclose(got, [BASE * 0.9**k for k in range(STEPS + 1)], rtol=1e-14)


@pytest.mark.parametrize("eta_min", [0.0, 0.002])
def test_cosine_annealing_lr(eta_min):
    got = rates(gn.optim.CosineAnnealingLR(opt(), T_max=10, eta_min=eta_min))
    np.testing.assert_allclose(got, [cosine(k, BASE, 10, eta_min) for k in range(STEPS + 1)], rtol=1e-13, atol=1e-17)
    assert got[0] == BASE
    assert got[5] == pytest.approx((BASE + eta_min) / 2)
    assert got[10:] == pytest.approx([eta_min] * (STEPS - 9), abs=1e-16)  # stays at eta_min after T_max


def test_linear_warmup_alone():
    got = rates(gn.optim.LinearWarmup(opt(), warmup_steps=4, start_factor=0.25))
    expected = [BASE * (0.25 + 0.75 * k / 4) if k < 4 else BASE for k in range(STEPS + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert got[0] == pytest.approx(0.025)
    assert got[4:] == [BASE] * (STEPS - 3)


def test_linear_warmup_then_cosine():
    o = opt()
    after = gn.optim.CosineAnnealingLR(o, T_max=6, eta_min=0.01)
    warm = gn.optim.LinearWarmup(o, warmup_steps=5, start_factor=0.1, after=after)
    assert o.lr == pytest.approx(0.1 * BASE)
    got = rates(warm)
    expected = [BASE * (0.1 + 0.9 * k / 5) if k < 5 else cosine(k - 5, BASE, 6, 0.01) for k in range(STEPS + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    assert got[5] == pytest.approx(BASE)  # the cosine starts at the base rate, continuously
    assert got[11:] == pytest.approx([0.01] * (STEPS - 10))


def test_schedule_drives_the_update():
    """The next step() reads the scheduled rate: W moves by lr_k·g."""
    layer = gn.Linear(2, 1, dtype="float64", seed=0)
    o = gn.optim.SGD(layer.parameters(), lr=1.0)
    sched = gn.optim.StepLR(o, step_size=1, gamma=0.5)
    for k in range(4):
        before = layer.W.data.copy()
        layer.W.grad[...] = 1.0
        o.step()
        np.testing.assert_allclose(before - layer.W.data, 0.5**k, rtol=1e-15)
        sched.step()


def _make(kind: str, o: gn.optim.Optimizer) -> gn.optim.LRScheduler:
    if kind == "step":
        return gn.optim.StepLR(o, step_size=2, gamma=0.3)
    if kind == "exponential":
        return gn.optim.ExponentialLR(o, gamma=0.8)
    if kind == "cosine":
        return gn.optim.CosineAnnealingLR(o, T_max=7, eta_min=0.001)
    if kind == "warmup":
        return gn.optim.LinearWarmup(o, warmup_steps=3, start_factor=0.2)
    return gn.optim.LinearWarmup(
        o, warmup_steps=3, start_factor=0.2, after=gn.optim.CosineAnnealingLR(o, T_max=5, eta_min=0.001)
    )


@pytest.mark.parametrize("kind", ["step", "exponential", "cosine", "warmup", "warmup+cosine"])
def test_state_dict_round_trip(kind):
    first = _make(kind, opt())
    for _ in range(4):
        first.step()
    state = first.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain data, fit for a checkpoint's JSON

    o2 = opt()
    second = _make(kind, o2)
    assert o2.lr != first.optimizer.lr  # not yet restored
    second.load_state_dict(state)
    assert second.last_step == 4
    assert o2.lr == first.optimizer.lr
    for _ in range(10):
        assert second.step() == first.step()


@pytest.mark.parametrize(
    ("build", "error", "name"),
    [
        (lambda o: gn.optim.StepLR(o, step_size=0), ValueError, "step_size"),
        (lambda o: gn.optim.StepLR(o, step_size=2.5), TypeError, "step_size"),
        (lambda o: gn.optim.StepLR(o, step_size=2, gamma=0.0), ValueError, "gamma"),
        (lambda o: gn.optim.StepLR(o, step_size=2, gamma=-0.5), ValueError, "gamma"),
        (lambda o: gn.optim.ExponentialLR(o, gamma=0.0), ValueError, "gamma"),
        (lambda o: gn.optim.ExponentialLR(o, gamma=float("nan")), ValueError, "gamma"),
        (lambda o: gn.optim.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
        (lambda o: gn.optim.CosineAnnealingLR(o, T_max=10, eta_min=-0.1), ValueError, "eta_min"),
        (lambda o: gn.optim.LinearWarmup(o, warmup_steps=0), ValueError, "warmup_steps"),
        (lambda o: gn.optim.LinearWarmup(o, warmup_steps=3, start_factor=1.5), ValueError, "start_factor"),
        (lambda o: gn.optim.LinearWarmup(o, warmup_steps=3, start_factor=-0.1), ValueError, "start_factor"),
        (
            lambda o: gn.optim.LinearWarmup(o, warmup_steps=3, after=gn.optim.StepLR(opt(), step_size=1)),
            ValueError,
            "after",
        ),
        (lambda o: gn.optim.StepLR("sgd", step_size=1), TypeError, "optimizer"),
    ],
)
def test_bad_arguments_raise_with_their_name(build, error, name):
    o = opt()
    with pytest.raises(error, match=name):
        build(o)
    assert o.lr == BASE  # a refused schedule leaves the optimizer alone
