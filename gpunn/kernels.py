"""Fused GPU kernels, each with a plain array-module twin that is its reference.

Every update here works in place on whole flat buffers (see :mod:`gpunn.parameter`). On a
GPU one call is one kernel launch: a CuPy ``RawModule`` compiled by NVRTC once per device
and cached (CuPy also caches the binary on disk). On the CPU the ``*_reference`` twin runs:
the same formula as a short sequence of in-place NumPy operations that reuse a small scratch
buffer, so a step allocates nothing; :func:`run_on_cpu` feeds it the buffers in cache-sized
pieces, split between threads for big models. The twins accept CuPy arrays too, which is how the
tests check each kernel against its reference on a GPU.

Hyperparameters reach the kernels as float64 and are rounded once to the buffer's dtype,
exactly as a Python float is when it meets a float32 array in NumPy, so both paths compute
with the same constants.

Every update rule works on the effective gradient

    ĝ[i] = g[i]·scale + (i < n_decay ? l2·p[i] + l1·sign(p[i]) : 0),
    scale = min(1, max_norm / (√sq_norm + 1e-6))   (1 without clipping),

so an L2 / L1 penalty and global-norm clipping cost no launch of their own: ``sq_norm`` is the
squared norm of g in a device scalar (:func:`sum_of_squares`, two small launches, no host
read), the penalty is added after clipping (PyTorch's order), and g is only read. Without
penalty and clipping the CPU runs the plain formula, bit for bit as before. An optional
``live`` device array [lr, t] replaces the learning rate and step number given at launch,
for CUDA-graph replay (:func:`advance_step` moves t on the device).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .backend import array_module

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65_535
REDUCE_BLOCKS = 1_024  # blocks of the sum-of-squares reduction: one atomicAdd each

# One grid-stride loop per update rule; templated on the element type (float, double).
#
# Every update sees the effective gradient ĝ[i] = g[i]·scale + (i < n_decay ? l2·p[i] + l1·sign(p[i]) : 0)
# (EffectiveGrad below): the loss gradient, clipped by the factor scale = min(1, max_norm / (√sq_norm + 1e-6))
# when sq_norm (the squared global norm of g, a device scalar) is not null, plus the L2 / L1
# penalties' gradients on the weights. The penalty is added after clipping (PyTorch's order). g
# itself is only read. With ``live`` not null, the learning rate and the 1-based step number t
# come from device memory (live[0], live[1]) instead of the launch arguments, so that a CUDA
# graph replays the same launch with the current values.
CUDA_SOURCE = r"""
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// g·scale + (i < n_decay ? l2·p + l1·sign(p) : 0): the gradient an update rule sees
template <typename T>
struct EffectiveGrad {
  long long n_decay;
  T scale, l2, l1;
  bool clip;
  __device__ EffectiveGrad(const long long n_decay_, const double l2_, const double l1_, const double max_norm,
                           const double* __restrict__ sq_norm)
      : n_decay(n_decay_), l2((T)l2_), l1((T)l1_), clip(sq_norm != nullptr) {
    scale = clip ? (T)fmin(1.0, max_norm / (sqrt(*sq_norm) + 1e-6)) : (T)1;
  }
  __device__ __forceinline__ T operator()(const long long i, const T gi, const T pi) const {
    T e = clip ? gi * scale : gi;
    if (i < n_decay) {
      if (l2 != (T)0) e += l2 * pi;
      if (l1 != (T)0) e += l1 * (T)((pi > (T)0) - (pi < (T)0));
    }
    return e;
  }
};

#define FUSED_PARAMS                                                                      \
  const double l2, const double l1, const double max_norm, const double* __restrict__ sq_norm, \
      const double* __restrict__ live

template <typename T>
__global__ void sgd_update(T* __restrict__ p, const T* __restrict__ g, const long long n, const long long n_decay,
                           const double lr, FUSED_PARAMS) {
  const T lr_ = (T)(live ? live[0] : lr);
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    p[i] = pi - lr_ * grad(i, g[i], pi);
  }
}

