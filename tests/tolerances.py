"""How far a fused GPU kernel may be from the reference: a bound in the sizes of the terms.

NVRTC and ptxas contract ``a*b + c`` into one fused multiply-add (gpunn compiles with their
default contraction on, see :mod:`gpunn.backend.cuda.compile`), and CUDA's exp/tanh are not the host
libm's, so a kernel cannot promise bit-for-bit agreement with the NumPy reference. What it promises
instead: each output element is within a few units in the last place of the *magnitude of the
terms it was computed from* — the formula evaluated on absolute values, in float64 — not of the
result, which cancellation can make arbitrarily small. :func:`assert_within_term_bound` checks
that, for NumPy or CuPy arrays.

Counting the bound: every rounding (an operation of the formula, or a constant rounded to the
element type) has a relative error of at most u = eps/2 of the value it rounds; along a chain of
k roundings, with the terms' magnitude M (which bounds every intermediate value's terms), the
error is at most k·u·M = (k/2)·eps·M to first order. A product's count is its factors' counts
plus one, a sum's the larger of its terms' plus one, a quotient by a sum of positive terms the
counts of both plus one, a square root's its argument's plus one (conservatively: it halves a
relative error); where a function's argument has an error, the function's conditioning goes into
the terms (exp: |x| times the result). The reference's and the kernel's errors add, so a comparison of
the two allows their counts together; :func:`ulps_of` turns a count into the ``ulps`` argument
(it and :func:`eps` live in :mod:`gpunn.cli.check_cases`, whose ``gpunn check`` uses the same bounds).
A fused multiply-add has one rounding where the reference has two, so a kernel's count is never
above the reference's. A libm-style function counts 2 per ulp of its documented
maximum error (CUDA: 1–2 ulps; NumPy's own accuracy tests allow its loops 1–4 ulps).

:func:`fma` emulates one correctly rounded float32 fused multiply-add on the CPU, so that these
bounds can be checked against what a contracting kernel computes without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import gpunn as gn
from gpunn.cli.check_cases import eps, ulps_of

__all__ = ["assert_within_term_bound", "eps", "fma", "ulps_of"]


def _same_module(*arrays: Any) -> tuple[Any, list[Any]]:
    """The arrays on one array module: where they already are when they agree, else NumPy."""
    modules = {gn.array_module(a) for a in arrays if hasattr(a, "dtype") and not isinstance(a, np.generic)}
    if len(modules) == 1:
        (xp,) = modules
        return xp, [xp.asarray(a) for a in arrays]
    return np, [np.asarray(gn.to_numpy(a) if hasattr(a, "dtype") else a) for a in arrays]


def assert_within_term_bound(
    got: Any, want: Any, terms: Any, dtype: Any, ulps: float, *, floor: float = 0.0, what: str = ""
) -> None:
    """|got − want| <= ulps · eps(dtype) · terms + floor, elementwise (NumPy or CuPy arrays, or
    scalars; checked on the GPU when all three live there).

    ``terms``: the magnitude of the terms each element was computed from, in float64 (for
    y + a·x: |y| + |a·x|). ``floor``: an absolute allowance, only where outputs can be
    subnormal (0 otherwise). Equal values always pass (so do equal infinities); a NaN on
    either side fails. The message says how many elements exceed the bound and shows the
    worst one (largest error in units of its bound)."""
    xp, (got, want, terms) = _same_module(got, want, terms)
    got, want, terms = (xp.asarray(a, dtype=xp.float64) for a in (got, want, terms))
    got, want, terms = xp.broadcast_arrays(got, want, terms)
    with np.errstate(invalid="ignore"):  # inf − inf (NumPy's warning; CuPy gives none)
        err = xp.abs(got - want)
    bound = ulps * eps(dtype) * terms + floor
    ok = (got == want) | (err <= bound)  # NaN fails: every comparison with it is False
    n_bad = int((~ok).sum())
    if not n_bad:
        return
    positive = bound > 0
    excess = err / xp.where(positive, bound, 1.0)  # in units of the bound: the worst is the largest
    excess = xp.where(ok, -1.0, xp.where(positive & ~xp.isnan(err), excess, xp.inf))
    flat = int(xp.argmax(excess))
    index = np.unravel_index(flat, got.shape) if got.ndim else ()
    g, w, e, t = (float(a[index]) for a in (got, want, err, terms))
    in_ulps = e / (eps(dtype) * t) if t else float("inf")
    raise AssertionError(
        f"{what + ': ' if what else ''}{n_bad} of {got.size} element(s) differ by more than {ulps:g} ulps "
        f"({np.dtype(dtype).name}) of their terms' magnitude (+ floor {floor:g}); worst at index "
        f"{tuple(int(i) for i in index)}: got {g!r}, want {w!r}, |error| {e:.3g} = {in_ulps:.3g} ulps of terms {t:.3g} "
        f"(bound {float(bound[index]):.3g})"
    )


def fma(a: Any, b: Any, c: Any) -> np.ndarray:
    """a·b + c rounded once to float32, elementwise: what a float32 fused multiply-add gives.

    a·b of two float32 values is exact in float64; the sum is rounded to odd in float64 (the
    error of the float64 sum is found exactly with Knuth's TwoSum, and an inexact result whose
    last bit is even moves one ulp towards the exact value), and rounding that to float32 is
    then the correctly rounded result (Boldo and Melquiond: rounding to odd with at least two
    more bits than the target avoids the error of double rounding). Plain float64 a·b + c would
    be rounded twice."""
    a, b, c = (np.asarray(x, dtype=np.float32).astype(np.float64) for x in (a, b, c))
    product = a * b  # exact: 24 + 24 bits of mantissa fit in 53
    s = product + c
    virtual = s - product
    error = (product - (s - virtual)) + (c - virtual)  # s + error == product + c exactly (TwoSum)
    even = (s.view(np.int64) & 1) == 0
    s = np.where((error != 0) & even, np.nextafter(s, np.where(error > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)
