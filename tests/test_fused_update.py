"""Penalties, clipping and live scalars folded into the fused optimizer update.

On the CPU through the NumPy twins: ``step(L2/L1)`` against ``regularizer.backward`` + ``step()``,
clipping against a PyTorch-order reference written out in float64, live-scalar mode against
eager steps; on a GPU (when there is one) the fused kernels against those twins.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_optim import CUSTOM, NAMES, RULES, gradients, make_model, params_numpy, set_grads, textbook_step

import gpunn as gn
from gpunn.backend import kernels
from gpunn.nn.parameter import FlatParameters

DTYPES = ("float64", "float32")
REGULARIZERS = {"l2": gn.L2, "l1": gn.L1}


def snapshot(model: gn.Sequential, opt: gn.optim.Optimizer) -> dict[str, np.ndarray]:
    """Every parameter and every state buffer, as NumPy copies."""
    out = {f"param {k}": v for k, v in params_numpy(model).items()}
    for key, buffers in opt.state_dict()["state"].items():
        for name, arr in buffers.items():
            out[f"state {key}.{name}"] = gn.to_numpy(arr).copy()
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=f"{what}: {key}")


def pair(rule: str, dtype: str, sizes: list[int] | None = None, **kwargs):
    """Two identical models with an optimizer each."""
    cls, hyper = CUSTOM[rule]
    sizes = sizes or [3, 4, 2]
    models = [gn.mlp(sizes, dtype=dtype, seed=0) for _ in range(2)]
    return [(m, cls(m.parameters(), **hyper, **kwargs)) for m in models]


def random_grads(model: gn.Sequential, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: scale * rng.standard_normal(p.shape).astype(p.data.dtype) for p in model.parameters()}


# ----------------------------------------------------------------------------- step(L2 / L1)


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_folded_penalty_equals_backward_then_step(rule, dtype, kind):
    """step(L2(λ)) gives bit for bit what L2(λ).backward(params) then step() gave (the old
    training loop), for every rule, in float32 and float64; and it leaves the gradient alone."""
    (fused_model, fused_opt), (old_model, old_opt) = pair(rule, dtype)
    regularizer = REGULARIZERS[kind](0.3)
    for grads in gradients(4, dtype, seed=11):
        set_grads(fused_model, grads)
        set_grads(old_model, grads)
        fused_opt.step(regularizer)
        regularizer.backward(old_model.parameters())
        old_opt.step()
        for p in fused_model.parameters():  # the loss gradient as it was set: the penalty went into the kernel
            np.testing.assert_array_equal(p.grad, grads[p.name].astype(dtype), err_msg=p.name)
        assert_same(snapshot(fused_model, fused_opt), snapshot(old_model, old_opt), f"{rule} {kind} {dtype}")
    assert fused_opt.step_count == old_opt.step_count == 4


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("rule", ["momentum", "adam", "rmsprop"])
def test_folded_penalty_in_pieces_equals_backward_then_step(rule, kind):
    """A model bigger than one CPU piece (CHUNK elements) whose weights end inside a piece:
    the weights prefix is translated piece by piece, still bit for bit."""
    sizes = [kernels.CHUNK // 250 + 1, 250, 10]  # two pieces, the weights end in the second
    (fused_model, fused_opt), (old_model, old_opt) = pair(rule, "float32", sizes)
    flat = fused_opt._current_flat()
    assert kernels.CHUNK < flat.n_decay < flat.size < 2 * kernels.CHUNK
    regularizer = REGULARIZERS[kind](0.05)
    for seed in range(3):
        grads = random_grads(fused_model, seed)
        set_grads(fused_model, grads)
        set_grads(old_model, grads)
        fused_opt.step(regularizer)
        regularizer.backward(old_model.parameters())
        old_opt.step()
    assert_same(snapshot(fused_model, fused_opt), snapshot(old_model, old_opt), f"{rule} {kind} in pieces")


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_penalty_acts_on_weights_only(kind):
    """With a zero loss gradient, SGD moves only the weights: W − lr·λ·W (L2) or
    W − lr·λ·sign(W) (L1); the biases stay exactly where they were."""
    model = make_model()
    for p in model.parameters():
        p.data[...] += 0.5  # biases start at zero: make them nonzero so a penalty on them would show
        p.grad[...] = 0.0
    before = params_numpy(model)
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    opt.step(REGULARIZERS[kind](0.2))
    for p in model.parameters():
        w = before[p.name]
        if not p.decay:
            np.testing.assert_array_equal(p.data, w, err_msg=p.name)
            continue
        step = 0.2 * w if kind == "l2" else 0.2 * np.sign(w)
        np.testing.assert_allclose(p.data, w - 0.1 * step, rtol=1e-15, atol=1e-16, err_msg=p.name)
        assert not np.array_equal(p.data, w)


def test_zero_coefficient_is_the_plain_step():
    (a_model, a_opt), (b_model, b_opt) = pair("adamw", "float32")
    grads = gradients(1, "float32")[0]
    set_grads(a_model, grads)
    set_grads(b_model, grads)
    a_opt.step(gn.L2(0.0))
    b_opt.step()
    assert_same(snapshot(a_model, a_opt), snapshot(b_model, b_opt), "L2(0)")


class HalfL2(gn.L2):
    """An L2 subclass with its own gradient: it must not be folded in as a plain L2."""

    def backward(self, params):
        for p in params:
            if p.decay:
                p.grad += 0.5 * self.lam * p.data


class Elastic(gn.Regularizer):
    """A user regularizer the kernel knows nothing of."""

    def forward(self, params):
        return sum(float((p.data**4).sum()) for p in params if p.decay) * self.lam

    def backward(self, params):
        for p in params:
            if p.decay:
                p.grad += 4 * self.lam * p.data**3


@pytest.mark.parametrize("regularizer", [HalfL2(0.3), Elastic(0.1)], ids=["L2 subclass", "other"])
def test_other_regularizers_run_their_backward(regularizer):
    (a_model, a_opt), (b_model, b_opt) = pair("momentum", "float64")
    assert regularizer.fused_coefficients() is None
    for grads in gradients(2, "float64"):
        set_grads(a_model, grads)
        set_grads(b_model, grads)
        a_opt.step(regularizer)
        regularizer.backward(b_model.parameters())
        b_opt.step()
    assert_same(snapshot(a_model, a_opt), snapshot(b_model, b_opt), type(regularizer).__name__)


def test_fused_coefficients_of_l2_and_l1():
    assert gn.L2(0.25).fused_coefficients() == (0.25, 0.0)
    assert gn.L1(0.5).fused_coefficients() == (0.0, 0.5)


def test_step_refuses_what_is_not_a_regularizer():
    model = make_model()
    opt = gn.optim.SGD(model.parameters())
    with pytest.raises(TypeError, match="regularizer"):
        opt.step(0.01)
    assert opt.step_count == 0


# ----------------------------------------------------------------------------- clipping


def pytorch_order_reference(rule, grads, weights, decay, states, t, max_norm, lam, kind):
    """One step in float64: clip the loss gradient by its global norm, then add the penalty's
    gradient on the weights, then the textbook update (torch.nn.utils.clip_grad_norm_, then an
    optimizer with weight decay)."""
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    factor = min(1.0, max_norm / (norm + 1e-6))
    _, hyper = CUSTOM[rule]
    out = {}
    for name in NAMES:
        g = grads[name].astype(np.float64) * factor
        if decay[name]:
            g = g + (lam * weights[name] if kind == "l2" else lam * np.sign(weights[name]))
        out[name] = textbook_step(rule, hyper, weights[name], g, states[name], t, decay[name])
    return out, factor


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_clipping_with_penalty_follows_pytorch_order(rule, dtype, kind):
    """max_grad_norm clips the loss gradient only; the penalty is added after (unclipped).
    Steps alternate between gradients far above and below the threshold."""
    cls, hyper = CUSTOM[rule]
    max_norm, lam = 1.0, 0.2
    model = make_model(dtype)
    opt = cls(model.parameters(), **hyper, max_grad_norm=max_norm)
    regularizer = REGULARIZERS[kind](lam)
    weights = {name: w.astype(np.float64) for name, w in params_numpy(model).items()}
    decay = {p.name: p.decay for p in model.parameters()}
    states: dict[str, dict] = {name: {} for name in NAMES}
    rtol, atol = (1e-12, 1e-14) if dtype == "float64" else (2e-5, 2e-6)
    factors = []
    for t, (grads, scale) in enumerate(zip(gradients(4, dtype, seed=3), (10.0, 0.01, 5.0, 0.02), strict=True), 1):
        grads = {k: (scale * v).astype(dtype) for k, v in grads.items()}
        set_grads(model, grads)
        opt.step(regularizer)
        weights, factor = pytorch_order_reference(rule, grads, weights, decay, states, t, max_norm, lam, kind)
        factors.append(factor)
        for p in model.parameters():
            np.testing.assert_array_equal(p.grad, grads[p.name], err_msg="the gradient buffer changed")
            np.testing.assert_allclose(
                p.data, weights[p.name], rtol=rtol, atol=atol, err_msg=f"{rule} {kind} step {t} {p.name}"
            )
    assert min(factors) < 0.2 and max(factors) == 1.0  # both regimes were exercised


@pytest.mark.parametrize("rule", RULES)
def test_clipping_below_the_threshold_changes_nothing(rule):
    """A factor of exactly 1 takes the plain path: bit for bit the unclipped step."""
    (a_model, a_opt), (b_model, b_opt) = pair(rule, "float32")
    a_opt.max_grad_norm = 1e6
    for grads in gradients(3, "float32"):
        set_grads(a_model, grads)
        set_grads(b_model, grads)
        a_opt.step()
        b_opt.step()
    assert_same(snapshot(a_model, a_opt), snapshot(b_model, b_opt), rule)


def test_clipping_scales_the_loss_gradient_of_every_parameter():
    """Against the in-place clip_grad_norm (which is unchanged): without a penalty the folded
    clip gives the same step up to rounding."""
    (a_model, a_opt), (b_model, b_opt) = pair("adam", "float64")
    a_opt.max_grad_norm = 0.5
    for grads in gradients(3, "float64", seed=4):
        grads = {k: 7.0 * v for k, v in grads.items()}
        set_grads(a_model, grads)
        set_grads(b_model, grads)
        a_opt.step()
        gn.optim.clip_grad_norm(b_model, 0.5)
        b_opt.step()
    for p, q in zip(a_model.parameters(), b_model.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-13, atol=1e-15, err_msg=p.name)


def test_clip_scale():
    assert kernels.clip_scale(1.0, np.array([16.0])) == pytest.approx(1.0 / (4.0 + 1e-6), rel=1e-15)
    assert kernels.clip_scale(10.0, 16.0) == 1.0
    assert kernels.clip_scale(1.0, np.array([np.inf])) == 0.0  # an overflowing norm: no step, like the kernel
    assert kernels.clip_scale(1.0, np.array([np.nan])) == 1.0  # fmin(1, NaN) is 1


# ----------------------------------------------------------------------------- the twins


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1001,), ()], ids=["1", "1001", "0-d out"])
def test_sum_of_squares_twin_is_a_dot(dtype, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1001 if shape == () else shape[0]).astype(dtype)
    out = np.full(shape if shape == () else (1,), np.nan)
    kernels.sum_of_squares(x, out)
    assert out.dtype == np.float64
    assert float(out.reshape(-1)[0]) == float(np.dot(x, x))
    np.testing.assert_allclose(float(out.reshape(-1)[0]), np.sum(x.astype(np.float64) ** 2), rtol=1e-6)


def test_advance_step_twin():
    live = np.array([0.1, 4.0])
    kernels.advance_step(live)
    np.testing.assert_array_equal(live, [0.1, 5.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("scale", "l2", "l1"), [(1.0, 0.3, 0.0), (1.0, 0.0, 0.2), (0.4, 0.3, 0.2), (0.4, 0.0, 0.0), (1.0, 0.3, 0.2)]
)
def test_effective_gradient_twin(dtype, scale, l2, l1):
    rng = np.random.default_rng(2)
    n, n_decay = 11, 7
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    p[2] = 0.0  # sign(0) = 0
    g_before = g.copy()
    tmp = np.full(2 * n, np.nan, dtype=dtype)
    e, rest = kernels.effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    p64, g64 = p.astype(np.float64), g.astype(np.float64)
    want = g64 * scale
    want[:n_decay] += l2 * p64[:n_decay] + l1 * np.sign(p64[:n_decay])
    magnitude = np.abs(g64) * scale
    magnitude[:n_decay] += l2 * np.abs(p64[:n_decay]) + l1
    err = np.abs(e.astype(np.float64) - want)
    assert np.all(err <= 3 * np.finfo(dtype).eps * magnitude), err.max()  # three roundings at most
    np.testing.assert_array_equal(g, g_before)
    assert e.dtype == np.dtype(dtype) and e.size == rest.size == n
    assert np.shares_memory(e, tmp) and np.shares_memory(rest, tmp) and not np.shares_memory(e, rest)


def test_effective_gradient_fast_path_is_the_gradient_itself():
    p, g, tmp = np.ones(5), np.arange(5.0), np.empty(10)
    for kwargs in ({}, {"n_decay": 5}, {"n_decay": 0, "l2": 0.3}, {"n_decay": 5, "l2": 0.0, "l1": 0.0}):
        e, rest = kernels.effective_gradient(p, g, tmp, **kwargs)
        assert e is g
        assert rest.size == 5
    with pytest.raises(ValueError, match="scratch"):
        kernels.effective_gradient(p, g, np.empty(9), n_decay=5, l2=0.3)


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
def test_plain_updates_skip_the_effective_gradient(monkeypatch, rule):
    """No penalty and a clipping factor of 1: the CPU runs today's update (the twin with the
    effective gradient is never called)."""
    monkeypatch.setattr(kernels, f"{rule}_reference", lambda *a, **k: pytest.fail("took the slow path"))
    (model, opt), _ = pair(rule, "float32")
    opt.max_grad_norm = 1e9
    set_grads(model, gradients(1, "float32")[0])
    opt.step(gn.L2(0.0))


@pytest.mark.parametrize("lanes", [2, 1])
def test_penalty_and_clip_in_pieces_and_threads_equal_one_pass(lanes):
    """Big buffers: pieces (half as long with a one-lane scratch) and threads, with a weights
    prefix ending inside a piece, give bit for bit the single pass of the twin."""
    size = kernels.PARALLEL_MIN + 12_345
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(size, dtype=np.float32), rng.standard_normal(size, dtype=np.float32)
    m, v = rng.standard_normal(size, dtype=np.float32), rng.random(size, dtype=np.float32)
    sq = np.array([float(g @ g)])
    hyper = {
        "n_decay": (2 * size) // 3 + 1,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        **kernels.adam_constants(1e-3, 0.9, 0.999, 3, 0.1),
    }
    expected = [a.copy() for a in (p, m, v)]
    kernels.adam_reference(
        expected[0],
        g,
        *expected[1:],
        np.empty(2 * size, np.float32),
        **hyper,
        scale=kernels.clip_scale(100.0, sq),
        l2=0.01,
        l1=0.001,
    )
    rows = kernels.scratch(size, np.float32, lanes=lanes)
    assert rows.shape == (kernels.cpu_workers(), lanes * kernels.CHUNK)
    kernels.adam_update(p, g, m, v, rows, **hyper, l2=0.01, l1=0.001, max_norm=100.0, sq_norm=sq)
    assert kernels.clip_scale(100.0, sq) < 0.5
    for got, want in zip((p, m, v), expected, strict=True):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- live scalars


def schedule_run(rule, dtype, live: bool, n_steps: int = 6, regularizer=None, max_grad_norm=None):
    """n_steps with a StepLR schedule that changes lr midway (and a regularizer / clipping)."""
    cls, hyper = CUSTOM[rule]
    model = make_model(dtype)
    opt = cls(model.parameters(), **hyper, max_grad_norm=max_grad_norm)
    if live:
        opt.use_live_scalars(True)
    schedule = gn.optim.StepLR(opt, step_size=2, gamma=0.5)
    for grads in gradients(n_steps, dtype, seed=21):
        set_grads(model, grads)
        opt.step(regularizer)
        schedule.step()
        if live:
            opt.sync_live_scalars()
    return model, opt


@pytest.mark.parametrize("extras", ["plain", "l2+clip"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_live_scalars_steps_equal_eager_steps(rule, dtype, extras):
    kwargs = {"regularizer": gn.L2(0.1), "max_grad_norm": 1.0} if extras == "l2+clip" else {}
    live_model, live_opt = schedule_run(rule, dtype, True, **kwargs)
    eager_model, eager_opt = schedule_run(rule, dtype, False, **kwargs)
    assert live_opt.lr == eager_opt.lr == CUSTOM[rule][1]["lr"] * 0.125
    assert live_opt.step_count == eager_opt.step_count == 6
    assert_same(snapshot(live_model, live_opt), snapshot(eager_model, eager_opt), f"{rule} live")
    np.testing.assert_array_equal(live_opt.live_scalars(), [live_opt.lr, 6.0])


def capturing(monkeypatch, on: bool = True) -> None:
    """Pretend the current stream is capturing: step() then records an uncounted step (on the
    CPU the twin still runs at once, which is what a replay does)."""
    monkeypatch.setattr(kernels, "is_capturing", lambda x: on)


@pytest.mark.parametrize("rule", ["sgd", "nesterov", "adam", "adamw"])
def test_replayed_steps_read_the_live_array(monkeypatch, rule):
    """A replay emulated on the CPU (a step taken while "capturing", then count_replayed_step)
    advances t in the array and takes lr from it; the host counts the replay."""
    live_model, live_opt = make_model(), CUSTOM[rule][0](**CUSTOM[rule][1])
    eager_model, eager_opt = make_model(), CUSTOM[rule][0](**CUSTOM[rule][1])
    live_opt.bind(live_model)
    eager_opt.bind(eager_model)
    live_opt.use_live_scalars(True)
    grads = gradients(5, "float64", seed=8)
    for k, g in enumerate(grads):
        if k == 3:  # a schedule moves lr between replays: synced into the array before the next one
            live_opt.lr = eager_opt.lr = 0.5 * eager_opt.lr
            live_opt.sync_live_scalars()
        set_grads(live_model, g)
        set_grads(eager_model, g)
        capturing(monkeypatch)
        live_opt.step()
        assert live_opt.step_count == k  # the captured step is not counted ...
        live_opt.count_replayed_step()  # ... its replay is
        monkeypatch.undo()
        eager_opt.step()
        assert live_opt.step_count == eager_opt.step_count == k + 1
        np.testing.assert_array_equal(live_opt.live_scalars(), [eager_opt.lr, k + 1.0])
    assert_same(snapshot(live_model, live_opt), snapshot(eager_model, eager_opt), rule)


@pytest.mark.parametrize("rule", RULES)
def test_the_update_takes_lr_and_t_from_the_array(monkeypatch, rule):
    """The values in live (not the host's) are what the update uses: write lr = 0.2, t = 9
    into it directly, and the step equals an eager step with lr 0.2 as update number 10."""
    cls, hyper = CUSTOM[rule]
    grads = gradients(1, "float64")[0]
    model, opt = make_model(), cls(**hyper)
    opt.bind(model)
    opt.use_live_scalars(True)
    live = opt.live_scalars()
    live[0], live[1] = 0.2, 9.0
    set_grads(model, grads)
    capturing(monkeypatch)  # no sync: the replay reads what the array holds
    opt.step()
    monkeypatch.undo()
    np.testing.assert_array_equal(live, [0.2, 10.0])

    expected_model, expected_opt = make_model(), cls(**{**hyper, "lr": 0.2})
    expected_opt.bind(expected_model)
    expected_opt.step_count = 9
    set_grads(expected_model, grads)
    expected_opt.step()
    assert_same(params_numpy(model), params_numpy(expected_model), "lr and t from live")
    assert not np.array_equal(model.parameters()[0].data, make_model().parameters()[0].data)


def test_capture_with_stale_scalars_refuses(monkeypatch):
    model = make_model()
    opt = gn.optim.Adam(model.parameters(), lr=0.01)
    opt.use_live_scalars(True)
    opt.lr = 0.02  # not synced
    before = params_numpy(model)
    set_grads(model, gradients(1, "float64")[0])
    capturing(monkeypatch)
    with pytest.raises(RuntimeError, match="sync_live_scalars"):
        opt.step()
    assert opt.step_count == 0
    assert_same(params_numpy(model), before, "nothing was updated")
    opt.sync_live_scalars()
    opt.step()  # now it may be captured
    np.testing.assert_array_equal(opt.live_scalars(), [0.02, 1.0])


def test_sync_writes_only_what_changed(monkeypatch):
    model = make_model()
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    opt.use_live_scalars(True)
    live = opt.live_scalars()
    assert opt.live_scalars() is live  # made once
    np.testing.assert_array_equal(live, [0.1, 0.0])
    live[...] = -1.0  # a sync with nothing changed on the host writes nothing ...
    opt.sync_live_scalars()
    np.testing.assert_array_equal(live, [-1.0, -1.0])
    opt.lr = 0.3  # ... and one after a change writes that value
    opt.sync_live_scalars()
    np.testing.assert_array_equal(live, [0.3, -1.0])
    opt.step_count = 7
    opt.sync_live_scalars()
    np.testing.assert_array_equal(live, [0.3, 7.0])


def test_count_replayed_step_needs_live_mode():
    model = make_model()
    opt = gn.optim.SGD(model.parameters())
    with pytest.raises(RuntimeError, match="live"):
        opt.count_replayed_step()
    opt.use_live_scalars(True)
    live = opt.live_scalars()
    kernels.advance_step(live)  # what a replay of a captured step does on the device ...
    opt.count_replayed_step()  # ... and what the host does after it
    assert opt.step_count == 1
    opt.sync_live_scalars()
    np.testing.assert_array_equal(live, [0.01, 1.0])
    opt.use_live_scalars(False)  # off: plain steps, the array left alone
    set_grads(model, gradients(1, "float64")[0])
    opt.step()
    assert opt.step_count == 2
    np.testing.assert_array_equal(live, [0.01, 1.0])
    opt.use_live_scalars(True)  # on again: synced
    np.testing.assert_array_equal(live, [0.01, 2.0])


def test_live_scalars_need_bound_parameters():
    with pytest.raises(RuntimeError, match="bind"):
        gn.optim.Adam(lr=0.01).use_live_scalars(True)


@pytest.mark.parametrize("rule", ["momentum", "adam"])
def test_state_dict_round_trip_in_live_mode(rule):
    cls, hyper = CUSTOM[rule]
    grads = gradients(6, "float64", seed=9)
    model = make_model()
    opt = cls(model.parameters(), **hyper)
    opt.use_live_scalars(True)
    for g in grads[:3]:
        set_grads(model, g)
        opt.step()
    sd = opt.state_dict()
    assert sd["step"] == 3

    resumed = make_model()
    for p, q in zip(resumed.parameters(), model.parameters(), strict=True):
        p.data[...] = q.data
    opt2 = cls(resumed.parameters(), lr=0.5)
    opt2.use_live_scalars(True)
    np.testing.assert_array_equal(opt2.live_scalars(), [0.5, 0.0])
    opt2.load_state_dict(sd)  # resyncs the array: lr and step come from the state
    np.testing.assert_array_equal(opt2.live_scalars(), [hyper["lr"], 3.0])
    for g in grads[3:]:
        set_grads(model, g)
        set_grads(resumed, g)
        opt.step()
        opt2.step()
    assert_same(snapshot(resumed, opt2), snapshot(model, opt), f"{rule} resumed in live mode")


def test_live_mode_follows_repacked_parameters():
    """A repack (what model.to does) rebinds the optimizer: the array is made anew there,
    holding the same lr and step."""
    model, still = make_model(), make_model()
    opt, opt_still = gn.optim.Adam(model.parameters(), lr=0.01), gn.optim.Adam(still.parameters(), lr=0.01)
    opt.use_live_scalars(True)
    grads = gradients(3, "float64", seed=6)
    for m, o in ((model, opt), (still, opt_still)):
        set_grads(m, grads[0])
        o.step()
    old_live = opt.live_scalars()
    FlatParameters(model.parameters(), model.device)
    for g in grads[1:]:
        for m, o in ((model, opt), (still, opt_still)):
            set_grads(m, g)
            o.step()
    assert opt.live_scalars() is not old_live
    np.testing.assert_array_equal(opt.live_scalars(), [0.01, 3.0])
    assert_same(snapshot(model, opt), snapshot(still, opt_still), "repacked in live mode")


# ----------------------------------------------------------------------------- fused kernels (GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_sum_of_squares_and_advance_step(gpu, dtype):
    cp = gpu.xp
    with gpu:
        x = cp.random.default_rng(0).standard_normal(3_000_001, dtype=dtype)
        out = cp.full(1, cp.nan)
        kernels.sum_of_squares(x, out)
        kernels.sum_of_squares(x, out)  # zeroed first: not twice the sum
        want = float(cp.sum(x.astype(cp.float64) ** 2))
        assert float(out[0]) == pytest.approx(want, rel=1e-12)
        live = cp.asarray([0.1, 4.0])
        kernels.advance_step(live)
        np.testing.assert_array_equal(live.get(), [0.1, 5.0])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_fused_penalty_clip_and_live_match_the_twins(gpu, rule, dtype, kind):
    """Steps on the GPU (penalty folded in, clipping, live scalars with a schedule) against the
    same steps through the CPU twins, within rounding."""
    kwargs = {"regularizer": REGULARIZERS[kind](0.1), "max_grad_norm": 1.0}
    runs = []
    for device in ("cpu", gpu):
        cls, hyper = CUSTOM[rule]
        model = make_model(dtype, device)
        opt = cls(model.parameters(), **hyper, max_grad_norm=kwargs["max_grad_norm"])
        opt.use_live_scalars(True)
        schedule = gn.optim.StepLR(opt, step_size=2, gamma=0.5)
        for grads in gradients(5, dtype, seed=21):
            set_grads(model, grads)
            opt.step(kwargs["regularizer"])
            schedule.step()
        runs.append((snapshot(model, opt), gn.to_numpy(opt.live_scalars())))
    (cpu, cpu_live), (fused, fused_live) = runs
    np.testing.assert_array_equal(fused_live, cpu_live)
    rtol, atol = (1e-12, 1e-14) if dtype == "float64" else (1e-5, 1e-6)
    for key in cpu:
        np.testing.assert_allclose(fused[key], cpu[key], rtol=rtol, atol=atol, err_msg=f"{rule} {kind} {key}")
