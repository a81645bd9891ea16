"""Fused layer kernels for the GPU, each with its plain array-module twin (the reference).

A small network on a GPU is bound by kernel launches, not arithmetic: CuPy spends 15–20 µs
of host time per elementwise call. These kernels do in one launch what the plain path does
in several:

- ``bias_activation``: a = g(z + b) in place on the matrix product's output (plain: 2 calls);
- ``activation_backward``: dz = da · g'(z), written through the saved output a (plain: 2–4);
- ``softmax_cross_entropy``: per row max, log-sum-exp, loss and the gradient (softmax − onehot)/N
  in one kernel, plus one sum for the loss (plain: about 12 calls).

On the CPU the twin runs; it is also what the fused kernels are tested against. Activations
are coded as in ``ACTIVATIONS``; LeakyReLU's slope is ``alpha``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module
from .functional import sigmoid
from .raw_kernels import THREADS_PER_BLOCK, grid, kernel
from .raw_kernels import is_gpu as _is_gpu

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
MAX_ROWS_PER_GRID = 65_535

CUDA_SOURCE = r"""
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// a = g(z); codes: 0 identity, 1 relu, 2 leaky relu (slope alpha), 3 sigmoid, 4 tanh
template <typename T>
__device__ __forceinline__ T activate(const T z, const int act, const T alpha) {
  switch (act) {
    case 1: return z > T(0) ? z : T(0);
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

// One block per row of z (rows x cols), blockDim a power of two, blockDim doubles of shared
// memory. With c = max_j z_j and s = sum_j exp(z_j - c):
//   row_loss = (log s - (z_t - c)) * inv_n      grad_j = (exp(z_j - c) / s - [j == t]) * inv_n
// Accumulated in double, so float32 logits lose nothing to the reductions.
template <typename T>
__global__ void softmax_cross_entropy_rows(const T* __restrict__ z, const long long* __restrict__ t,
                                           T* __restrict__ grad, T* __restrict__ row_loss,
                                           const long long rows, const long long cols, const double inv_n) {
  extern __shared__ double shared[];
  const double negative_infinity = __longlong_as_double(0xfff0000000000000ULL);  // no host headers in NVRTC
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
    if (threadIdx.x == 0) row_loss[row] = (T)((log(s) - ((double)zr[label] - c)) * inv_n);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
      const double p = exp((double)zr[j] - c) / s;
      gr[j] = (T)((p - (j == label ? 1.0 : 0.0)) * inv_n);
    }
  }
}
"""

KERNEL_NAMES = ("bias_activation_forward", "activation_backward", "softmax_cross_entropy_rows")


def _code(activation: str) -> int:
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}") from None


def _kernel(x: Any, name: str) -> Any:
    return kernel(array_module(x), CUDA_SOURCE, KERNEL_NAMES, name, x.dtype)


# ----------------------------------------------------------------------------- bias + activation


def bias_activation_reference(y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
    """y ← g(y + b) in place (y: (N, C), b: (C,)); returns y."""
    code = _code(activation)
    xp = array_module(y)
    y += b
    if code == 1:
        # NumPy's vectorized maximum wants two arrays: against the scalar 0 it takes a strided
        # loop, 2–3× slower on a 200×100 batch. A zero row broadcasts at full speed (same values).
        xp.maximum(y, np.zeros(y.shape[-1], y.dtype) if xp is np else 0.0, out=y)
    elif code == 2:
        y *= xp.where(y > 0, y.dtype.type(1.0), y.dtype.type(alpha))
    elif code == 3:
        sigmoid(y, out=y)
    elif code == 4:
        xp.tanh(y, out=y)
    return y


def bias_activation(y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
    """y ← g(y + b) in place: one kernel on a GPU, the twin on the CPU; returns y."""
    if not _is_gpu(y) or not (y.flags.c_contiguous and b.flags.c_contiguous and y.ndim == 2):
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


def activation_backward(dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None) -> Any:
    """dz = dy · g'(z): one kernel on a GPU, the twin on the CPU. ``out`` may be dy."""
    if not _is_gpu(dy):
        return activation_backward_reference(dy, a, activation, alpha, out)
    contiguous = dy.flags.c_contiguous and a.flags.c_contiguous and (out is None or out.flags.c_contiguous)
    if not contiguous or dy.shape != a.shape:
        return activation_backward_reference(dy, a, activation, alpha, out)  # the twin handles any layout
    if out is None:
        out = array_module(dy).empty_like(dy)
    _kernel(dy, "activation_backward")(
        grid(dy.size),
        (THREADS_PER_BLOCK,),
        (out, dy, a, np.int64(dy.size), np.int32(_code(activation)), np.float64(alpha)),
    )
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

    On a GPU: one kernel for every row's loss and gradient, one sum for the loss. The labels
    are not range-checked here (SoftmaxWithLoss does that, once).
    """
    if not _is_gpu(z):
        return softmax_cross_entropy_reference(z, t)
    xp = array_module(z)
    if not z.flags.c_contiguous:
        z = xp.ascontiguousarray(z)
    labels = t if (t.dtype == np.int64 and t.flags.c_contiguous) else xp.ascontiguousarray(t, dtype=np.int64)
    rows, cols = z.shape
    grad = xp.empty_like(z)
    row_loss = xp.empty(rows, dtype=z.dtype)
    threads = 32
    while threads < min(cols, THREADS_PER_BLOCK):
        threads *= 2  # a power of two for the tree reduction
    _kernel(z, "softmax_cross_entropy_rows")(
        (max(1, min(rows, MAX_ROWS_PER_GRID)),),
        (threads,),
        (z, labels, grad, row_loss, np.int64(rows), np.int64(cols), np.float64(1.0 / rows)),
        shared_mem=threads * 8,
    )
    return row_loss.sum(), grad
