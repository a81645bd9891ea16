"""Fused layer kernels for the GPU, each with its plain array-module twin (the reference).

A small network on a GPU is bound by kernel launches, not arithmetic: CuPy spends 15–20 µs
of host time per elementwise call. These kernels do in one launch what the plain path does
in several:

- ``bias_activation``: a = g(z + b) in place on the matrix product's output (plain: 2 calls);
- ``activation_backward``: dz = da · g'(z), written through the saved output a (plain: 2–4);
- ``activation_bias_backward``: the same dz and, in the same pass, the bias gradient of the
  Linear layer before the activation, db = Σ_rows dz, and on request that of the Linear layer
  after it, Σ_rows of its dy (plain: 3–6 calls);
- ``softmax_cross_entropy``: per row max, log-sum-exp, loss and the gradient (softmax − onehot)/N,
  and the sum of the rows' losses, in one kernel (plain: about 12 calls).

On the CPU the twin runs; it is also what the fused kernels are tested against. Activations
are coded as in ``ACTIVATIONS``; LeakyReLU's slope is ``alpha``.

The sums are deterministic (the same bits on every run of one shape): every partial sum is
taken in a fixed order by a fixed thread, with no floating-point atomics. None of these calls
reads a device value back to the host, and none calls cuBLAS, so a CUDA graph can capture them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..nn.functional import sigmoid
from . import cpu_fused
from .cuda.compile import MAX_BLOCKS, NULL, THREADS_PER_BLOCK, grid, is_capturing, kernel, stream_id
from .cuda.compile import is_gpu as _is_gpu
from .device import array_module, device_of

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
# The loss kernel's grid: at most this many blocks (each loops over rows), so that the partial
# sums, one double per block, fit a small buffer allocated once per device.
MAX_LOSS_BLOCKS = 1024
# The bias-gradient kernel's block: BIAS_COLUMNS adjacent columns (one warp, coalesced reads of
# a row) × BIAS_ROW_THREADS threads that stride down the rows. Also #defined in CUDA_SOURCE.
BIAS_COLUMNS = 32
BIAS_ROW_THREADS = 16

CUDA_SOURCE = r"""
#define BIAS_COLUMNS 32
#define BIAS_ROW_THREADS 16
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// a = g(z); codes: 0 identity, 1 relu, 2 leaky relu (slope alpha), 3 sigmoid, 4 tanh
template <typename T>
__device__ __forceinline__ T activate(const T z, const int act, const T alpha) {
  switch (act) {
    case 1: return (z > T(0) || z != z) ? z : T(0);  // NaN passes, as NumPy's maximum lets it
    case 2: return z > T(0) ? z : alpha * z;
    case 3: return T(1) / (T(1) + exp(-z));  // exp(-z) = inf gives exactly 0, never NaN
    case 4: return tanh(z);
    default: return z;
  }
}

// g'(z) expressed through a = g(z)
template <typename T>
__device__ __forceinline__ T derivative(const T a, const int act, const T alpha) {
  switch (act) {
    case 1: return a > T(0) ? T(1) : T(0);
    case 2: return a > T(0) ? T(1) : alpha;
    case 3: return a * (T(1) - a);
    case 4: return T(1) - a * a;
    default: return T(1);
  }
}

// y (rows x cols, row-major) <- g(y + b), b broadcast over rows
template <typename T>
__global__ void bias_activation_forward(T* __restrict__ y, const T* __restrict__ b, const long long n,
                                        const long long cols, const int act, const double alpha) {
  const T alpha_ = (T)alpha;
  GRID_STRIDE_LOOP(i, n) { y[i] = activate(y[i] + b[i % cols], act, alpha_); }
}

// dz <- dy * g'(z), from the saved output a; dz may be dy itself (no __restrict__ on them)
template <typename T>
__global__ void activation_backward(T* dz, const T* dy, const T* __restrict__ a, const long long n,
                                    const int act, const double alpha) {
  const T alpha_ = (T)alpha;
  GRID_STRIDE_LOOP(i, n) { dz[i] = dy[i] * derivative(a[i], act, alpha_); }
}

