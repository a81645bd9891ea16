"""Fused optimizer updates: one CUDA kernel each on a GPU, the NumPy twin in pieces on the CPU.

Every update here works in place on whole flat buffers (see :mod:`gpunn.parameter`). On a
GPU one call is one kernel launch of :mod:`gpunn.update_source` (a CuPy ``RawModule``
compiled by NVRTC once per device and cached, see :mod:`gpunn.raw_kernels`). On the CPU the
twin of :mod:`gpunn.update_twins` runs: the same formula as a short sequence of in-place NumPy
operations that reuse a small scratch buffer, so a step allocates nothing;
:func:`~gpunn.cpu_runner.run_on_cpu` feeds it the buffers in cache-sized pieces, split between
threads for big models. The twins accept CuPy arrays too, which is how the tests check each
kernel against its reference on a GPU.

Hyperparameters reach the kernels as float64 and are rounded once to the buffer's dtype,
exactly as a Python float is when it meets a float32 array in NumPy, so both paths compute
with the same constants.

Every update rule works on the effective gradient (:mod:`gpunn.effective_gradient`)

    ĝ[i] = g[i]·scale + (i < n_decay ? l2·p[i] + l1·sign(p[i]) : 0),
    scale = min(1, max_norm / (√sq_norm + 1e-6))   (1 without clipping),

so an L2 / L1 penalty and global-norm clipping cost no launch of their own: ``sq_norm`` is the
squared norm of g in a device scalar (:func:`sum_of_squares`, two small launches, no host
read), the penalty is added after clipping (PyTorch's order), and g is only read. Without
penalty and clipping the CPU runs the plain formula, bit for bit as before. An optional
``live`` device array [lr, t] replaces the learning rate and step number given at launch,
for CUDA-graph replay (:func:`advance_step` moves t on the device).

This module is the one callers import: besides the ``*_update`` functions it re-exports (see
``__all__``) the pieces of the modules above that optimizers, regularizers and tests use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cpu_fused
from .cpu_chunks import CHUNK, PARALLEL_MIN, cpu_workers, run_on_cpu, run_on_cpu_in_lanes, scratch
from .cuda import compile as raw_kernels
from .cuda import update_source
from .cuda.compile import MAX_BLOCKS, NULL, THREADS_PER_BLOCK, check_flat, grid, is_capturing
from .cuda.update_source import CUDA_SOURCE, KERNEL_NAMES, PLAIN_KERNEL_NAMES, UPDATE_KERNELS
from .device import array_module
from .effective_gradient import (
    REDUCE_BLOCKS,
    advance_step,
    clip_scale,
    effective_gradient,
    fused_args,
    penalties,
    sum_of_squares,
)
from .update_twins import (
    adagrad_plain,
    adagrad_reference,
    adam_constants,
    adam_plain,
    adam_reference,
    axpy_reference,
    momentum_plain,
    momentum_reference,
    rmsprop_plain,
    rmsprop_reference,
    sgd_plain,
    sgd_reference,
)

__all__ = [
    "CHUNK",
    "CUDA_SOURCE",
    "KERNEL_NAMES",
    "MAX_BLOCKS",
    "NULL",
    "PARALLEL_MIN",
    "PLAIN_KERNEL_NAMES",
    "REDUCE_BLOCKS",
    "THREADS_PER_BLOCK",
    "UPDATE_KERNELS",
    "adagrad_reference",
    "adagrad_update",
    "adam_constants",
    "adam_reference",
    "adam_update",
    "advance_step",
    "axpy_reference",
    "axpy_update",
    "clip_scale",
    "cpu_workers",
    "effective_gradient",
    "grid",
    "is_capturing",
    "momentum_reference",
    "momentum_update",
    "rmsprop_reference",
    "rmsprop_update",
    "run_on_cpu",
    "run_on_cpu_in_lanes",
    "scratch",
    "sgd_reference",
    "sgd_update",
    "sum_of_squares",
]


def _launch(name: str, first: Any, *args: Any) -> None:
    """Launch update kernel ``name`` over the flat buffer ``first`` (and ``args``)."""
    # update_source.launch here and raw_kernels.is_gpu in the updates are looked up on their
    # modules, not imported: one place for the tests to take NumPy arrays for device arrays and
    # record launches (gpunn.effective_gradient's launches go through the same two).
    update_source.launch(array_module(first), name, first.dtype, grid(first.size), (THREADS_PER_BLOCK,), (first, *args))


# ----------------------------------------------------------------------------- SGD


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
    if raw_kernels.is_gpu(p):
        check_flat(p, g)
        fused = fused_args(l2, l1, max_norm, sq_norm, live)
        _launch("sgd_update", p, g, np.int64(p.size), np.int64(n_decay), np.float64(lr), *fused)
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(sgd_plain, p, (g,), tmp, lr=lr)
    else:
        run_on_cpu_in_lanes(sgd_reference, p, (g,), tmp, 2, lr=lr, **extras)


# ----------------------------------------------------------------------------- Momentum / Nesterov


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
    if raw_kernels.is_gpu(p):
        check_flat(p, g, v)
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
            *fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(momentum_plain, p, (g, v), tmp, lr=lr, momentum=momentum, nesterov=nesterov)
    else:
        run_on_cpu_in_lanes(
            momentum_reference, p, (g, v), tmp, 2, lr=lr, momentum=momentum, nesterov=nesterov, **extras
        )


# ----------------------------------------------------------------------------- AdaGrad


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
    if raw_kernels.is_gpu(p):
        check_flat(p, g, h)
        fused = fused_args(l2, l1, max_norm, sq_norm, live)
        _launch("adagrad_update", p, g, h, np.int64(p.size), np.int64(n_decay), np.float64(lr), np.float64(eps), *fused)
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(adagrad_plain, p, (g, h), tmp, lr=lr, eps=eps)
    else:
        run_on_cpu_in_lanes(adagrad_reference, p, (g, h), tmp, 2, lr=lr, eps=eps, **extras)


# ----------------------------------------------------------------------------- RMSprop


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
    if raw_kernels.is_gpu(p):
        check_flat(p, g, s)
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
            *fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        lr = float(live[0])
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(rmsprop_plain, p, (g, s), tmp, lr=lr, alpha=alpha, eps=eps)
    else:
        run_on_cpu_in_lanes(rmsprop_reference, p, (g, s), tmp, 2, lr=lr, alpha=alpha, eps=eps, **extras)


# ----------------------------------------------------------------------------- y += a·x


def axpy_update(y: Any, x: Any, tmp: Any, *, a: float) -> None:
    """y ← y + a·x over flat buffers: one kernel on a GPU; on the CPU in cache-sized pieces
    with a small scratch (``tmp``, see :func:`scratch`), so no temporary of y's size."""
    if raw_kernels.is_gpu(y):
        check_flat(y, x)
        _launch("axpy_update", y, x, np.int64(y.size), np.float64(a))
    else:
        run_on_cpu(axpy_reference, y, (x,), tmp, a=a)


# ----------------------------------------------------------------------------- Adam / AdamW


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
    if raw_kernels.is_gpu(p):
        check_flat(p, g, m, v)
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
            *fused_args(l2, l1, max_norm, sq_norm, live),
        )
        return
    if live is not None:
        constants = adam_constants(float(live[0]), beta1, beta2, int(live[1]), weight_decay)
        step_size, inv_sqrt_bc2, decay_factor = (
            constants["step_size"],
            constants["inv_sqrt_bc2"],
            constants["decay_factor"],
        )
    values = (l2, beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_sqrt_bc2, eps, step_size, decay_factor)
    if (
        sq_norm is None
        and l1 == 0.0
        and all(type(x) is float or type(x) is int for x in values)  # an array lr broadcasts: the twin's
        and cpu_fused.fits(p, g, m, v)  # before ready(): buffers the loop cannot take never load it
        and cpu_fused.ready()
        and cpu_fused.adam(p, g, m, v, n_decay, values)  # the same arithmetic in one compiled pass
    ):
        return
    extras = None if sq_norm is None and l2 == 0.0 and l1 == 0.0 else penalties(n_decay, l2, l1, max_norm, sq_norm)
    if extras is None:
        run_on_cpu(
            adam_plain,
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