template <typename T>
__global__ void momentum_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                const long long n, const long long n_decay, const double lr,
                                const double momentum, const int nesterov, FUSED_PARAMS) {
  const T lr_ = (T)(live ? live[0] : lr), mu = (T)momentum;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T vi = mu * v[i] + gi;
    v[i] = vi;
    p[i] = pi - lr_ * (nesterov ? gi + mu * vi : vi);
  }
}

template <typename T>
__global__ void adagrad_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h,
                               const long long n, const long long n_decay, const double lr, const double eps,
                               FUSED_PARAMS) {
  const T lr_ = (T)(live ? live[0] : lr), eps_ = (T)eps;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T hi = h[i] + gi * gi;
    h[i] = hi;
    p[i] = pi - lr_ * gi / (sqrt(hi) + eps_);
  }
}

template <typename T>
__global__ void rmsprop_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s,
                               const long long n, const long long n_decay, const double lr, const double alpha,
                               const double eps, FUSED_PARAMS) {
  const T lr_ = (T)(live ? live[0] : lr), a = (T)alpha, one_minus_a = (T)(1.0 - alpha), eps_ = (T)eps;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T si = a * s[i] + one_minus_a * (gi * gi);
    s[i] = si;
    p[i] = pi - lr_ * gi / (sqrt(si) + eps_);
  }
}

// With live: step_size = lr / (1 − β1^t), inv_sqrt_bc2 = 1 / √(1 − β2^t), decay_factor = 1 − lr·wd
// from lr = live[0], t = live[1], in double (kernels.adam_constants on the host otherwise).
template <typename T>
__global__ void adam_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                            T* __restrict__ v, const long long n, const long long n_decay,
                            const double step_size, const double beta1, const double beta2,
                            const double eps, const double inv_sqrt_bc2, const double decay_factor,
                            const double weight_decay, FUSED_PARAMS) {
  double step_size_d = step_size, inv_sqrt_bc2_d = inv_sqrt_bc2, decay_factor_d = decay_factor;
  if (live) {
    const double lr = live[0], t = live[1];
    step_size_d = lr / (1.0 - pow(beta1, t));
    inv_sqrt_bc2_d = 1.0 / sqrt(1.0 - pow(beta2, t));
    decay_factor_d = 1.0 - lr * weight_decay;
  }
  const T lr_ = (T)step_size_d, b1 = (T)beta1, b2 = (T)beta2;
  const T one_minus_b1 = (T)(1.0 - beta1), one_minus_b2 = (T)(1.0 - beta2);
  const T eps_ = (T)eps, c2 = (T)inv_sqrt_bc2_d, keep = (T)decay_factor_d;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T p0 = p[i];
    const T gi = grad(i, g[i], p0);
    const T mi = b1 * m[i] + one_minus_b1 * gi;
    const T vi = b2 * v[i] + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const T pi = i < n_decay ? p0 * keep : p0;
    p[i] = pi - lr_ * mi / (sqrt(vi) * c2 + eps_);
  }
}

// y <- y + a * x (the L2 penalty's gradient, lambda * W, added to the weights' gradient)
template <typename T>
__global__ void axpy_update(T* __restrict__ y, const T* __restrict__ x, const long long n, const double a) {
  const T a_ = (T)a;
  GRID_STRIDE_LOOP(i, n) { y[i] += a_ * x[i]; }
}

// *out += Σ x² over this grid's share, accumulated in double: a block reduction (warp
// shuffles, then one warp over the warps' sums), one atomicAdd per block. *out must be 0 first
// (zero_sum). No cuBLAS and no host sync, so it can be captured in a CUDA graph.
template <typename T>
__global__ void sum_of_squares(const T* __restrict__ x, const long long n, double* __restrict__ out) {
  __shared__ double warp_sums[32];
  double acc = 0.0;
  GRID_STRIDE_LOOP(i, n) {
    const double xi = (double)x[i];
    acc += xi * xi;
  }
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < (int)((blockDim.x + 31) >> 5) ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) atomicAdd(out, acc);
  }
}

// *out <- 0 (one thread), before sum_of_squares accumulates into it
extern "C" __global__ void zero_sum(double* __restrict__ out) { out[0] = 0.0; }