// dz <- dy * g'(z) as above (rows x cols, row-major; dz may be dy), and db[j] = sum_r dz[r][j]:
// the bias gradient of the Linear layer whose output went into g, in the same pass over dz.
// With cols2 > 0 the same launch also writes db2[j] = sum_r dy2[r][j] (dy2: rows x cols2, the
// gradient that reached the Linear layer after g, whose own bias sum would otherwise be a
// launch of its own): tiles past the first matrix's are the second's.
// Block (BIAS_COLUMNS, BIAS_ROW_THREADS): thread (x, y) owns column tile*32 + x and the rows
// y, y + 16, ... in order; the 16 partial sums of a column are then added by a fixed tree in
// shared memory and stored once. So every sum has a fixed order (deterministic), needs no
// atomics and no zeroed db. Sums are kept in double, like the loss kernel's.
template <typename T>
__global__ void activation_bias_backward(T* dz, const T* dy, const T* __restrict__ a, T* __restrict__ db,
                                         const long long rows, const long long cols, const int act,
                                         const double alpha, const T* __restrict__ dy2,
                                         T* __restrict__ db2, const long long cols2) {
  __shared__ double partial[BIAS_ROW_THREADS][BIAS_COLUMNS];
  const T alpha_ = (T)alpha;
  const long long tiles = (cols + BIAS_COLUMNS - 1) / BIAS_COLUMNS;
  const long long tiles2 = (cols2 + BIAS_COLUMNS - 1) / BIAS_COLUMNS;
  for (long long tile = blockIdx.x; tile < tiles + tiles2; tile += gridDim.x) {
    const bool second = tile >= tiles;  // the same for the whole block: no divergence
    const long long width = second ? cols2 : cols;
    const long long j = (second ? tile - tiles : tile) * BIAS_COLUMNS + threadIdx.x;
    double sum = 0.0;
    if (j < width) {
      if (second) {
        for (long long r = threadIdx.y; r < rows; r += BIAS_ROW_THREADS) sum += (double)dy2[r * cols2 + j];
      } else {
        for (long long r = threadIdx.y; r < rows; r += BIAS_ROW_THREADS) {
          const long long i = r * cols + j;
          const T g = dy[i] * derivative(a[i], act, alpha_);
          dz[i] = g;
          sum += (double)g;
        }
      }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int stride = BIAS_ROW_THREADS / 2; stride > 0; stride >>= 1) {
      if (threadIdx.y < stride) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + stride][threadIdx.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && j < width) (second ? db2 : db)[j] = (T)partial[0][threadIdx.x];
    __syncthreads();  // the next tile reuses the shared buffer
  }
}

__device__ __forceinline__ double block_reduce(double v, double* shared, const bool take_max) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const double other = shared[threadIdx.x + stride];
      shared[threadIdx.x] = take_max ? fmax(shared[threadIdx.x], other) : shared[threadIdx.x] + other;
    }
    __syncthreads();
  }
  const double result = shared[0];
  __syncthreads();  // the buffer is reused by the next reduction
  return result;
}

