"""Losses and regularizers against independent NumPy formulas, including extreme logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend.ops import NumpyOps


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------- SoftmaxWithLoss


def test_softmax_with_loss_value_and_gradient(device, rng):
    z = rng.standard_normal((7, 4))
    t = rng.integers(0, 4, 7)
    criterion = gn.SoftmaxWithLoss()
    loss = criterion.forward(device.send(z), device.send(t))
    assert loss.shape == ()
    assert gn.device_of(loss) == device
    expected = -np.mean(_np_log_softmax(z)[np.arange(7), t])
    np.testing.assert_allclose(float(gn.to_numpy(loss)), expected, rtol=1e-12)

    grad = gn.to_numpy(criterion.backward())
    softmax = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(4)[t]
    np.testing.assert_allclose(grad, (softmax - onehot) / 7, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_with_loss_labels_pick_the_same_bits_across_changing_shapes(dtype, rng):
    """The reference gathers z[n, t_n] at the flat offsets n·C + t_n: bit for bit the
    fancy-indexed formula, whatever the batch size or class count of each call. With few
    classes the row sums are the product exp·1 (see test_row_sums_*)."""
    loss = gn.SoftmaxWithLoss()
    for n, c in [(5, 3), (7, 4), (5, 4), (5, 3), (1, 1)]:
        z = rng.standard_normal((n, c)).astype(dtype)
        t = rng.integers(0, c, n)
        value, grad = loss.forward(z, t), loss.backward()
        rows = np.arange(n)
        shifted = z - z.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = (exp @ np.ones(c, dtype))[:, None]
        expected = (np.log(sums).sum() - shifted[rows, t].sum()) * (1.0 / n)
        expected_grad = exp / sums
        expected_grad[rows, t] -= 1.0
        expected_grad *= 1.0 / n
        assert value.dtype == np.dtype(dtype) and value == expected.astype(dtype), (n, c)
        np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_classes", [1, 10, 32, 33, 300])
def test_row_sums_are_a_product_for_few_classes_and_a_sum_otherwise(dtype, n_classes, rng):
    """Up to 32 columns the NumPy path sums each row as x·1 (one BLAS product: NumPy's
    per-row reduction of a short axis is 2–3× slower); wider rows use x.sum(axis=1). Either
    way the sums agree to rounding, shaped (N, 1)."""
    x = np.exp(rng.standard_normal((37, n_classes))).astype(dtype)
    sums = NumpyOps(np)._row_sums(x)
    assert sums.shape == (37, 1) and sums.dtype == np.dtype(dtype)
    exact = x.sum(axis=1, keepdims=True)
    if n_classes <= 32:
        np.testing.assert_array_equal(sums, (x @ np.ones(n_classes, dtype))[:, None])
    else:
        np.testing.assert_array_equal(sums, exact)
    np.testing.assert_allclose(sums, exact, rtol=1e-6 if dtype == "float32" else 1e-14)
    column_major = np.asfortranarray(x)  # any layout (BLAS takes it as the transposed product)
    np.testing.assert_allclose(NumpyOps(np)._row_sums(column_major), exact, rtol=1e-6 if dtype == "float32" else 1e-14)


def test_softmax_with_loss_int_labels_equal_one_hot(device, rng):
    z = device.send(rng.standard_normal((9, 5)))
    t = rng.integers(0, 5, 9)
    by_label, by_onehot = gn.SoftmaxWithLoss(), gn.SoftmaxWithLoss()
    loss_label = float(gn.to_numpy(by_label.forward(z, device.send(t))))
    loss_onehot = float(gn.to_numpy(by_onehot.forward(z, device.send(np.eye(5)[t]))))
    assert loss_label == pytest.approx(loss_onehot, rel=1e-12)
    np.testing.assert_allclose(gn.to_numpy(by_label.backward()), gn.to_numpy(by_onehot.backward()), rtol=1e-12)


def test_softmax_with_loss_integer_one_hot_dtype(rng):
    z = rng.standard_normal((4, 3))
    t = np.array([2, 0, 1, 1])
    a = float(gn.SoftmaxWithLoss().forward(z, np.eye(3, dtype=np.int64)[t]))
    b = float(gn.SoftmaxWithLoss().forward(z, t))
    assert a == pytest.approx(b, rel=1e-12)


def test_softmax_with_loss_soft_targets(rng):
    z = rng.standard_normal((5, 3))
    p = rng.random((5, 3))
    t = p / p.sum(axis=1, keepdims=True)
    criterion = gn.SoftmaxWithLoss()
    loss = float(criterion.forward(z, t))
    assert loss == pytest.approx(-(t * _np_log_softmax(z)).sum() / 5, rel=1e-12)
    softmax = np.exp(_np_log_softmax(z))
    np.testing.assert_allclose(criterion.backward(), (softmax - t) / 5, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_with_loss_is_stable_for_huge_logits(device, dtype):
    z = device.send(np.array([[1000.0, -1000.0], [1000.0, 1001.0]], dtype=dtype))
    t = device.send(np.array([1, 1]))
    criterion = gn.SoftmaxWithLoss()
    loss = float(gn.to_numpy(criterion.forward(z, t)))
    # row 0: a confidently wrong prediction costs 2000 (log(y + 1e-7) would have capped it at 16)
    expected = (2000.0 + math.log1p(math.exp(-1.0))) / 2
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-6)
    grad = gn.to_numpy(criterion.backward())
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad[0], [0.5, -0.5], atol=1e-7)


def test_softmax_with_loss_keeps_float32(device, rng):
    z = device.send(rng.standard_normal((4, 3)).astype(np.float32))
    criterion = gn.SoftmaxWithLoss()
    loss = criterion.forward(z, device.send(np.array([0, 1, 2, 0])))
    assert loss.dtype == np.float32
    assert criterion.backward().dtype == np.float32


def test_softmax_with_loss_does_not_modify_logits(rng):
    z = rng.standard_normal((4, 3))
    z_before = z.copy()
    criterion = gn.SoftmaxWithLoss()
    criterion.forward(z, np.array([0, 1, 2, 0]))
    criterion.backward()
    np.testing.assert_array_equal(z, z_before)


# (one-hot or probability targets, what the message adds) that SoftmaxWithLoss refuses when validating
BAD_TARGET_ROWS = {
    "negative": ([[-0.5, 1.5, 0.0], [1.0, 0.0, 0.0]], r"got a negative entry \(-0\.5\), first in row 0"),
    "sum above 1": ([[0.5, 0.6, 0.0], [1.0, 0.0, 0.0]], r"got row 0 summing to 1\.1"),
    "zero row": ([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], r"got row 1 summing to 0"),
    "NaN": ([[np.nan, 1.0, 0.0], [1.0, 0.0, 0.0]], r"got NaN"),
    "inf": ([[np.inf, 0.0, 0.0], [1.0, 0.0, 0.0]], r"summing to inf"),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", sorted(BAD_TARGET_ROWS))
def test_softmax_with_loss_refuses_target_rows_that_are_not_distributions(device, bad, dtype):
    rows, message = BAD_TARGET_ROWS[bad]
    z, t = device.send(np.zeros((2, 3), dtype)), device.send(np.array(rows, dtype))
    with pytest.raises(ValueError, match=r"^t must hold one-hot or probability rows .*" + message):
        gn.SoftmaxWithLoss().forward(z, t)
    with np.errstate(invalid="ignore"):  # inf targets make NaN, unchecked without validate
        gn.SoftmaxWithLoss(validate=False).forward(z, t)  # a training step's call reads nothing back


@pytest.mark.parametrize(
    ("z_dtype", "t_dtype", "excess", "accepted"),
    [
        ("float32", "float32", 5e-4, True),  # float32: rows may miss 1 by 1e-3
        ("float64", "float32", 5e-4, True),  # targets rounded to float32 have float32's tolerance
        ("float64", "float64", 5e-4, False),  # float64: 1e-6
        ("float64", "float64", 5e-7, True),
        ("float32", "float32", 2e-3, False),
    ],
)
def test_softmax_with_loss_row_sum_tolerance_follows_the_dtype(z_dtype, t_dtype, excess, accepted):
    z = np.zeros((2, 3), z_dtype)
    t = np.array([[0.25, 0.75 + excess, 0.0], [0.0, 0.0, 1.0]], t_dtype)
    if accepted:
        gn.SoftmaxWithLoss().forward(z, t)
    else:
        with pytest.raises(ValueError, match=r"^t must hold one-hot or probability rows .*got row 0 summing to 1\.00"):
            gn.SoftmaxWithLoss().forward(z, t)


@pytest.mark.parametrize("make", [gn.SoftmaxWithLoss, gn.MSELoss, gn.SigmoidBCELoss], ids=lambda m: m.__name__)
def test_loss_backward_before_forward_says_to_call_forward(make):
    with pytest.raises(RuntimeError, match=rf"^{make.__name__}\.backward called before forward; call forward"):
        make().backward()


# ----------------------------------------------------------------------------- MSELoss


@pytest.mark.parametrize("shape", [(6, 3), (6,), (6, 1)])
def test_mse_value_and_gradient(device, rng, shape):
    y, t = rng.standard_normal(shape), rng.standard_normal(shape)
    criterion = gn.MSELoss()
    loss = criterion.forward(device.send(y), device.send(t))
    assert loss.shape == ()
    np.testing.assert_allclose(float(gn.to_numpy(loss)), np.sum((y - t) ** 2) / (2 * 6), rtol=1e-12)
    np.testing.assert_allclose(gn.to_numpy(criterion.backward()), (y - t) / 6, rtol=1e-12)


def test_mse_accepts_flat_targets_for_column_output(rng):
    y, t = rng.standard_normal((5, 1)), rng.standard_normal(5)
    criterion = gn.MSELoss()
    loss = float(criterion.forward(y, t))
    assert loss == pytest.approx(np.sum((y[:, 0] - t) ** 2) / 10, rel=1e-12)
    assert criterion.backward().shape == (5, 1)


@pytest.mark.parametrize(("criterion", "target"), [(gn.MSELoss(), 0.0), (gn.SigmoidBCELoss(), 1.0)])
def test_mse_and_sigmoid_bce_keep_float32(rng, criterion, target):
    y = rng.standard_normal((4, 2)).astype(np.float32)
    assert criterion.forward(y, np.full((4, 2), target, np.float32)).dtype == np.float32
    assert criterion.backward().dtype == np.float32


# ----------------------------------------------------------------------------- SigmoidBCELoss


def test_sigmoid_bce_value_and_gradient(device, rng):
    z, t = 2.0 * rng.standard_normal((6, 2)), rng.random((6, 2))
    criterion = gn.SigmoidBCELoss()
    loss = criterion.forward(device.send(z), device.send(t))
    s = 1.0 / (1.0 + np.exp(-z))
    expected = np.sum(-t * np.log(s) - (1.0 - t) * np.log(1.0 - s)) / 6
    assert loss.shape == ()
    np.testing.assert_allclose(float(gn.to_numpy(loss)), expected, rtol=1e-12)
    np.testing.assert_allclose(gn.to_numpy(criterion.backward()), (s - t) / 6, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_bce_extreme_logits_match_analytic_limit(device, dtype):
    # For |z| → ∞: L(z, t) → max(z, 0) − z·t; σ(z) → [z > 0].
    z = np.array([1000.0, 1000.0, -1000.0, -1000.0])
    t = np.array([1.0, 0.0, 1.0, 0.0])
    criterion = gn.SigmoidBCELoss()
    loss = float(gn.to_numpy(criterion.forward(device.send(z.astype(dtype)), device.send(t.astype(dtype)))))
    per_sample = np.array([0.0, 1000.0, 1000.0, 0.0])
    assert math.isfinite(loss)
    assert loss == pytest.approx(per_sample.mean(), rel=1e-6)
    grad = gn.to_numpy(criterion.backward())
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, (np.array([1.0, 1.0, 0.0, 0.0]) - t) / 4, atol=1e-7)


def test_sigmoid_bce_column_output_with_flat_targets(rng):
    z, t = rng.standard_normal((5, 1)), rng.integers(0, 2, 5)
    loss = float(gn.SigmoidBCELoss().forward(z, t))
    s = 1.0 / (1.0 + np.exp(-z[:, 0]))
    assert loss == pytest.approx(np.mean(-t * np.log(s) - (1 - t) * np.log(1 - s)), rel=1e-12)


# ----------------------------------------------------------------------------- regularizers


def test_l2_penalizes_weights_only(device, rng):
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0).to(device)
    for p in model.parameters():
        p.data[...] = device.send(rng.standard_normal(p.shape))
    weights = [gn.to_numpy(p.data).copy() for p in model.parameters() if p.decay]
    lam = 0.3
    R = gn.L2(lam).forward(model)
    assert R.shape == ()
    np.testing.assert_allclose(float(gn.to_numpy(R)), 0.5 * lam * sum((w**2).sum() for w in weights), rtol=1e-12)


def test_l2_backward_adds_lambda_w(device, rng):
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0).to(device)
    before = {}
    for p in model.parameters():
        p.grad[...] = device.send(rng.standard_normal(p.shape))
        before[p.name] = gn.to_numpy(p.grad).copy()
    gn.L2(0.25).backward(model.parameters())
    for p in model.parameters():
        expected = before[p.name] + (0.25 * gn.to_numpy(p.data) if p.decay else 0.0)
        np.testing.assert_allclose(gn.to_numpy(p.grad), expected, rtol=1e-12, err_msg=p.name)


def test_l1_value_and_gradient(rng):
    W = gn.Parameter(rng.standard_normal((3, 4)), "W")
    b = gn.Parameter(rng.standard_normal(4), "b", decay=False)
    reg = gn.L1(0.1)
    assert float(reg.forward([W, b])) == pytest.approx(0.1 * np.abs(W.data).sum(), rel=1e-12)
    reg.backward([W, b])
    np.testing.assert_allclose(W.grad, 0.1 * np.sign(W.data), rtol=1e-12)
    np.testing.assert_array_equal(b.grad, 0.0)


def test_l2_on_unpacked_non_contiguous_parameter(rng):
    # A Parameter built from a Fortran-ordered (e.g. transposed) array must still get λ·W.
    W = gn.Parameter(np.asfortranarray(rng.standard_normal((3, 4))), "W")
    gn.L2(1.0).backward([W])
    np.testing.assert_allclose(W.grad, W.data, rtol=1e-12)


@pytest.mark.parametrize("reg", [gn.L2(0.1), gn.L1(0.1)], ids=["L2", "L1"])
def test_regularizer_keeps_float32(reg):
    model = gn.mlp([4, 8, 3], seed=0)
    assert reg.forward(model).dtype == np.float32
    reg.backward(model)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_zero_lambda_is_allowed_and_adds_nothing():
    model = gn.mlp([4, 8, 3], dtype="float64", seed=0)
    assert float(gn.L2(0.0).forward(model)) == 0.0
    assert float(gn.L1(0).forward(model)) == 0.0


@pytest.mark.parametrize("bad", [np.nan, -0.1, 1.5, np.inf])
def test_sigmoid_bce_refuses_targets_outside_the_unit_interval_or_nan(device, bad):
    z, t = device.send(np.zeros((2, 2))), device.send(np.array([[0.0, 1.0], [0.5, bad]]))
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\] for binary cross-entropy, got min"):
        gn.SigmoidBCELoss().forward(z, t)
    with np.errstate(invalid="ignore"):  # inf targets make NaN, unchecked without validate
        gn.SigmoidBCELoss(validate=False).forward(z, t)  # a training step's call reads nothing back


@pytest.mark.parametrize("layout", ["fortran", "transposed"])
def test_softmax_with_loss_gives_the_same_gradient_for_any_memory_layout(rng, layout):
    """Logits that are not C-contiguous (a transposed product) get the gradient of their
    C-ordered copy: the label's −1 lands in every row, which then sums to 0."""
    z = rng.standard_normal((40, 3))
    t = rng.integers(0, 3, 40)
    other = np.asfortranarray(z) if layout == "fortran" else np.ascontiguousarray(z.T).T
    want, got = gn.SoftmaxWithLoss(), gn.SoftmaxWithLoss()
    want_loss, got_loss = want.forward(z, t), got.forward(other, t)
    np.testing.assert_array_equal(got.backward(), want.backward())
    assert got_loss == want_loss
    np.testing.assert_allclose(got.backward().sum(axis=1), 0.0, atol=1e-15)
