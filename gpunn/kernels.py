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

# One grid-stride loop per update rule; templated on the element type (float, double).
CUDA_SOURCE = r"""
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

template <typename T>
__global__ void sgd_update(T* __restrict__ p, const T* __restrict__ g, const long long n,
                           const double lr) {
  const T lr_ = (T)lr;
  GRID_STRIDE_LOOP(i, n) { p[i] -= lr_ * g[i]; }
}

template <typename T>
__global__ void momentum_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                const long long n, const double lr, const double momentum,
                                const int nesterov) {
  const T lr_ = (T)lr, mu = (T)momentum;
  GRID_STRIDE_LOOP(i, n) {
    const T gi = g[i];
    const T vi = mu * v[i] + gi;
    v[i] = vi;
    p[i] -= lr_ * (nesterov ? gi + mu * vi : vi);
  }
}

template <typename T>
__global__ void adagrad_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h,
                               const long long n, const double lr, const double eps) {
  const T lr_ = (T)lr, eps_ = (T)eps;
  GRID_STRIDE_LOOP(i, n) {
    const T gi = g[i];
    const T hi = h[i] + gi * gi;
    h[i] = hi;
    p[i] -= lr_ * gi / (sqrt(hi) + eps_);
  }
}

template <typename T>
__global__ void rmsprop_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s,
                               const long long n, const double lr, const double alpha,
                               const double eps) {
  const T lr_ = (T)lr, a = (T)alpha, one_minus_a = (T)(1.0 - alpha), eps_ = (T)eps;
  GRID_STRIDE_LOOP(i, n) {
    const T gi = g[i];
    const T si = a * s[i] + one_minus_a * (gi * gi);
    s[i] = si;
    p[i] -= lr_ * gi / (sqrt(si) + eps_);
  }
}

template <typename T>
__global__ void adam_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                            T* __restrict__ v, const long long n, const long long n_decay,
                            const double step_size, const double beta1, const double beta2,
                            const double eps, const double inv_sqrt_bc2,
                            const double decay_factor) {
  const T lr_ = (T)step_size, b1 = (T)beta1, b2 = (T)beta2;
  const T one_minus_b1 = (T)(1.0 - beta1), one_minus_b2 = (T)(1.0 - beta2);
  const T eps_ = (T)eps, c2 = (T)inv_sqrt_bc2, keep = (T)decay_factor;
  GRID_STRIDE_LOOP(i, n) {
    const T gi = g[i];
    const T mi = b1 * m[i] + one_minus_b1 * gi;
    const T vi = b2 * v[i] + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const T pi = i < n_decay ? p[i] * keep : p[i];
    p[i] = pi - lr_ * mi / (sqrt(vi) * c2 + eps_);
  }
}

// y <- y + a * x (the L2 penalty's gradient, lambda * W, added to the weights' gradient)
template <typename T>
__global__ void axpy_update(T* __restrict__ y, const T* __restrict__ x, const long long n, const double a) {
  const T a_ = (T)a;
  GRID_STRIDE_LOOP(i, n) { y[i] += a_ * x[i]; }
}
"""

KERNEL_NAMES = ("sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update", "axpy_update")
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


def _launch(name: str, first: Any, *args: Any) -> None:
    """Launch optimizer kernel ``name`` over the flat buffer ``first`` (and ``args``)."""
    xp = array_module(first)
    kernel(xp, CUDA_SOURCE, KERNEL_NAMES, name, first.dtype)(grid(first.size), (THREADS_PER_BLOCK,), (first, *args))


def _is_gpu(x: Any) -> bool:
    return array_module(x) is not np


def _flat_args(*buffers: Any) -> None:
    for b in buffers:
        if b.ndim != 1 or not b.flags.c_contiguous:
            raise ValueError("fused updates need contiguous 1-D buffers")


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


def scratch(size: int, dtype: Any) -> np.ndarray:
    """The scratch rows a CPU update of ``size`` elements needs: one row of at most CHUNK
    elements per worker thread (so the scratch never grows with the model)."""
    workers = cpu_workers() if size >= PARALLEL_MIN else 1
    return np.empty((workers, min(size, CHUNK)), dtype=dtype)


