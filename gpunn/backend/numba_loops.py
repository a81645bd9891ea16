"""The compiled loops of :class:`~gpunn.backend.numba_ops.NumbaOps` (importing this imports Numba).

Module-level functions, so that Numba's on-disk cache finds them again in the next process.
No fastmath: Numba then neither contracts a·b + c into a fused multiply-add nor reassociates,
so each loop rounds exactly as the reference's NumPy passes do. ``error_model="numpy"`` lets a
division by zero give inf as NumPy's does, and lets LLVM vectorize the loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

OPTIONS = {"nogil": True, "boundscheck": False, "error_model": "numpy"}


def jit(function: Callable[..., Any]) -> Any:
    try:
        return numba.njit(cache=True, **OPTIONS)(function)
    except RuntimeError:  # no writable cache directory: compiled anew in each process instead
        return numba.njit(**OPTIONS)(function)


# Each loop runs from 0 over arrays sliced to its range: indexed from 0 up to their length,
# Numba drops its negative-index wrap-around, and LLVM vectorizes the loop (a loop over
# range(lo, hi) of the whole buffers ran 6× slower). No branch in a loop body, either.
@jit
def adam_range(p, g, m, v, c, k, lo, hi, l2_on, decay_on):
    """Adam over elements [lo, hi) of the flat buffers, whose weights are [0, k); c holds
    (l2, β1, 1−β1, β2, 1−β2, inv_sqrt_bc2, ε, step_size, decay_factor) in p's dtype. On the
    weights g' = g + l2·p when l2_on, and p·decay_factor before the step when decay_on or
    l2_on (decay_factor is 1 then: x·1 = x exactly); elsewhere g' = g."""
    l2, b1, c1, b2, c2, ib, eps, ss, df = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    mid = min(max(k, lo), hi)  # [lo, mid): weights; [mid, hi): the rest
    if l2_on or decay_on:
        pp, gg, mm, vv = p[lo:mid], g[lo:mid], m[lo:mid], v[lo:mid]
        if l2_on:
            for i in range(pp.shape[0]):
                pi = pp[i]
                gi = gg[i] + l2 * pi
                mi = mm[i] * b1 + gi * c1
                vi = vv[i] * b2 + (gi * gi) * c2
                mm[i] = mi
                vv[i] = vi
                pp[i] = pi * df - (mi / (np.sqrt(vi) * ib + eps)) * ss
        else:  # the rest's loop but for the factor, which must come in the buffer's dtype
            for i in range(pp.shape[0]):
                gi = gg[i]
                mi = mm[i] * b1 + gi * c1
                vi = vv[i] * b2 + (gi * gi) * c2
                mm[i] = mi
                vv[i] = vi
                pp[i] = pp[i] * df - (mi / (np.sqrt(vi) * ib + eps)) * ss
    else:
        mid = lo
    # the rest without the factor: multiplying by a df of 1 would cost a pass's multiply on the
    # common no-decay path (and a literal 1.0 would be float64)
    pp, gg, mm, vv = p[mid:hi], g[mid:hi], m[mid:hi], v[mid:hi]
    for i in range(pp.shape[0]):
        gi = gg[i]
        mi = mm[i] * b1 + gi * c1
        vi = vv[i] * b2 + (gi * gi) * c2
        mm[i] = mi
        vv[i] = vi
        pp[i] = pp[i] - (mi / (np.sqrt(vi) * ib + eps)) * ss
