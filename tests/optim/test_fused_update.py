"""Penalties, clipping and device-resident step scalars folded into the optimizer update.

On the CPU (every Ops it has): ``step(L2/L1)`` against ``regularizer.backward`` + ``step()``,
clipping against a PyTorch-order reference written out in float64, updates reading lr and t
from ``NumpyOps.step_scalars`` against eager steps; on a GPU (when there is one) the fused
kernels against the CPU within rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_optim import CUSTOM, NAMES, RULES, gradients, make_model, params_numpy, set_grads, textbook_step

import gpunn as gn
from gpunn.backend.device import capturing_step
from gpunn.backend.ops import NumpyOps
from gpunn.backend.selection import all_ops, ops_for

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


@pytest.mark.parametrize("ops", all_ops(gn.device("cpu")), ids=lambda ops: ops.name)
def test_a_norm_that_overflows_stops_the_step_and_a_nan_norm_does_not_scale(ops):
    """s = fmin(1, max_norm / (√sq_norm + 1e-6)): an infinite norm gives s = 0 (no step, as the
    kernel), a NaN norm s = 1 (fmin ignores the NaN)."""
    for sq_norm, want in ((np.inf, [1.0, 2.0]), (np.nan, [0.5, 1.5])):
        p, g = np.array([1.0, 2.0]), np.array([0.5, 0.5])
        ops.sgd_update(p, g, lr=1.0, clip=(1.0, np.array([sq_norm])))
        np.testing.assert_array_equal(p, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_is_a_dot_in_the_dtype(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1001).astype(dtype)
    for ops in all_ops(gn.device("cpu")):
        out = np.full(1, np.nan)
        ops.sum_of_squares(x, out)
        assert out.dtype == np.float64 and float(out[0]) == float(np.dot(x, x))
        np.testing.assert_allclose(out[0], np.sum(x.astype(np.float64) ** 2), rtol=1e-6)


# ----------------------------------------------------------------------------- step scalars on the device


def scalar_steps(rule, dtype, on_device: bool, regularizer=None, max_grad_norm=None):
    """Six steps with a StepLR schedule that halves lr every second step (and a regularizer /
    clipping); ``on_device``: as a step graph runs them, the updates reading lr and t from an
    [lr, t] array that the host rewrites from the optimizer before each pair of steps."""
    cls, hyper = CUSTOM[rule]
    model = make_model(dtype)
    opt = cls(model.parameters(), **hyper, max_grad_norm=max_grad_norm)
    schedule = gn.optim.StepLR(opt, step_size=2, gamma=0.5)
    scalars = np.zeros(2)
    for k, grads in enumerate(gradients(6, dtype, seed=21)):
        set_grads(model, grads)
        if not on_device:
            opt.step(regularizer)
        else:
            if k % 2 == 0:
                scalars[...] = [opt.lr, opt.step_count]
            token = NumpyOps.step_scalars.set(scalars)
            try:
                opt.step(regularizer)
            finally:
                NumpyOps.step_scalars.reset(token)
        schedule.step()  # lr changes after every second step, before the array is rewritten
    return model, opt, scalars


@pytest.mark.parametrize("ops", ["reference", "auto"])
@pytest.mark.parametrize("extras", ["plain", "l2+clip"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_steps_reading_the_step_scalars_equal_eager_steps(monkeypatch, rule, dtype, extras, ops):
    monkeypatch.setenv("GPUNN_OPS", ops)
    kwargs = {"regularizer": gn.L2(0.1), "max_grad_norm": 1.0} if extras == "l2+clip" else {}
    device_model, device_opt, scalars = scalar_steps(rule, dtype, True, **kwargs)
    eager_model, eager_opt, _ = scalar_steps(rule, dtype, False, **kwargs)
    assert device_opt.lr == eager_opt.lr == CUSTOM[rule][1]["lr"] * 0.125
    assert device_opt.step_count == eager_opt.step_count == 6
    np.testing.assert_array_equal(scalars, [CUSTOM[rule][1]["lr"] * 0.25, 6.0])  # t advanced by each update
    assert_same(snapshot(device_model, device_opt), snapshot(eager_model, eager_opt), f"{rule} on the device")


@pytest.mark.parametrize("ops", all_ops(gn.device("cpu")), ids=lambda ops: ops.name)
@pytest.mark.parametrize("rule", RULES)
def test_the_update_takes_lr_and_t_from_the_step_scalars(monkeypatch, rule, ops):
    """The values in the array (not the optimizer's) are what the update uses: with [0.2, 9]
    there, the step equals an eager step with lr 0.2 as update number 10, and t becomes 10."""
    monkeypatch.setenv("GPUNN_OPS", ops.name if ops.name == "reference" else "auto")
    cls, hyper = CUSTOM[rule]
    grads = gradients(1, "float64")[0]
    model, opt = make_model(), cls(**hyper)
    opt.bind(model)
    scalars = np.array([0.2, 9.0])
    set_grads(model, grads)
    token = NumpyOps.step_scalars.set(scalars)
    try:
        opt.step()
    finally:
        NumpyOps.step_scalars.reset(token)
    np.testing.assert_array_equal(scalars, [0.2, 10.0])
    expected_model, expected_opt = make_model(), cls(**{**hyper, "lr": 0.2})
    expected_opt.bind(expected_model)
    expected_opt.step_count = 9
    set_grads(expected_model, grads)
    expected_opt.step()
    assert_same(params_numpy(model), params_numpy(expected_model), "lr and t from the array")
    assert not np.array_equal(model.parameters()[0].data, make_model().parameters()[0].data)


# ----------------------------------------------------------------------------- fused kernels (GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_sum_of_squares_and_step_scalars(gpu, dtype):
    cp, ops = gpu.xp, ops_for(gpu)
    with gpu:
        x = cp.random.default_rng(0).standard_normal(3_000_001, dtype=dtype)
        out = cp.full(1, cp.nan)
        ops.sum_of_squares(x, out)
        ops.sum_of_squares(x, out)  # zeroed first: not twice the sum
        want = float(cp.sum(x.astype(cp.float64) ** 2))
        assert float(out[0]) == pytest.approx(want, rel=1e-12)
        p, g, scalars = cp.ones(5, dtype=dtype), cp.ones(5, dtype=dtype), cp.asarray([0.25, 4.0])
        token = NumpyOps.step_scalars.set(scalars)
        try:
            ops.sgd_update(p, g, lr=1.0)  # lr and t from the array
        finally:
            NumpyOps.step_scalars.reset(token)
        np.testing.assert_array_equal(scalars.get(), [0.25, 5.0])
        np.testing.assert_array_equal(p.get(), np.full(5, 0.75, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_fused_penalty_clip_and_step_scalars_match_the_cpu(gpu, rule, dtype, kind):
    """Steps on the GPU (penalty folded in, clipping, lr and t from the device with a schedule)
    against the same steps on the CPU, within rounding."""
    regularizer = REGULARIZERS[kind](0.1)
    runs = []
    for device in ("cpu", gpu):
        cls, hyper = CUSTOM[rule]
        model = make_model(dtype, device)
        opt = cls(model.parameters(), **hyper, max_grad_norm=1.0)
        schedule = gn.optim.StepLR(opt, step_size=2, gamma=0.5)
        xp = gn.device(device).xp
        for grads in gradients(5, dtype, seed=21):
            set_grads(model, grads)
            scalars = xp.asarray([opt.lr, float(opt.step_count)])
            token = NumpyOps.step_scalars.set(scalars)
            try:
                opt.step(regularizer)
            finally:
                NumpyOps.step_scalars.reset(token)
            schedule.step()
        runs.append((snapshot(model, opt), gn.to_numpy(scalars)))
    (cpu, cpu_scalars), (fused, fused_scalars) = runs
    np.testing.assert_array_equal(fused_scalars, cpu_scalars)
    rtol, atol = (1e-12, 1e-14) if dtype == "float64" else (1e-5, 1e-6)
    for key in cpu:
        np.testing.assert_allclose(fused[key], cpu[key], rtol=rtol, atol=atol, err_msg=f"{rule} {kind} {key}")


def test_the_reference_refuses_to_read_device_step_scalars_during_a_capture():
    """On a GPU under GPUNN_OPS=reference, the reference's update reads [lr, t] back to the host,
    which a capture cannot do: it says so (StepCaptureError, the capture then falls back to
    eager steps) instead of CuPy's error from deep inside. A NumPy subclass stands in for the
    device array; NumPy's own arrays (the CPU's emulated replay) are read as ever."""

    class DeviceLike(np.ndarray):
        pass

    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    ops = NumpyOps(np)
    for scalars, raises in ((np.array([0.1, 0.0]), False), (np.array([0.1, 0.0]).view(DeviceLike), True)):
        token = NumpyOps.step_scalars.set(scalars)
        try:
            with capturing_step():
                if raises:
                    with pytest.raises(gn.StepCaptureError, match="learning rate and number"):
                        ops.sgd_update(p, g, lr=1.0)
                else:
                    ops.sgd_update(p, g, lr=1.0)
        finally:
            NumpyOps.step_scalars.reset(token)
    np.testing.assert_allclose(p, 0.9)  # the NumPy run took lr = 0.1 from the array
