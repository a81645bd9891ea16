"""The layer and loss primitives: the reference (NumpyOps) against plain formulas, CupyOps'
fused kernels against the reference on a GPU (deterministic sums, multi-block grids, the loss
scratch), their launch arguments against the kernel signatures (no GPU needed), and the CUDA
source through nvcc. tests/backend/test_ops_conformance.py holds every override to the reference on the
shared cases; these are the kernels' own behaviours and bounds."""

from __future__ import annotations

import re

import cuda_source
import numpy as np
import pytest
from cuda_source import needs_nvcc, nvcc_compile
from tolerances import assert_within_term_bound, eps, fma, ulps_of

import gpunn as gn
from gpunn.backend.cuda import layer_source as src
from gpunn.backend.cuda import ops as cuda_ops
from gpunn.backend.cuda.compile import stream_id
from gpunn.backend.cuda.ops import CupyOps
from gpunn.backend.ops import NumpyOps

REF = NumpyOps(np)
ACTIVATIONS = NumpyOps.ACTIVATIONS
SHAPES = ((1, 1), (7, 3), (33, 257))
DTYPES = ("float32", "float64")
ALPHA = 0.07


def formula(z: np.ndarray, activation: str, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """g(z) and g'(z) in float64, written out plainly."""
    z = z.astype(np.float64)
    if activation == "relu":
        return np.maximum(z, 0), (z > 0).astype(float)
    if activation == "leaky_relu":
        return np.where(z > 0, z, alpha * z), np.where(z > 0, 1.0, alpha)
    if activation == "sigmoid":
        a = 1 / (1 + np.exp(-z))
        return a, a * (1 - a)
    if activation == "tanh":
        return np.tanh(z), 1 - np.tanh(z) ** 2
    return z, np.ones_like(z)


def colsum(x: np.ndarray) -> np.ndarray:
    """The CPU's bias-gradient sum (1ᵀ·x), into a fresh array."""
    return REF.column_sums(x, np.empty(x.shape[1], dtype=x.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (200, 100), (300, 10), (33, 257)])
def test_column_sums_are_the_sums_of_the_rows(shape: tuple[int, int], dtype: str) -> None:
    """1ᵀ·x through BLAS: the column sums to float rounding, for batches longer than the
    cached ones vector too; an output it cannot write (strided) gets NumPy's own sum."""
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    exact = x.astype(np.float64).sum(axis=0)
    bound = np.abs(x.astype(np.float64)).sum(axis=0) * (2e-6 if dtype == "float32" else 1e-14)
    out = np.full(shape[1], np.nan, dtype=dtype)
    assert REF.column_sums(x, out) is out
    assert np.all(np.abs(out - exact) <= bound)
    strided = np.full(2 * shape[1], np.nan, dtype=dtype)[::2]
    REF.column_sums(x, strided)
    np.testing.assert_array_equal(strided, x.sum(axis=0))
    reversed_columns = REF.column_sums(x[:, ::-1], out)  # a strided x: BLAS reads it as it is
    assert np.all(np.abs(reversed_columns - exact[::-1]) <= bound[::-1])


def data(shape: tuple[int, int], dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return z, b, dy


# ----------------------------------------------------------------------------- bounds
# How far each fused kernel may be from its reference (tests/tolerances.py): the magnitude of the
# terms of each output in float64, and counts of roundings (u = eps/2 each; a function with
# an error of N ulps counts 2N). Per activation: (the reference's count against the float64 formula,
# the count allowed between kernel and reference). 0 between kernel and reference means the same
# roundings in the same order with nothing to contract (their SASS for sm_90 shows it): equal
# bits. The input of g, fl(z + b), is the same single rounding in both.
FORWARD_ROUNDINGS = {
    "identity": (0, 0),
    "relu": (0, 0),  # max(s, 0): exact
    "leaky_relu": (2, 0),  # fl(α·s), α rounded to the dtype (one FMUL in the kernel too)
    # reference exp(−L), L = logaddexp(0, −s): L within 11 of itself (expf 3 ulps, log1pf 2, a sum),
    # so a within 11·|L| + 6 (exp's 3 ulps) <= 11·(1 + |ln a|) of |a|; the kernel's
    # 1 / (1 + expf(−s)) within 6 of |a| (expf 2 ulps, the sum, the reciprocal): 11 + 6
    "sigmoid": (11, 17),
    "tanh": (4, 8),  # NumPy's tanh within 2 ulps (its own accuracy tests), CUDA's tanhf / tanh 2
}
# dz = dy·g'(a): sigmoid's fl(fl(fl(1 − a)·a)·dy) is the kernel's FADD, FMUL, FMUL too; tanh's
# reference fl(fl(1 − fl(a·a))·dy) (3) is fl(fma(−a, a, 1)·dy) in the kernel (2, its SASS has the FFMA)
BACKWARD_ROUNDINGS = {"identity": (0, 0), "relu": (0, 0), "leaky_relu": (2, 0), "sigmoid": (3, 0), "tanh": (3, 5)}


def forward_terms(s: np.ndarray, activation: str) -> np.ndarray:
    """The terms' magnitude of a = g(s) for s = fl(z + b): |a|, and |a|·(1 + |ln a|) for the
    sigmoid, whose reference computes exp(ln a) (exp turns an error in its argument into a relative one)."""
    a = np.abs(formula(s, activation)[0])
    if activation == "sigmoid":
        return a * (1 + np.abs(np.log(np.maximum(a, np.finfo(np.float64).tiny))))
    return a


def backward_terms(dy: np.ndarray, a: np.ndarray, activation: str) -> np.ndarray:
    """The terms' magnitude of dz = dy·g'(a): |dy|·|g'(a)|, with |a|·(1 + |a|) for the sigmoid's
    a·(1 − a) and 1 + a² for tanh's 1 − a² (which cancels where |a| → 1)."""
    dy, a = np.abs(dy.astype(np.float64)), a.astype(np.float64)
    factor = {
        "identity": np.ones_like(a),
        "relu": (a > 0).astype(np.float64),
        "leaky_relu": np.where(a > 0, 1.0, ALPHA),
        "sigmoid": np.abs(a) * (1 + np.abs(a)),
        "tanh": 1 + a * a,
    }[activation]
    return dy * factor


def bias_sum_ulps(rows: int, dz_ulps: float, dtype: str, reference_chain: int = 0) -> float:
    """ulps, of the column sums of the dz terms, for the kernel's db against Σ of the reference's dz
    (in float64): each dz within ``dz_ulps`` of the reference's; the kernel adds in double, each
    thread its ⌈rows/16⌉ rows in order, then a tree over 16 threads, and rounds to the dtype
    once. ``reference_chain``: additions of a sum on the other side (BLAS), 0 for an exact sum."""
    chain = -(-rows // src.BIAS_ROW_THREADS) + 4 + reference_chain
    final = ulps_of(1) if np.dtype(dtype) == np.float32 else 0.0
    return dz_ulps + ulps_of(chain) * eps(np.float64) / eps(dtype) + final


def pairwise_chain(n: int) -> int:
    """Roundings along the longest chain of NumPy's pairwise sum of n values: one at a time below
    8, 8 running sums up to 128 (then 3 to add them, and up to 7 left over), halves above."""
    if n < 8:
        return max(n - 1, 0)
    if n <= 128:
        return n // 8 - 1 + 3 + n % 8
    half = n // 2 - (n // 2) % 8
    return 1 + max(pairwise_chain(half), pairwise_chain(n - half))


def softmax_terms(z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float]:
    """The terms' magnitudes of the gradient (N, C) and of the loss, in float64. With c the row's
    max, p = softmax(z) and A = Σ_j p_j·|z_j − c| (what an error of u·|z_j − c| in each shifted
    logit does to the row's sum): (p·(1 + |z − c| + A) + onehot) / N for the gradient, and
    Σ_rows (ln s + |z_t − c| + 1 + A) / N for the loss (ln s moves by the sum's relative error)."""
    z = z.astype(np.float64)
    n, rows = z.shape[0], np.arange(z.shape[0])
    shifted = np.abs(z - z.max(axis=1, keepdims=True))
    e = np.exp(-shifted)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    spread = (p * shifted).sum(axis=1, keepdims=True)
    onehot = np.zeros_like(z)
    onehot[rows, t] = 1.0
    grad = (p * (1 + shifted + spread) + onehot) / n
    loss = float((np.log(s[:, 0]) + shifted[rows, t] + 1 + spread[:, 0]).sum() / n)
    return grad, loss


def softmax_roundings(rows: int, cols: int, dtype: str) -> tuple[float, float, float, float]:
    """Counts (in units of the dtype's u) for the gradient and the loss: (reference's gradient, kernel's
    gradient, reference's loss, kernel's loss).

    The reference in the dtype: the shift 1 (the |z − c| and A parts), exp 3 ulps (6) in the
    numerator and again in the row sum, the row sum's pairwise chain, the division 1, − onehot 1,
    times fl(1/N) 2: 16 + chain(C). Its loss: ln s (its 4 ulps: 8, or the sum's error 6 + chain)
    + the shifted label's 1, each summed over the rows (chain(N)), their difference, times 1/N.
    The kernel works in double and rounds once (1); the double's own count (exp 1 ulp: 2, the
    sums' chains: ⌈C/threads⌉ + log2(threads) per row, ⌈N/blocks⌉ rows per block, then
    ⌈blocks/threads⌉ + log2(threads); 1/N rounded once) is scaled to the dtype's u."""
    threads = 32
    while threads < min(cols, 256):
        threads *= 2
    blocks = max(1, min(rows, src.MAX_LOSS_BLOCKS))
    row_sum = -(-cols // threads) + threads.bit_length() - 1
    in_double = eps(np.float64) / eps(dtype)
    final = 1 if np.dtype(dtype) == np.float32 else 0
    row_chain = cols - 1 if cols <= 32 else pairwise_chain(cols)  # few classes: BLAS's x·1, in any order
    grad_reference = 16 + row_chain
    grad_kernel = final + in_double * (1 + 2 + 2 + row_sum + 1 + 1 + 2)
    loss_reference = max(8, 6 + row_chain) + 1 + pairwise_chain(rows) + 1 + 2
    loss_sum = -(-rows // blocks) + -(-blocks // threads) + threads.bit_length() - 1
    loss_kernel = final + in_double * (3 + row_sum + 2 + 1 + 2 + loss_sum)
    return grad_reference, grad_kernel, loss_reference, loss_kernel


# ----------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_reference_is_the_formula(activation: str, shape: tuple[int, int], dtype: str) -> None:
    z, b, _ = data(shape, dtype)
    y = z.copy()
    out = REF.bias_activation(y, b, activation, ALPHA)
    assert out is y and y.dtype == np.dtype(dtype)  # in place, dtype kept
    s = z + b  # rounded to the dtype, as y += b does: g's error alone is compared
    expected, _ = formula(s, activation)
    bound = ulps_of(FORWARD_ROUNDINGS[activation][0])
    assert_within_term_bound(y, expected, forward_terms(s, activation), dtype, bound, what=activation)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_reference_is_the_formula(activation: str, shape: tuple[int, int], dtype: str) -> None:
    z, _, dy = data(shape, dtype)
    a = formula(z, activation)[0].astype(dtype)
    dz = REF.activation_backward(dy, a, activation, ALPHA)
    # the formula's derivative, evaluated from the same rounded output a the reference sees
    _, expected_derivative = formula(z, activation)
    if activation == "sigmoid":
        expected_derivative = a.astype(np.float64) * (1 - a.astype(np.float64))
    if activation == "tanh":
        expected_derivative = 1 - a.astype(np.float64) ** 2
    terms, bound = backward_terms(dy, a, activation), ulps_of(BACKWARD_ROUNDINGS[activation][0])
    assert_within_term_bound(dz, dy * expected_derivative, terms, dtype, bound, what=activation)
    # in place into dy gives the same values
    dy_copy = dy.copy()
    again = REF.activation_backward(dy_copy, a, activation, ALPHA, out=dy_copy)
    assert again is dy_copy
    np.testing.assert_array_equal(again, dz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_with_db_is_the_backward_then_the_column_sums(
    activation: str, shape: tuple[int, int], dtype: str
) -> None:
    """With db, the reference's dz is the same and db its column sums, written (not added)."""
    z, _, dy = data(shape, dtype)
    a = formula(z, activation)[0].astype(dtype)
    dz_plain = REF.activation_backward(dy, a, activation, ALPHA)
    db = np.full(shape[1], np.nan, dtype=dtype)
    dz = REF.activation_backward(dy, a, activation, ALPHA, db=db)
    np.testing.assert_array_equal(dz, dz_plain)
    np.testing.assert_array_equal(db, colsum(dz_plain))
    dy_copy = dy.copy()  # in place into dy: the same values
    assert REF.activation_backward(dy_copy, a, activation, ALPHA, out=dy_copy, db=db) is dy_copy
    np.testing.assert_array_equal(dy_copy, dz_plain)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (7, 3), (65, 1000)])
def test_softmax_cross_entropy_reference_is_the_formula(shape: tuple[int, int], dtype: str) -> None:
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(shape) * 5).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    loss, grad = REF.softmax_cross_entropy(z, t)
    z64 = z.astype(np.float64)
    p = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected_loss = -np.log(p[np.arange(shape[0]), t]).mean()
    onehot = np.eye(shape[1])[t]
    grad_terms, loss_terms = softmax_terms(z, t)
    grad_reference, _, loss_reference, _ = softmax_roundings(*shape, dtype)
    assert_within_term_bound(float(loss), expected_loss, loss_terms, dtype, ulps_of(loss_reference), what="loss")
    assert_within_term_bound(grad, (p - onehot) / shape[0], grad_terms, dtype, ulps_of(grad_reference), what="gradient")
    assert grad.dtype == np.dtype(dtype)


def test_unknown_activation_is_named() -> None:
    for ops in (REF, CupyOps(np)):
        with pytest.raises(ValueError, match="unknown activation 'swish'"):
            ops.bias_activation(np.zeros((2, 2)), np.zeros(2), "swish")
        with pytest.raises(ValueError, match="unknown activation 'swish'"):
            ops.activation_backward(np.zeros((2, 2)), np.zeros((2, 2)), "swish")


def test_contracted_tanh_backward_is_within_the_term_bound() -> None:
    """tanh's backward in the float32 kernel is fl(fma(−a, a, 1)·dy) (an FFMA in its SASS), the
    reference's fl(fl(1 − fl(a·a))·dy): emulated exactly (tolerances.fma), they differ in most bits
    where |a| is near 1 and stay within the bound of |dy|·(1 + a²) the GPU test allows."""
    z, _, dy = data((1000, 33), "float32")
    a = formula(z, "tanh")[0].astype(np.float32)
    reference = REF.activation_backward(dy, a, "tanh")
    contracted = fma(-a, a, np.float32(1)) * dy
    assert (contracted != reference).mean() > 0.5
    bound = ulps_of(BACKWARD_ROUNDINGS["tanh"][1])
    terms = backward_terms(dy, a, "tanh")
    assert_within_term_bound(contracted, reference, terms, "float32", bound, what="emulated tanh backward")


# ----------------------------------------------------------------------------- fused (GPU)


@pytest.fixture
def fused(gpu: gn.Device) -> CupyOps:
    return CupyOps(gpu.xp)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_bias_activation_equals_the_reference(
    gpu: gn.Device, fused: CupyOps, activation: str, shape: tuple[int, int], dtype: str
) -> None:
    z, b, _ = data(shape, dtype)
    expected = REF.bias_activation(z.copy(), b, activation, ALPHA)
    y = gpu.send(z)
    assert fused.bias_activation(y, gpu.send(b), activation, ALPHA) is y
    terms, bound = forward_terms(z + b, activation), ulps_of(FORWARD_ROUNDINGS[activation][1])
    assert_within_term_bound(gn.to_numpy(y), expected, terms, dtype, bound, what=f"{activation}: fused vs reference")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_activation_backward_equals_the_reference(
    gpu: gn.Device, fused: CupyOps, activation: str, shape: tuple[int, int], dtype: str
) -> None:
    z, _, dy = data(shape, dtype)
    a = formula(z, activation)[0].astype(dtype)
    expected = REF.activation_backward(dy, a, activation, ALPHA)
    got = fused.activation_backward(gpu.send(dy), gpu.send(a), activation, ALPHA)
    terms, bound = backward_terms(dy, a, activation), ulps_of(BACKWARD_ROUNDINGS[activation][1])
    assert_within_term_bound(gn.to_numpy(got), expected, terms, dtype, bound, what=f"{activation}: fused vs reference")
    dy_gpu = gpu.send(dy)
    assert fused.activation_backward(dy_gpu, gpu.send(a), activation, ALPHA, out=dy_gpu) is dy_gpu


def assert_softmax_within_bounds(fused_loss, fused_grad, loss, grad, z, t, dtype: str) -> None:
    """The fused loss and gradient against the reference's (or a float64 reference's: its count
    is the dtype's count scaled, which the reference's covers), within both counts."""
    grad_terms, loss_terms = softmax_terms(z, t)
    grad_reference, grad_kernel, loss_reference, loss_kernel = softmax_roundings(*z.shape, dtype)
    bound = ulps_of(loss_reference + loss_kernel)
    assert_within_term_bound(float(fused_loss), float(loss), loss_terms, dtype, bound, what="loss: fused vs reference")
    bound = ulps_of(grad_reference + grad_kernel)
    what = "gradient: fused vs reference"
    assert_within_term_bound(gn.to_numpy(fused_grad), grad, grad_terms, dtype, bound, what=what)


ROWS = (1, 7, 1000, 2_500)  # 2,500 > MAX_LOSS_BLOCKS: each loss block loops over 2 or 3 rows
# one warp's tile partly used, exactly one and a bit more than one; 257: 8 tiles and one column,
# and one column more than a loss block's 256 threads (each thread loops over columns)
COLUMNS = (1, 3, 33, 257)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLUMNS)
@pytest.mark.parametrize("rows", ROWS)
def test_fused_activation_backward_sums_the_bias_gradient_deterministically(
    gpu: gn.Device, fused: CupyOps, rows: int, cols: int, dtype: str
) -> None:
    activation = ACTIVATIONS[(ROWS.index(rows) + COLUMNS.index(cols)) % len(ACTIVATIONS)]  # each one, spread
    z, _, dy = data((rows, cols), dtype)
    a = formula(z, activation)[0].astype(dtype)
    dz_ref = REF.activation_backward(dy, a, activation, ALPHA)
    db = gpu.send(np.full(cols, np.nan, dtype=dtype))  # every column is stored, none accumulated
    dy_gpu, a_gpu = gpu.send(dy), gpu.send(a)
    dz = fused.activation_backward(dy_gpu, a_gpu, activation, ALPHA, db=db)
    terms, dz_ulps = backward_terms(dy, a, activation), ulps_of(BACKWARD_ROUNDINGS[activation][1])
    assert_within_term_bound(gn.to_numpy(dz), dz_ref, terms, dtype, dz_ulps, what=f"{activation} dz")
    got = gn.to_numpy(db)
    exact = dz_ref.astype(np.float64).sum(axis=0)
    bound = bias_sum_ulps(rows, dz_ulps, dtype)
    assert_within_term_bound(got, exact, terms.sum(axis=0), dtype, bound, what=f"{activation} db")
    # deterministic: a second launch gives the same bits; in place into dy, too
    first = got.copy()
    assert fused.activation_backward(dy_gpu, a_gpu, activation, ALPHA, out=dy_gpu, db=db) is dy_gpu
    np.testing.assert_array_equal(gn.to_numpy(db), first)
    np.testing.assert_array_equal(gn.to_numpy(dy_gpu), gn.to_numpy(dz))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLUMNS)
@pytest.mark.parametrize("rows", ROWS)
def test_fused_softmax_cross_entropy_sums_the_loss_in_the_kernel(
    gpu: gn.Device, fused: CupyOps, rows: int, cols: int, dtype: str
) -> None:
    """Grids of one block up to the cap (2,500 rows: blocks loop over rows), against the
    reference for the gradient and against float64 for the loss (the kernel adds in double)."""
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((rows, cols)) * 5).astype(dtype)
    t = rng.integers(0, cols, rows)
    _, grad = REF.softmax_cross_entropy(z, t)
    exact_loss, _ = REF.softmax_cross_entropy(z.astype(np.float64), t)
    z_gpu, t_gpu = gpu.send(z), gpu.send(t)
    loss, fused_grad = fused.softmax_cross_entropy(z_gpu, t_gpu)
    assert loss.shape == () and loss.dtype == np.dtype(dtype) and gn.device_of(fused_grad) == gpu
    assert_softmax_within_bounds(loss, fused_grad, exact_loss, grad, z, t, dtype)
    # the last block put the counter back to 0: the next launch sums the same partials again
    again, _ = fused.softmax_cross_entropy(z_gpu, t_gpu)
    assert gn.to_numpy(again).tobytes() == gn.to_numpy(loss).tobytes()
    _, counter = CupyOps._loss_scratch[(gpu, np.dtype(dtype), stream_id(z_gpu))]
    assert int(counter[0]) == 0