// live[1] += 1 (one thread): the step number t of the update that follows, in device memory
extern "C" __global__ void advance_step(double* __restrict__ live) { live[1] += 1.0; }
"""

# Templated kernels (instantiated for float and double) and plain extern "C" ones.
KERNEL_NAMES = (
    "sgd_update",
    "momentum_update",
    "adagrad_update",
    "rmsprop_update",
    "adam_update",
    "axpy_update",
    "sum_of_squares",
)
PLAIN_KERNEL_NAMES = ("zero_sum", "advance_step")
UPDATE_KERNELS = KERNEL_NAMES[:5]
NULL = np.uint64(0)  # a null device pointer as a RawKernel argument (None would not be 0)
_CTYPES = {np.dtype("float32"): "float", np.dtype("float64"): "double"}
_modules: dict[tuple[int, str], Any] = {}


def compiled(xp: Any, source: str, names: tuple[str, ...]) -> Any:
    """The RawModule of ``source`` for the current GPU, with every kernel in ``names``
    instantiated for float and double; compiled by NVRTC once per device and source."""
    key = (xp.cuda.Device().id, source)
    module = _modules.get(key)
    if module is None:
        expressions = [f"{k}<{c}>" for k in names for c in _CTYPES.values()]
        module = xp.RawModule(code=source, options=("--std=c++17",), name_expressions=expressions)
        _modules[key] = module
    return module


def kernel(xp: Any, source: str, names: tuple[str, ...], name: str, dtype: Any) -> Any:
    """Kernel ``name`` of ``source`` for elements of ``dtype`` (float32 or float64)."""
    return compiled(xp, source, names).get_function(f"{name}<{_CTYPES[np.dtype(dtype)]}>")


def grid(n: int) -> tuple[int]:
    """Blocks for a grid-stride loop over n elements."""
    return (max(1, min(MAX_BLOCKS, -(-n // THREADS_PER_BLOCK))),)


def _run(xp: Any, name: str, dtype: Any, blocks: tuple[int], threads: tuple[int], args: tuple[Any, ...]) -> None:
    """Launch kernel ``name`` of CUDA_SOURCE: the template instance for ``dtype``, or the plain
    extern "C" kernel when ``dtype`` is None. Every launch of this module goes through here."""
    if dtype is None:
        function = compiled(xp, CUDA_SOURCE, KERNEL_NAMES).get_function(name)
    else:
        function = kernel(xp, CUDA_SOURCE, KERNEL_NAMES, name, dtype)
    function(blocks, threads, args)


def _launch(name: str, first: Any, *args: Any) -> None:
    """Launch optimizer kernel ``name`` over the flat buffer ``first`` (and ``args``)."""
    _run(array_module(first), name, first.dtype, grid(first.size), (THREADS_PER_BLOCK,), (first, *args))


def _is_gpu(x: Any) -> bool:
    return array_module(x) is not np


def _flat_args(*buffers: Any) -> None:
    for b in buffers:
        if b.ndim != 1 or not b.flags.c_contiguous:
            raise ValueError("fused updates need contiguous 1-D buffers")


def _pointer(buffer: Any, size: int, what: str) -> Any:
    """The launch argument of an optional ``const double*``: the device array, or NULL for None."""
    if buffer is None:
        return NULL
    if not _is_gpu(buffer) or buffer.dtype != np.float64 or buffer.size < size or not buffer.flags.c_contiguous:
        raise ValueError(
            f"{what} must be a contiguous float64 device array of at least {size} element(s), got "
            f"{type(buffer).__name__} of dtype {getattr(buffer, 'dtype', None)}, size {getattr(buffer, 'size', None)}"
        )
    return buffer


def _fused_args(l2: float, l1: float, max_norm: float | None, sq_norm: Any, live: Any) -> tuple[Any, ...]:
    """The launch arguments every update kernel ends with (FUSED_PARAMS in the source)."""
    if sq_norm is not None and max_norm is None:
        raise ValueError("clipping needs max_norm as well as sq_norm")
    return (
        np.float64(l2),
        np.float64(l1),
        np.float64(0.0 if max_norm is None else max_norm),
        _pointer(sq_norm, 1, "sq_norm"),
        _pointer(live, 2, "live"),
    )


def is_capturing(x: Any) -> bool:
    """Whether the current CUDA stream of ``x``'s device is capturing a graph (False on the CPU):
    kernels launched now are recorded, not run."""
    if not _is_gpu(x):
        return False
    return bool(array_module(x).cuda.get_current_stream().is_capturing())


# ----------------------------------------------------------------------------- device scalars


def sum_of_squares(x: Any, out: Any) -> None:
    """out ← Σ x² over a flat buffer, into a 1-element float64 array on x's device, without
    reading anything back to the host.

    On a GPU: two launches, zero_sum and a block reduction with one atomicAdd per block (summed
    in double; no cuBLAS, so a CUDA graph can capture it; the order of the atomic additions
    varies, so the last bits may differ between runs). The NumPy twin is one BLAS dot in x's dtype.
    """
    if _is_gpu(x):
        _flat_args(x)
        xp = array_module(x)
        out = _pointer(out, 1, "out")
        _run(xp, "zero_sum", None, (1,), (1,), (out,))
        blocks = (min(grid(x.size)[0], REDUCE_BLOCKS),)
        _run(xp, "sum_of_squares", x.dtype, blocks, (THREADS_PER_BLOCK,), (x, np.int64(x.size), out))
    else:
        if x.ndim != 1:
            raise ValueError("sum_of_squares needs a 1-D buffer")
        out[...] = x @ x


def advance_step(live: Any) -> None:
    """live[1] ← live[1] + 1: the step number t of the update that follows, in the [lr, t]
    array (one one-thread kernel on a GPU, so that a captured step counts its replays)."""
    if _is_gpu(live):
        _run(array_module(live), "advance_step", None, (1,), (1,), (_pointer(live, 2, "live"),))
    else:
        live[1] += 1.0


def clip_scale(max_norm: float, sq_norm: Any) -> float:
    """min(1, max_norm / (√sq_norm + 1e-6)): the clipping factor of a gradient whose squared
    global norm is ``sq_norm`` (a float or a 1-element host array). A NaN norm gives 1, like
    the kernels' fmin."""
    sq = sq_norm.item() if hasattr(sq_norm, "item") else float(sq_norm)
    return min(1.0, max_norm / (math.sqrt(sq) + 1e-6))