// Blocks loop over the rows of z (rows x cols); blockDim a power of two, blockDim doubles of
// shared memory. With c = max_j z_j and s = sum_j exp(z_j - c) of a row:
//   row_loss = (log s - (z_t - c)) * inv_n      grad_j = (exp(z_j - c) / s - [j == t]) * inv_n
// and loss[0] = sum over rows of row_loss, in the same launch. Accumulated in double, so
// float32 logits lose nothing to the reductions.
//
// The loss sum is deterministic without floating-point atomics: block b adds its rows
// (b, b + gridDim, ...) in order and writes the result to partials[b]; the block that
// finishes last (found with an integer atomic counter) adds partials[0 .. gridDim) by a fixed
// tree, writes loss[0] and puts the counter back to 0, so the next launch -- or the replay of
// a CUDA graph that captured this one -- starts clean. partials needs gridDim doubles.
// Launches sharing partials and counter must not overlap: each stream has its own pair.
template <typename T>
__global__ void softmax_cross_entropy_rows(const T* __restrict__ z, const long long* __restrict__ t,
                                           T* __restrict__ grad, T* __restrict__ loss, double* partials,
                                           unsigned int* counter, const long long rows, const long long cols,
                                           const double inv_n) {
  extern __shared__ double shared[];
  __shared__ bool last_block;
  const double negative_infinity = __longlong_as_double(0xfff0000000000000ULL);  // no host headers in NVRTC
  double block_loss = 0.0;  // kept by thread 0: this block's rows, added in row order
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* zr = z + row * cols;
    T* gr = grad + row * cols;
    double local = negative_infinity;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) local = fmax(local, (double)zr[j]);
    const double c = block_reduce(local, shared, true);
    local = 0.0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) local += exp((double)zr[j] - c);
    const double s = block_reduce(local, shared, false);
    const long long label = t[row];
    if (threadIdx.x == 0) block_loss += (log(s) - ((double)zr[label] - c)) * inv_n;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
      const double p = exp((double)zr[j] - c) / s;
      gr[j] = (T)((p - (j == label ? 1.0 : 0.0)) * inv_n);
    }
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_loss;
    __threadfence();  // release: the partial is visible device-wide before the ticket is taken
    const unsigned int ticket = atomicAdd(counter, 1u);
    last_block = ticket == gridDim.x - 1;
    if (last_block) __threadfence();  // acquire: every other block's partial is visible below
  }
  __syncthreads();
  if (!last_block) return;  // uniform per block: the block reductions below see all its threads
  const volatile double* written = partials;  // written by other blocks: read past this SM's L1
  double local = 0.0;
  for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) local += written[b];
  const double total = block_reduce(local, shared, false);
  if (threadIdx.x == 0) {
    loss[0] = (T)total;
    *counter = 0u;  // every block has taken its ticket: nobody else touches it in this launch
  }
}
"""

KERNEL_NAMES = (
    "bias_activation_forward",
    "activation_backward",
    "activation_bias_backward",
    "softmax_cross_entropy_rows",
)


def _code(activation: str) -> int:
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}") from None


def _kernel(x: Any, name: str) -> Any:
    return kernel(array_module(x), CUDA_SOURCE, KERNEL_NAMES, name, x.dtype)


# ----------------------------------------------------------------------------- bias gradient

_ONES: dict[np.dtype, np.ndarray] = {}  # one ones vector per dtype, grown to the longest asked for


def ones_vector(n: int, dtype: np.dtype) -> np.ndarray:
    """n ones of ``dtype`` (NumPy), a view of one kept vector per dtype: the 1 of the
    sums-as-products 1ᵀ·x (bias gradients) and x·1 (the loss's row sums). Read only."""
    ones = _ONES.get(dtype)
    if ones is None or ones.shape[0] < n:
        ones = _ONES[dtype] = np.ones(max(n, 256), dtype=dtype)
        ones.flags.writeable = False  # shared by every caller
    return ones[:n]


def column_sums(x: Any, out: Any) -> Any:
    """out ← Σ_rows x for x: (N, C) and out: (C,) — a bias gradient; returns out.

    On the CPU it is the product 1ᵀ·x (a BLAS matrix-vector product), 1.5–3× faster than
    NumPy's row-by-row sum from 32×100 up to 512×4096; it rounds differently, by float
    rounding of the same size. Every CPU path (fused or not) sums bias gradients here, so
    they agree bit for bit. On a GPU, and for layouts BLAS does not take, x.sum(axis=0).
    """
    if (
        type(x) is np.ndarray
        and x.ndim == 2
        and x.dtype in (np.float32, np.float64)
        and out.dtype == x.dtype
        and out.shape == x.shape[1:]
        and out.flags.c_contiguous
    ):
        return np.matmul(ones_vector(x.shape[0], x.dtype), x, out=out)
    return x.sum(axis=0, out=out)


# ----------------------------------------------------------------------------- bias + activation


_ZERO_ROWS: dict[tuple[int, np.dtype], np.ndarray] = {}  # zeros(C) per (C, dtype), read only


def _zero_row(width: int, dtype: np.dtype) -> np.ndarray:
    row = _ZERO_ROWS.get((width, dtype))
    if row is None:
        row = _ZERO_ROWS[(width, dtype)] = np.zeros(width, dtype)
        row.flags.writeable = False  # shared by every call: nobody may write into it
    return row


def bias_activation_reference(y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
    """y ← g(y + b) in place (y: (N, C), b: (C,)); returns y."""
    code = _code(activation)
    xp = array_module(y)
    y += b
    if code == 1:
        # NumPy's vectorized maximum wants two arrays: against the scalar 0 it takes a strided
        # loop, 2–3× slower on a 200×100 batch. A zero row broadcasts at full speed (same values).
        xp.maximum(y, _zero_row(y.shape[-1], y.dtype) if xp is np else 0.0, out=y)
    elif code == 2:
        y *= xp.where(y > 0, y.dtype.type(1.0), y.dtype.type(alpha))
    elif code == 3:
        sigmoid(y, out=y)
    elif code == 4:
        xp.tanh(y, out=y)
    return y


def bias_activation(y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
    """y ← g(y + b) in place: one kernel on a GPU, the twin on the CPU; returns y."""
    if not _is_gpu(y):
        if activation == "relu" and cpu_fused.bias_relu(y, b):  # one pass, the twin's bits
            return y
        return bias_activation_reference(y, b, activation, alpha)
    takes = y.ndim == 2 and y.flags.c_contiguous and b.flags.c_contiguous
    if not (takes and b.dtype == y.dtype and b.shape == (y.shape[1],)):
        return bias_activation_reference(y, b, activation, alpha)  # the twin handles any layout
    _kernel(y, "bias_activation_forward")(
        grid(y.size),
        (THREADS_PER_BLOCK,),
        (y, b, np.int64(y.size), np.int64(y.shape[1]), np.int32(_code(activation)), np.float64(alpha)),
    )
    return y


# ----------------------------------------------------------------------------- activation backward


def activation_backward_reference(dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None) -> Any:
    """dz = dy · g'(z) from the saved output a = g(z); ``out`` may be dy itself."""
    code = _code(activation)
    xp = array_module(dy)
    if code == 1:
        return xp.multiply(dy, a > 0, out=out)
    if code == 2:
        return xp.multiply(dy, xp.where(a > 0, a.dtype.type(1.0), a.dtype.type(alpha)), out=out)
    if code == 3:
        factor = 1.0 - a
        factor *= a
        return xp.multiply(dy, factor, out=out)
    if code == 4:
        factor = a * a
        xp.subtract(1.0, factor, out=factor)
        return xp.multiply(dy, factor, out=out)
    if out is None:
        return dy.copy()
    out[...] = dy
    return out


def _cpu_activation_backward(dy: Any, a: Any, activation: str, alpha: float, out: Any) -> Any:
    """The twin, or for ReLU the one-pass loop when it is loaded (the same bits)."""
    dz = cpu_fused.relu_backward(dy, a, out) if activation == "relu" else None
    return activation_backward_reference(dy, a, activation, alpha, out) if dz is None else dz


def activation_backward(dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None) -> Any:
    """dz = dy · g'(z): one kernel on a GPU, the twin on the CPU. ``out`` may be dy."""
    if not _is_gpu(dy):
        return _cpu_activation_backward(dy, a, activation, alpha, out)
    contiguous = dy.flags.c_contiguous and a.flags.c_contiguous and (out is None or out.flags.c_contiguous)
    # one dtype and one shape for all three, or the kernel would read and write past their ends
    same = a.dtype == dy.dtype and (out is None or (out.dtype == dy.dtype and out.shape == dy.shape))
    if not (contiguous and same) or dy.shape != a.shape:
        return activation_backward_reference(dy, a, activation, alpha, out)  # the twin handles any layout
    if out is None:
        out = array_module(dy).empty_like(dy)
    _kernel(dy, "activation_backward")(
        grid(dy.size),
        (THREADS_PER_BLOCK,),
        (out, dy, a, np.int64(dy.size), np.int32(_code(activation)), np.float64(alpha)),
    )
    return out


# ----------------------------------------------------------------------------- activation + bias backward


def activation_bias_backward_reference(
    dy: Any, a: Any, db: Any, activation: str, alpha: float = 0.0, out: Any = None, also_sum: Any = None
) -> Any:
    """dz = dy · g'(z) (N, C) and db ← Σ_n dz_n (C,) written in place; returns dz.
    With ``also_sum`` = (dy2, db2), dy2: (N, C2), also db2 ← Σ_n dy2_n (C2,).

    Exactly the operations of the unfused path (the activation's backward, then the Linear
    layers' bias sums by :func:`column_sums`), so on the CPU a fused model computes the
    same bits as an unfused one.
    ``out`` may be dy itself.
    """
    dz = activation_backward_reference(dy, a, activation, alpha, out)
    column_sums(dz, db)
    if also_sum is not None:
        column_sums(*also_sum)
    return dz


def _takes_second_sum(dy: Any, also_sum: Any) -> bool:
    """Whether the kernel can write also_sum = (dy2, db2) in its launch: same rows and dtype,
    row-major dy2, contiguous db2 of dy2's width."""
    dy2, db2 = also_sum
    return (
        getattr(dy2, "ndim", 0) == 2
        and dy2.shape[0] == dy.shape[0]
        and dy2.shape[1] > 0
        and db2.shape == dy2.shape[1:]
        and dy2.dtype == db2.dtype == dy.dtype
        and dy2.flags.c_contiguous
        and db2.flags.c_contiguous
        and _is_gpu(dy2)
        and dy2.device == dy.device  # CuPy compares devices by id; no gpunn Device per step
    )


def activation_bias_backward(
    dy: Any, a: Any, db: Any, activation: str, alpha: float = 0.0, out: Any = None, also_sum: Any = None
) -> Any:
    """dz = dy · g'(z) and db ← Σ_rows dz, for dy, a: (N, C) and db: (C,); returns dz.

    db is the bias gradient of the Linear layer that produced z: computing it here spares
    that layer's separate column sum. ``also_sum`` = (dy2, db2) adds db2 ← Σ_rows dy2 for a
    dy2 of N rows: the bias gradient of the Linear layer *after* the activation, when nothing
    else sums it (Sequential hands it over), in the same launch. On a GPU: one kernel,
    deterministic (fixed summation order, no atomics); the twin elsewhere and for layouts the
    kernel does not take. ``out`` may be dy.
    """
    if not _is_gpu(dy):  # the twin's operations, with ReLU's backward in one pass when it can be
        dz = _cpu_activation_backward(dy, a, activation, alpha, out)
        column_sums(dz, db)
        if also_sum is not None:
            column_sums(*also_sum)
        return dz
    rows, cols = dy.shape if dy.ndim == 2 else (0, 0)
    takes = (
        dy.ndim == 2
        and dy.shape == a.shape
        and dy.size > 0
        and db.shape == (cols,)
        and db.dtype == dy.dtype == a.dtype
        and dy.flags.c_contiguous
        and a.flags.c_contiguous
        and db.flags.c_contiguous
        and (out is None or (out.flags.c_contiguous and out.shape == dy.shape and out.dtype == dy.dtype))
    )
    if not takes:
        return activation_bias_backward_reference(dy, a, db, activation, alpha, out, also_sum)  # any layout
    second = also_sum is not None and _takes_second_sum(dy, also_sum)
    if out is None:
        out = array_module(dy).empty_like(dy)
    dy2, db2 = also_sum if second else (NULL, NULL)
    cols2 = dy2.shape[1] if second else 0
    tiles = -(-cols // BIAS_COLUMNS) + -(-cols2 // BIAS_COLUMNS)
    _kernel(dy, "activation_bias_backward")(
        (min(tiles, MAX_BLOCKS),),
        (BIAS_COLUMNS, BIAS_ROW_THREADS),
        (
            out,
            dy,
            a,
            db,
            np.int64(rows),
            np.int64(cols),
            np.int32(_code(activation)),
            np.float64(alpha),
            dy2,
            db2,
            np.int64(cols2),
        ),
    )
    if also_sum is not None and not second:
        column_sums(*also_sum)  # a layout the kernel does not take: its own sum
    return out


# ----------------------------------------------------------------------------- softmax cross-entropy


def softmax_cross_entropy_reference(z: Any, t: Any) -> tuple[Any, Any]:
    """Loss −(1/N) Σ_n log softmax(z_n)[t_n] (0-d) and its gradient (softmax(z) − onehot(t)) / N.

    z: (N, C) logits; t: (N,) integer labels in [0, C).
    """
    xp = array_module(z)
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    loss = (xp.log(sums).sum() - shifted[rows, t].sum()) * (1.0 / n)
    grad = exp / sums
    grad[rows, t] -= 1.0
    grad *= 1.0 / n
    return xp.asarray(loss), grad


def softmax_cross_entropy(z: Any, t: Any) -> tuple[Any, Any]:
    """Softmax-with-loss forward and backward together: (loss 0-d, gradient (N, C)).

    z: (N, C) logits; t: (N,) integer labels. On a GPU: one kernel computes every row's
    gradient and the loss Σ_n (log s_n − (z_n,t − c_n)) / N, summed deterministically inside
    the kernel (see CUDA_SOURCE); the loss is a fresh 0-d array of z's dtype. The labels are not
    range-checked here (SoftmaxWithLoss does that, once).
    """
    if not _is_gpu(z):
        return softmax_cross_entropy_reference(z, t)
    xp = array_module(z)
    if not z.flags.c_contiguous:
        z = xp.ascontiguousarray(z)
    labels = t if (t.dtype == np.int64 and t.flags.c_contiguous) else xp.ascontiguousarray(t, dtype=np.int64)
    rows, cols = z.shape
    partials, counter = _loss_scratch(z)
    grad = xp.empty_like(z)
    loss = xp.empty((), dtype=z.dtype)
    threads = 32
    while threads < min(cols, THREADS_PER_BLOCK):
        threads *= 2  # a power of two for the tree reduction
    _kernel(z, "softmax_cross_entropy_rows")(
        (max(1, min(rows, MAX_LOSS_BLOCKS)),),
        (threads,),
        (z, labels, grad, loss, partials, counter, np.int64(rows), np.int64(cols), np.float64(1.0 / rows)),
        shared_mem=threads * 8,
    )
    return loss, grad


# (device, dtype, stream) → (partials: MAX_LOSS_BLOCKS float64, counter: one uint32 at 0
# between launches). One pair per stream: launches on one stream run in order, so they never
# share the pair at the same time; launches on two streams may overlap, and would mix their
# partial sums and tickets if they shared it. Kept until release_loss_scratch(stream): a
# captured CUDA graph holds their addresses.
_LOSS_SCRATCH: dict[tuple[Any, np.dtype, int], tuple[Any, Any]] = {}


def release_loss_scratch(stream: int) -> None:
    """Forget the loss kernel's buffers of a stream that is done (its graph is gone)."""
    for key in [k for k in _LOSS_SCRATCH if k[2] == stream]:
        del _LOSS_SCRATCH[key]


def _loss_scratch(z: Any) -> tuple[Any, Any]:
    """The loss kernel's partial-sum buffer and block counter for z's device, dtype and the
    current stream.

    Allocated at the first call on a stream (sized for the largest grid, so no later shape
    needs a new one) and reused by every later call there, including calls recorded in a CUDA graph.
    The first call must not itself be captured: the counter's zeroing would only be recorded,
    not run, and a graph's temporary memory must not back a buffer kept forever. Graph replay
    runs eager warm-up steps first, so this raises only if nothing ever ran eagerly.
    """
    key = (device_of(z), z.dtype, stream_id(z))
    scratch = _LOSS_SCRATCH.get(key)
    if scratch is None:
        if is_capturing(z):
            raise RuntimeError(
                "softmax_cross_entropy's first call on a stream is being captured into a CUDA graph; "
                "run one step eagerly first, so that its scratch buffers exist before capture"
            )
        xp = array_module(z)
        with key[0]:
            scratch = (xp.zeros(MAX_LOSS_BLOCKS, dtype=np.float64), xp.zeros(1, dtype=np.uint32))
        _LOSS_SCRATCH[key] = scratch
    return scratch