@pytest.mark.gpu
def test_fused_losses_of_different_sizes_share_the_scratch(gpu: gn.Device, fused: CupyOps) -> None:
    """A small grid after a large one reads only its own partials (and the reverse)."""
    rng = np.random.default_rng(5)
    for rows in (5_000, 3, 2000, 1):
        z = rng.standard_normal((rows, 10)).astype(np.float32)
        t = rng.integers(0, 10, rows)
        exact, _ = REF.softmax_cross_entropy(z.astype(np.float64), t)
        loss, _ = fused.softmax_cross_entropy(gpu.send(z), gpu.send(t))
        *_, loss_reference, loss_kernel = softmax_roundings(rows, 10, "float32")
        terms, bound = softmax_terms(z, t)[1], ulps_of(loss_reference + loss_kernel)
        assert_within_term_bound(float(loss), float(exact), terms, "float32", bound, what=f"{rows} rows")


# ----------------------------------------------------------------------------- launch arguments

SIGNATURES = {
    "bias_activation_forward": ("T*", "const T*", "const long long", "const long long", "const int", "const double"),
    "activation_backward": ("T*", "const T*", "const T*", "const long long", "const int", "const double"),
    "activation_bias_backward": (
        "T*",
        "const T*",
        "const T*",
        "T*",
        "const long long",
        "const long long",
        "const int",
        "const double",
    ),
    "softmax_cross_entropy_rows": (
        "const T*",
        "const long long*",
        "T*",
        "T*",
        "double*",
        "unsigned int*",
        "const long long",
        "const long long",
        "const double",
    ),
}
SCALARS = {"const long long": np.int64, "const double": np.float64, "const int": np.int32}
POINTERS = {"const long long*": np.int64, "double*": np.float64, "unsigned int*": np.uint32}