def _penalties(n_decay: int, l2: float, l1: float, max_norm: float | None, sq_norm: Any) -> dict[str, Any] | None:
    """The CPU twins' effective-gradient arguments, or None when ĝ is g (the fast path)."""
    if sq_norm is None:
        scale = 1.0
    elif max_norm is None:
        raise ValueError("clipping needs max_norm as well as sq_norm")
    else:
        scale = clip_scale(max_norm, sq_norm)
    if scale == 1.0 and (n_decay <= 0 or (l2 == 0.0 and l1 == 0.0)):
        return None
    return {"n_decay": n_decay, "scale": scale, "l2": l2, "l1": l1}


# ----------------------------------------------------------------------------- the CPU runner

CHUNK = 65_536  # elements per piece: the five float32 pieces of an Adam update fit a 512 KiB L2
PARALLEL_MIN = 1 << 20  # below this many elements a second thread costs more than it saves
_pool: ThreadPoolExecutor | None = None


def cpu_workers() -> int:
    """Threads for the CPU twins of big updates (the cores this process may use, at most 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def scratch(size: int, dtype: Any, lanes: int = 1) -> np.ndarray:
    """The scratch rows a CPU update of ``size`` elements needs: one row per worker thread of
    ``lanes`` pieces of at most CHUNK elements (so the scratch never grows with the model).
    An update that adds penalties or clips needs two lanes (the effective gradient and the
    rule's scratch); given one it runs in pieces half as long, given two for a plain update
    in pieces twice as long."""
    workers = cpu_workers() if size >= PARALLEL_MIN else 1
    return np.empty((workers, lanes * min(size, CHUNK)), dtype=dtype)


def run_on_cpu(reference: Callable[..., None], p: Any, buffers: tuple[Any, ...], tmp: Any, **hyper: Any) -> None:
    """Run ``reference(p, *buffers, tmp, **hyper)`` piece by piece, so that every pass of the
    update works on data in cache instead of streaming whole buffers from memory 10+ times;
    big updates are split between threads (NumPy releases the GIL inside its loops).

    ``tmp`` is one scratch row, or one row per thread ((workers, piece) as :func:`scratch`
    makes). ``n_decay`` (the weights prefix) is translated to each piece.
    """
    rows = tmp if tmp.ndim == 2 else tmp.reshape(1, -1)
    n = p.size
    if n <= rows.shape[1]:  # one piece: no loop, no per-piece bookkeeping (small models, every step)
        reference(p, *buffers, rows[0, :n], **hyper)
        return
    _run_in_pieces(reference, p, buffers, rows, rows.shape[1], 1, hyper)


def run_on_cpu_in_lanes(
    reference: Callable[..., None], p: Any, buffers: tuple[Any, ...], tmp: Any, lanes: int, **hyper: Any
) -> None:
    """:func:`run_on_cpu` for a ``reference`` that needs ``lanes`` scratch vectors as long as
    its piece (the effective gradient and the rule's scratch): a piece is width / lanes
    elements, and ``reference`` gets lanes × the piece's length of its row."""
    rows = tmp if tmp.ndim == 2 else tmp.reshape(1, -1)
    piece = rows.shape[1] // lanes
    if piece < 1:
        raise ValueError(f"the scratch rows hold {rows.shape[1]} elements; this update needs at least {lanes}")
    n = p.size
    if n <= piece:
        reference(p, *buffers, rows[0, : lanes * n], **hyper)
        return
    _run_in_pieces(reference, p, buffers, rows, piece, lanes, hyper)


def _run_in_pieces(
    reference: Callable[..., None],
    p: Any,
    buffers: tuple[Any, ...],
    rows: Any,
    piece: int,
    lanes: int,
    hyper: dict[str, Any],
) -> None:
    n = p.size

    def run(lo: int, hi: int, row: Any) -> None:
        for a in range(lo, hi, piece):
            b = min(a + piece, hi)
            local = hyper if "n_decay" not in hyper else {**hyper, "n_decay": min(max(hyper["n_decay"] - a, 0), b - a)}
            reference(p[a:b], *(buf[a:b] for buf in buffers), row[: lanes * (b - a)], **local)

    workers = rows.shape[0] if n >= PARALLEL_MIN else 1
    if workers == 1:
        run(0, n, rows[0])
        return
    global _pool  # noqa: PLW0603 — one pool for the process, made on first use
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=cpu_workers(), thread_name_prefix="gpunn-update")
    share = -(-n // workers // piece) * piece  # contiguous shares, aligned to whole pieces
    futures = [_pool.submit(run, k * share, min((k + 1) * share, n), rows[k]) for k in range(1, workers)]
    run(0, min(share, n), rows[0])
    for future in futures:
        future.result()


# ----------------------------------------------------------------------------- the effective gradient


def effective_gradient(
    p: Any, g: Any, tmp: Any, *, n_decay: int = 0, scale: float = 1.0, l2: float = 0.0, l1: float = 0.0
) -> tuple[Any, Any]:
    """ĝ = g·scale + [i < n_decay]·(l2·p + l1·sign(p)): the gradient the update rules see
    (the CPU twin of the kernels' EffectiveGrad). Returns (ĝ, the rule's scratch).

    When ĝ is g (scale 1, and no penalty on any element) that is (g, tmp[:n]) and nothing is
    computed. Otherwise ĝ is written into tmp[n:2n] and tmp[:n] is left for the rule, so tmp
    must hold 2·n elements; g is only read. Rounding: with scale 1, ĝ = fl(g + fl(l2·p)),
    exactly what ``g += l2·p`` (L2.backward) then the update computed; L1 likewise adds
    fl(l1·sign(p)); with clipping, fl(g·scale) comes first.
    """
    n = p.size
    k = min(max(n_decay, 0), n)
    if scale == 1.0 and (k == 0 or (l2 == 0.0 and l1 == 0.0)):
        return g, tmp[:n]
    if tmp.size < 2 * n:
        raise ValueError(f"the effective gradient of {n} elements needs a scratch of {2 * n}, got {tmp.size}")
    xp = array_module(p)
    rest, e = tmp[:n], tmp[n : 2 * n]
    pk, gk, ek, rk = p[:k], g[:k], e[:k], rest[:k]
    written = scale != 1.0  # whether ek holds the loss gradient's part yet
    if written:
        xp.multiply(g, scale, out=e)
    elif k < n:
        e[k:] = g[k:]
    if l2 != 0.0:
        if written:
            xp.multiply(pk, l2, out=rk)
            ek += rk
        else:
            xp.multiply(pk, l2, out=ek)
            ek += gk
            written = True
    if l1 != 0.0:
        xp.sign(pk, out=rk)
        rk *= l1
        if written:
            ek += rk
        else:
            xp.add(gk, rk, out=ek)
    return e, rest


# ----------------------------------------------------------------------------- SGD


def _sgd(p: Any, g: Any, tmp: Any, *, lr: float) -> None:
    array_module(p).multiply(g, lr, out=tmp)
    p -= tmp


def sgd_reference(
    p: Any, g: Any, tmp: Any, *, lr: float, n_decay: int = 0, scale: float = 1.0, l2: float = 0.0, l1: float = 0.0
) -> None:
    """p ← p − lr·ĝ  (ĝ: :func:`effective_gradient`; ĝ = g without penalty or clipping)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    _sgd(p, g, tmp, lr=lr)


def sgd_update(
    p: Any,
    g: Any,
    tmp: Any,
    *,
    lr: float,
    n_decay: int = 0,
    l2: float = 0.0,
    l1: float = 0.0,
    max_norm: float | None = None,
    sq_norm: Any = None,
    live: Any = None,
) -> None:
    """p ← p − lr·ĝ over flat buffers: one kernel on a GPU (``tmp`` unused there), the twin in
    pieces on the CPU. ĝ = g·scale + [i < n_decay]·(l2·p + l1·sign(p)), with scale =
    min(1, max_norm / (√sq_norm + 1e-6)) when ``sq_norm`` (the squared global norm of g, see
    :func:`sum_of_squares`) is given, else 1. With ``live`` (a float64 [lr, t] array on p's
    device) lr is read from live[0] when the update runs. g is only read."""
    if _is_gpu(p):
        _flat_args(p, g)
        fused = _fused_args(l2, l1, max_norm, sq_norm, live)
        _launch("sgd_update", p, g, np.int64(p.size), np.int64(n_decay), np.float64(lr), *fused)
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else _penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(_sgd, p, (g,), tmp, lr=lr)
    else:
        run_on_cpu_in_lanes(sgd_reference, p, (g,), tmp, 2, lr=lr, **extras)


# ----------------------------------------------------------------------------- Momentum / Nesterov


def _momentum(p: Any, g: Any, v: Any, tmp: Any, *, lr: float, momentum: float, nesterov: bool) -> None:
    xp = array_module(p)
    v *= momentum
    v += g
    if nesterov:
        xp.multiply(v, momentum, out=tmp)
        tmp += g
        tmp *= lr
    else:
        xp.multiply(v, lr, out=tmp)
    p -= tmp


def momentum_reference(
    p: Any,
    g: Any,
    v: Any,
    tmp: Any,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """v ← μ·v + ĝ;  p ← p − lr·v  (Nesterov: p ← p − lr·(ĝ + μ·v))"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    _momentum(p, g, v, tmp, lr=lr, momentum=momentum, nesterov=nesterov)


def momentum_update(
    p: Any,
    g: Any,
    v: Any,
    tmp: Any,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    n_decay: int = 0,
    l2: float = 0.0,
    l1: float = 0.0,
    max_norm: float | None = None,
    sq_norm: Any = None,
    live: Any = None,
) -> None:
    """Heavy-ball or Nesterov momentum over flat buffers (fused on a GPU; ``tmp`` unused there).
    ĝ, ``n_decay``, ``l2``, ``l1``, ``max_norm``, ``sq_norm`` and ``live`` as in :func:`sgd_update`."""
    if _is_gpu(p):
        _flat_args(p, g, v)
        _launch(
            "momentum_update",
            p,
            g,
            v,
            np.int64(p.size),
            np.int64(n_decay),
            np.float64(lr),
            np.float64(momentum),
            np.int32(1 if nesterov else 0),
            *_fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else _penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(_momentum, p, (g, v), tmp, lr=lr, momentum=momentum, nesterov=nesterov)
    else:
        run_on_cpu_in_lanes(
            momentum_reference, p, (g, v), tmp, 2, lr=lr, momentum=momentum, nesterov=nesterov, **extras
        )


# ----------------------------------------------------------------------------- AdaGrad


def _adagrad(p: Any, g: Any, h: Any, tmp: Any, *, lr: float, eps: float) -> None:
    xp = array_module(p)
    xp.multiply(g, g, out=tmp)
    h += tmp
    xp.sqrt(h, out=tmp)
    tmp += eps
    xp.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp


def adagrad_reference(
    p: Any,
    g: Any,
    h: Any,
    tmp: Any,
    *,
    lr: float,
    eps: float,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """h ← h + ĝ²;  p ← p − lr·ĝ / (√h + ε)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    _adagrad(p, g, h, tmp, lr=lr, eps=eps)


def adagrad_update(
    p: Any,
    g: Any,
    h: Any,
    tmp: Any,
    *,
    lr: float,
    eps: float,
    n_decay: int = 0,
    l2: float = 0.0,
    l1: float = 0.0,
    max_norm: float | None = None,
    sq_norm: Any = None,
    live: Any = None,
) -> None:
    """AdaGrad over flat buffers (fused on a GPU); the other arguments as in :func:`sgd_update`."""
    if _is_gpu(p):
        _flat_args(p, g, h)
        fused = _fused_args(l2, l1, max_norm, sq_norm, live)
        _launch("adagrad_update", p, g, h, np.int64(p.size), np.int64(n_decay), np.float64(lr), np.float64(eps), *fused)
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else _penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(_adagrad, p, (g, h), tmp, lr=lr, eps=eps)
    else:
        run_on_cpu_in_lanes(adagrad_reference, p, (g, h), tmp, 2, lr=lr, eps=eps, **extras)


# ----------------------------------------------------------------------------- RMSprop


def _rmsprop(p: Any, g: Any, s: Any, tmp: Any, *, lr: float, alpha: float, eps: float) -> None:
    xp = array_module(p)
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - alpha
    s *= alpha
    s += tmp
    xp.sqrt(s, out=tmp)
    tmp += eps
    xp.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp


def rmsprop_reference(
    p: Any,
    g: Any,
    s: Any,
    tmp: Any,
    *,
    lr: float,
    alpha: float,
    eps: float,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """s ← α·s + (1−α)·ĝ²;  p ← p − lr·ĝ / (√s + ε)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    _rmsprop(p, g, s, tmp, lr=lr, alpha=alpha, eps=eps)


def rmsprop_update(
    p: Any,
    g: Any,
    s: Any,
    tmp: Any,
    *,
    lr: float,
    alpha: float,
    eps: float,
    n_decay: int = 0,
    l2: float = 0.0,
    l1: float = 0.0,
    max_norm: float | None = None,
    sq_norm: Any = None,
    live: Any = None,
) -> None:
    """RMSprop over flat buffers (fused on a GPU); the other arguments as in :func:`sgd_update`."""
    if _is_gpu(p):
        _flat_args(p, g, s)
        _launch(
            "rmsprop_update",
            p,
            g,
            s,
            np.int64(p.size),
            np.int64(n_decay),
            np.float64(lr),
            np.float64(alpha),
            np.float64(eps),
            *_fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else _penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(_rmsprop, p, (g, s), tmp, lr=lr, alpha=alpha, eps=eps)
    else:
        run_on_cpu_in_lanes(rmsprop_reference, p, (g, s), tmp, 2, lr=lr, alpha=alpha, eps=eps, **extras)


# ----------------------------------------------------------------------------- y += a·x


def axpy_reference(y: Any, x: Any, tmp: Any, *, a: float) -> None:
    """y ← y + a·x"""
    array_module(y).multiply(x, a, out=tmp)
    y += tmp


def axpy_update(y: Any, x: Any, tmp: Any, *, a: float) -> None:
    """y ← y + a·x over flat buffers: one kernel on a GPU; on the CPU in cache-sized pieces
    with a small scratch (``tmp``, see :func:`scratch`), so no temporary of y's size."""
    if _is_gpu(y):
        _flat_args(y, x)
        _launch("axpy_update", y, x, np.int64(y.size), np.float64(a))
    else:
        run_on_cpu(axpy_reference, y, (x,), tmp, a=a)


# ----------------------------------------------------------------------------- Adam / AdamW


def adam_constants(lr: float, beta1: float, beta2: float, step: int, weight_decay: float) -> dict[str, float]:
    """Step size, bias correction and decay factor of Adam's update number ``step`` (1-based).

    step_size = lr / (1 − β1^t);  inv_sqrt_bc2 = 1 / √(1 − β2^t);  decay_factor = 1 − lr·wd
    """
    return {
        "step_size": lr / (1.0 - beta1**step),
        "inv_sqrt_bc2": 1.0 / math.sqrt(1.0 - beta2**step),
        "decay_factor": 1.0 - lr * weight_decay,
    }


def _adam(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    *,
    n_decay: int,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    inv_sqrt_bc2: float,
    decay_factor: float,
) -> None:
    xp = array_module(p)
    m *= beta1
    xp.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp
    if decay_factor != 1.0 and n_decay:
        p[:n_decay] *= decay_factor
    xp.sqrt(v, out=tmp)
    tmp *= inv_sqrt_bc2
    tmp += eps
    xp.divide(m, tmp, out=tmp)
    tmp *= step_size
    p -= tmp


def adam_reference(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    *,
    n_decay: int,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    inv_sqrt_bc2: float,
    decay_factor: float,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """m ← β1·m + (1−β1)·ĝ;  v ← β2·v + (1−β2)·ĝ²;  p[:n_decay] ← p[:n_decay]·decay_factor;
    p ← p − step_size·m / (√v·inv_sqrt_bc2 + ε)   (PyTorch's Adam/AdamW arithmetic; ĝ from the
    parameters before the decay)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    _adam(
        p,
        g,
        m,
        v,
        tmp,
        n_decay=n_decay,
        step_size=step_size,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        inv_sqrt_bc2=inv_sqrt_bc2,
        decay_factor=decay_factor,
    )


def adam_update(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    *,
    n_decay: int,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    inv_sqrt_bc2: float,
    decay_factor: float,
    weight_decay: float = 0.0,
    l2: float = 0.0,
    l1: float = 0.0,
    max_norm: float | None = None,
    sq_norm: Any = None,
    live: Any = None,
) -> None:
    """Adam (and AdamW's decoupled decay on the first ``n_decay`` elements) over flat buffers.

    With ``live`` ([lr, t] on p's device) step_size, inv_sqrt_bc2 and decay_factor are
    :func:`adam_constants` of live[0], live[1] and ``weight_decay`` when the update runs (in
    the kernel, in double); without it the host's values are used. ĝ as in :func:`sgd_update`.
    """
    if _is_gpu(p):
        _flat_args(p, g, m, v)
        _launch(
            "adam_update",
            p,
            g,
            m,
            v,
            np.int64(p.size),
            np.int64(n_decay),
            np.float64(step_size),
            np.float64(beta1),
            np.float64(beta2),
            np.float64(eps),
            np.float64(inv_sqrt_bc2),
            np.float64(decay_factor),
            np.float64(weight_decay),
            *_fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        constants = adam_constants(float(live[0]), beta1, beta2, int(live[1]), weight_decay)
        step_size, inv_sqrt_bc2, decay_factor = (
            constants["step_size"],
            constants["inv_sqrt_bc2"],
            constants["decay_factor"],
        )
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else _penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(
            _adam,
            p,
            (g, m, v),
            tmp,
            n_decay=n_decay,
            step_size=step_size,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            inv_sqrt_bc2=inv_sqrt_bc2,
            decay_factor=decay_factor,
        )
    else:
        run_on_cpu_in_lanes(
            adam_reference,
            p,
            (g, m, v),
            tmp,
            2,
            step_size=step_size,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            inv_sqrt_bc2=inv_sqrt_bc2,
            decay_factor=decay_factor,
            **extras,  # n_decay, scale, l2, l1
        )
