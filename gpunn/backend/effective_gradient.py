"""The effective gradient every update rule sees, and the device scalars it is made from.

    ĝ[i] = g[i]·scale + (i < n_decay ? l2·p[i] + l1·sign(p[i]) : 0),
    scale = min(1, max_norm / (√sq_norm + 1e-6))   (1 without clipping),

so an L2 / L1 penalty and global-norm clipping cost no launch of their own: ``sq_norm`` is the
squared norm of g in a 1-element float64 device array (:func:`sum_of_squares`, two small
launches, no host read), the penalty is added after clipping (PyTorch's order), and g is only
read. An optional ``live`` float64 device array [lr, t] replaces the learning rate and step
number given at launch, for CUDA-graph replay (:func:`advance_step` moves t on the device).

On a GPU the update kernel forms ĝ itself (``EffectiveGrad`` in :mod:`gpunn.update_source`)
from :func:`fused_args`; on the CPU :func:`effective_gradient` is its twin, fed the arguments
:func:`penalties` works out (None: ĝ is g, and the plain formula runs bit for bit as before).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cuda import compile as raw_kernels
from .cuda import update_source
from .cuda.compile import THREADS_PER_BLOCK, check_flat, device_pointer, grid
from .device import array_module

REDUCE_BLOCKS = 1_024  # blocks of the sum-of-squares reduction: one atomicAdd each


# ----------------------------------------------------------------------------- device scalars


def sum_of_squares(x: Any, out: Any) -> None:
    """out ← Σ x² over a flat buffer, into a 1-element float64 array on x's device, without
    reading anything back to the host.

    On a GPU: two launches, zero_sum and a block reduction with one atomicAdd per block (summed
    in double; no cuBLAS, so a CUDA graph can capture it; the order of the atomic additions
    varies, so the last bits may differ between runs). The NumPy twin is one BLAS dot in x's dtype.
    """
    # raw_kernels.is_gpu and update_source.launch are looked up on their modules, not imported:
    # one place for the tests to take NumPy arrays for device arrays and record the launches.
    if raw_kernels.is_gpu(x):
        check_flat(x)
        xp = array_module(x)
        out = device_pointer(out, 1, "out")
        update_source.launch(xp, "zero_sum", None, (1,), (1,), (out,))
        blocks = (min(grid(x.size)[0], REDUCE_BLOCKS),)
        update_source.launch(xp, "sum_of_squares", x.dtype, blocks, (THREADS_PER_BLOCK,), (x, np.int64(x.size), out))
    else:
        if x.ndim != 1:
            raise ValueError("sum_of_squares needs a 1-D buffer")
        out[...] = x @ x


def advance_step(live: Any) -> None:
    """live[1] ← live[1] + 1: the step number t of the update that follows, in the [lr, t]
    array (one one-thread kernel on a GPU, so that a captured step counts its replays)."""
    if raw_kernels.is_gpu(live):
        update_source.launch(array_module(live), "advance_step", None, (1,), (1,), (device_pointer(live, 2, "live"),))
    else:
        live[1] += 1.0


def clip_scale(max_norm: float, sq_norm: Any) -> float:
    """min(1, max_norm / (√sq_norm + 1e-6)): the clipping factor of a gradient whose squared
    global norm is ``sq_norm`` (a float or a 1-element host array). A NaN norm gives 1, like
    the kernels' fmin."""
    sq = sq_norm.item() if hasattr(sq_norm, "item") else float(sq_norm)
    return min(1.0, max_norm / (math.sqrt(sq) + 1e-6))


# ----------------------------------------------------------------------------- the arguments of ĝ


def fused_args(l2: float, l1: float, max_norm: float | None, sq_norm: Any, live: Any) -> tuple[Any, ...]:
    """The launch arguments every update kernel ends with (FUSED_PARAMS in the source)."""
    if sq_norm is not None and max_norm is None:
        raise ValueError("clipping needs max_norm as well as sq_norm")
    return (
        np.float64(l2),
        np.float64(l1),
        np.float64(0.0 if max_norm is None else max_norm),
        device_pointer(sq_norm, 1, "sq_norm"),
        device_pointer(live, 2, "live"),
    )


def penalties(n_decay: int, l2: float, l1: float, max_norm: float | None, sq_norm: Any) -> dict[str, Any] | None:
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


# ----------------------------------------------------------------------------- the CPU twin


def add_l2(w: Any, g: Any, out: Any, l2: Any) -> None:
    """out ← fl(g + fl(l2·w)): the L2 term on the weights, added to their loss gradient in
    L2.backward's rounding (``l2`` a Python float or a 0-d array of w's dtype holding it)."""
    xp = array_module(w)
    xp.multiply(w, l2, out=out)
    xp.add(out, g, out=out)


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
            add_l2(pk, gk, ek, l2)
            written = True
    if l1 != 0.0:
        xp.sign(pk, out=rk)
        rk *= l1
        if written:
            ek += rk
        else:
            xp.add(gk, rk, out=ek)
    return e, rest