def recording(monkeypatch: pytest.MonkeyPatch, launches: list) -> CupyOps:
    """CupyOps on NumPy arrays, its kernels recorded instead of launched (no GPU needed)."""
    monkeypatch.setattr(CupyOps, "_loss_scratch", {})
    monkeypatch.setattr(
        CupyOps,
        "_layer_kernel",
        lambda self, x, name: lambda grid, block, args, **kw: launches.append((name, grid, block, args, kw)),
    )
    return CupyOps(np)


def test_signature_table_covers_every_kernel() -> None:
    assert set(SIGNATURES) == set(src.KERNEL_NAMES)
    for name in src.KERNEL_NAMES:
        assert re.search(rf"__global__\s+void\s+{name}\s*\(", src.LAYER_SOURCE), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_launch_arguments_match_the_signatures(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """A RawKernel passes NumPy scalars by their own type: a mismatch would read garbage."""
    launches: list[tuple[str, tuple, tuple, tuple, dict]] = []
    ops = recording(monkeypatch, launches)
    z, b, dy = data((5, 3), dtype)
    ops.bias_activation(z, b, "leaky_relu", ALPHA)
    ops.activation_backward(dy, z, "tanh")
    db = np.empty(3, dtype=dtype)
    ops.activation_backward(dy, z, "sigmoid", db=db)
    ops.softmax_cross_entropy(z, np.array([0, 2, 1, 1, 0], dtype=np.int32))
    assert [launch[0] for launch in launches] == list(src.KERNEL_NAMES)
    for name, _, _, args, _ in launches:
        signature = SIGNATURES[name]
        assert len(args) == len(signature), name
        for arg, ctype in zip(args, signature, strict=True):
            if ctype in POINTERS:  # labels widened to int64; the loss scratch in its own types
                assert isinstance(arg, np.ndarray) and arg.dtype == POINTERS[ctype], (name, ctype)
            elif ctype.endswith("T*"):
                assert isinstance(arg, np.ndarray) and arg.dtype == np.dtype(dtype) and arg.flags.c_contiguous
            else:
                assert type(arg) is SCALARS[ctype], (name, ctype, type(arg))
    forward, _, bias_backward, softmax = launches
    assert forward[3][3] == 3 and forward[3][4] == src.ACTIVATION_CODES["leaky_relu"]
    _, bias_grid, bias_block, bias_args, _ = bias_backward
    assert bias_args[3] is db and bias_args[4] == 5 and bias_args[5] == 3
    assert bias_args[6] == src.ACTIVATION_CODES["sigmoid"]
    assert bias_grid == (1,) and bias_block == (src.BIAS_COLUMNS, src.BIAS_ROW_THREADS)
    _, softmax_grid, _, softmax_args, softmax_kw = softmax
    assert softmax_args[3].shape == () and softmax_args[3].dtype == np.dtype(dtype)  # the 0-d loss
    assert softmax_args[4].size >= softmax_grid[0]  # a partial per block
    assert softmax_args[6] == 5 and softmax_args[7] == 3 and softmax_args[8] == pytest.approx(1 / 5)
    assert softmax_kw["shared_mem"] == 32 * 8  # one double per thread of a 32-thread block


def test_the_bias_grid_covers_every_column_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    launches: list = []
    ops = recording(monkeypatch, launches)
    for cols in (1, 32, 33, 257):
        ops.activation_backward(np.ones((4, cols)), np.ones((4, cols)), "relu", db=np.empty(cols))
    assert [grid for _, grid, *_ in launches] == [(1,), (1,), (2,), (9,)]


def test_the_loss_grid_is_capped_and_its_scratch_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many rows, at most MAX_LOSS_BLOCKS blocks (each loops over rows), so the partial
    buffer made at the first call serves every later one; the counter starts at 0."""
    launches: list = []
    ops = recording(monkeypatch, launches)
    for rows in (1, 1000, 5000, 70_000):
        ops.softmax_cross_entropy(np.zeros((rows, 2), np.float32), np.zeros(rows, np.int64))
    assert [grid for _, grid, *_ in launches] == [(1,), (1000,), (src.MAX_LOSS_BLOCKS,), (src.MAX_LOSS_BLOCKS,)]
    partials = {id(args[4]) for *_, args, _ in launches}
    counters = {id(args[5]) for *_, args, _ in launches}
    assert len(partials) == len(counters) == 1
    args = launches[0][3]
    assert args[4].shape == (src.MAX_LOSS_BLOCKS,) and args[5].shape == (1,) and args[5][0] == 0
    ops.softmax_cross_entropy(np.zeros((3, 2), np.float64), np.zeros(3, np.int64))
    assert len(CupyOps._loss_scratch) == 2  # per (device, dtype, stream)


def test_each_stream_has_its_own_loss_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches on two streams may overlap: they must not share the partial sums and the
    block counter. Launches on one stream run in order and share one pair."""
    launches: list = []
    ops = recording(monkeypatch, launches)
    stream = [11]
    monkeypatch.setattr(cuda_ops, "stream_id", lambda x: stream[0])
    z, t = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    ops.softmax_cross_entropy(z, t)
    ops.softmax_cross_entropy(z, t)
    stream[0] = 12
    ops.softmax_cross_entropy(z, t)
    first, same, other = (launch[3] for launch in launches)
    assert first[4] is same[4] and first[5] is same[5]
    assert other[4] is not first[4] and other[5] is not first[5]
    CupyOps.release_loss_scratch(12)
    assert [key[2] for key in CupyOps._loss_scratch] == [11]


def test_the_loss_scratch_is_not_made_during_a_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made under capture, the counter's zeroing would only be recorded: refuse clearly (graph
    replay then falls back to eager steps) instead of summing with a garbage counter."""
    launches: list = []
    ops = recording(monkeypatch, launches)
    monkeypatch.setattr(cuda_ops, "is_capturing", lambda x: True)
    with pytest.raises(RuntimeError, match="run one step eagerly first"):
        ops.softmax_cross_entropy(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    assert not launches


def test_the_bias_kernel_block_matches_the_cuda_source() -> None:
    for name in ("BIAS_COLUMNS", "BIAS_ROW_THREADS"):
        assert re.search(rf"#define {name} {getattr(src, name)}\b", src.LAYER_SOURCE), name
    rows = src.BIAS_ROW_THREADS
    assert rows & (rows - 1) == 0  # the tree over row-threads halves a power of two
    assert src.BIAS_COLUMNS == 32  # one warp per row of the tile: coalesced reads


def test_odd_layouts_go_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strided arrays, a db that does not fit, empty arrays or one-hot targets never reach a
    row-major kernel: the reference computes them."""
    launches: list = []
    ops = recording(monkeypatch, launches)
    z, b, dy = data((6, 8), "float64")
    a = formula(z, "relu")[0]
    db = np.empty(4)
    dz = ops.activation_backward(dy[:, ::2], a[:, ::2], "relu", db=db)
    np.testing.assert_array_equal(dz, dy[:, ::2] * (a[:, ::2] > 0))
    np.testing.assert_array_equal(db, colsum(dz))
    strided_db = np.empty(16)[::2]
    ops.activation_backward(dy, a, "relu", db=strided_db)
    np.testing.assert_array_equal(strided_db, (dy * (a > 0)).sum(axis=0))
    got = ops.activation_backward(dy[:, ::2], a[:, ::2], "tanh")
    np.testing.assert_allclose(got, dy[:, ::2] * (1 - a[:, ::2] ** 2), rtol=1e-12)
    y = z.T.copy().T  # Fortran order
    ops.bias_activation(y, b, "relu")
    np.testing.assert_allclose(y, np.maximum(z + b, 0), rtol=1e-12)
    ops.activation_backward(np.empty((0, 3)), np.empty((0, 3)), "relu", db=np.empty(3))
    ops.softmax_cross_entropy(z, np.eye(8)[np.arange(6)])
    assert not launches


@needs_nvcc
def test_cuda_source_compiles_for_sm90(tmp_path) -> None:
    result, cubin = nvcc_compile(src.LAYER_SOURCE + "\n" + cuda_source.instantiations(SIGNATURES), tmp_path)
    assert result.returncode == 0, result.stderr
    for name in src.KERNEL_NAMES:
        for code in "fd":
            assert cuda_source.mangled(name, code) in cubin, (name, code)