def run_on_cpu(reference: Callable[..., None], p: Any, buffers: tuple[Any, ...], tmp: Any, **hyper: Any) -> None:
    """Run ``reference(p, *buffers, tmp, **hyper)`` piece by piece, so that every pass of the
    update works on data in cache instead of streaming whole buffers from memory 10+ times;
    big updates are split between threads (NumPy releases the GIL inside its loops).

    ``tmp`` is one scratch row, or one row per thread ((workers, piece) as :func:`scratch`
    makes). Adam's ``n_decay`` prefix is translated to each piece.
    """
    rows = tmp if tmp.ndim == 2 else tmp.reshape(1, -1)
    piece = rows.shape[1]
    n = p.size
    if n <= piece:  # one piece: no loop, no per-piece bookkeeping (small models, every step)
        reference(p, *buffers, rows[0, :n], **hyper)
        return

    def run(lo: int, hi: int, row: Any) -> None:
        for a in range(lo, hi, piece):
            b = min(a + piece, hi)
            local = hyper if "n_decay" not in hyper else {**hyper, "n_decay": min(max(hyper["n_decay"] - a, 0), b - a)}
            reference(p[a:b], *(buf[a:b] for buf in buffers), row[: b - a], **local)

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


# ----------------------------------------------------------------------------- SGD


def sgd_reference(p: Any, g: Any, tmp: Any, *, lr: float) -> None:
    """p ← p − lr·g"""
    array_module(p).multiply(g, lr, out=tmp)
    p -= tmp


def sgd_update(p: Any, g: Any, tmp: Any, *, lr: float) -> None:
    """p ← p − lr·g over flat buffers (fused on a GPU; ``tmp`` unused there)."""
    if _is_gpu(p):
        _flat_args(p, g)
        _launch("sgd_update", p, g, np.int64(p.size), np.float64(lr))
    else:
        run_on_cpu(sgd_reference, p, (g,), tmp, lr=lr)


# ----------------------------------------------------------------------------- Momentum / Nesterov


def momentum_reference(p: Any, g: Any, v: Any, tmp: Any, *, lr: float, momentum: float, nesterov: bool) -> None:
    """v ← μ·v + g;  p ← p − lr·v  (Nesterov: p ← p − lr·(g + μ·v))"""
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


def momentum_update(p: Any, g: Any, v: Any, tmp: Any, *, lr: float, momentum: float, nesterov: bool) -> None:
    """Heavy-ball or Nesterov momentum over flat buffers (fused on a GPU; ``tmp`` unused there)."""
    if _is_gpu(p):
        _flat_args(p, g, v)
        _launch(
            "momentum_update",
            p,
            g,
            v,
            np.int64(p.size),
            np.float64(lr),
            np.float64(momentum),
            np.int32(1 if nesterov else 0),
        )
    else:
        run_on_cpu(momentum_reference, p, (g, v), tmp, lr=lr, momentum=momentum, nesterov=nesterov)


# ----------------------------------------------------------------------------- AdaGrad


def adagrad_reference(p: Any, g: Any, h: Any, tmp: Any, *, lr: float, eps: float) -> None:
    """h ← h + g²;  p ← p − lr·g / (√h + ε)"""
    xp = array_module(p)
    xp.multiply(g, g, out=tmp)
    h += tmp
    xp.sqrt(h, out=tmp)
    tmp += eps
    xp.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp


def adagrad_update(p: Any, g: Any, h: Any, tmp: Any, *, lr: float, eps: float) -> None:
    """AdaGrad over flat buffers (fused on a GPU)."""
    if _is_gpu(p):
        _flat_args(p, g, h)
        _launch("adagrad_update", p, g, h, np.int64(p.size), np.float64(lr), np.float64(eps))
    else:
        run_on_cpu(adagrad_reference, p, (g, h), tmp, lr=lr, eps=eps)


# ----------------------------------------------------------------------------- RMSprop


def rmsprop_reference(p: Any, g: Any, s: Any, tmp: Any, *, lr: float, alpha: float, eps: float) -> None:
    """s ← α·s + (1−α)·g²;  p ← p − lr·g / (√s + ε)"""
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


def rmsprop_update(p: Any, g: Any, s: Any, tmp: Any, *, lr: float, alpha: float, eps: float) -> None:
    """RMSprop over flat buffers (fused on a GPU)."""
    if _is_gpu(p):
        _flat_args(p, g, s)
        _launch("rmsprop_update", p, g, s, np.int64(p.size), np.float64(lr), np.float64(alpha), np.float64(eps))
    else:
        run_on_cpu(rmsprop_reference, p, (g, s), tmp, lr=lr, alpha=alpha, eps=eps)


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
) -> None:
    """m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p[:n_decay] ← p[:n_decay]·decay_factor;
    p ← p − step_size·m / (√v·inv_sqrt_bc2 + ε)   (PyTorch's Adam/AdamW arithmetic)"""
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
) -> None:
    """Adam (and AdamW's decoupled decay on the first ``n_decay`` elements) over flat buffers."""
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
        )
    else:
        run_on_cpu(
            adam_reference,
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
