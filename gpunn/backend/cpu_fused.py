"""The CPU's compiled loops: Adam, bias+ReLU and ReLU's backward in one pass each, with Numba.

The NumPy twin of Adam (:func:`gpunn.update_twins.adam_passes`) makes 13 passes over the flat
buffers. For a small model each pass is a NumPy call of a few µs; for a big one each streams
megabytes through the caches. This module runs the same operations element by element in one
compiled loop (:mod:`gpunn._fused_loops`), reading p, g, m and v once and writing p, m and v
once:

    ĝ = g + fl(λ·p)                  (the weights prefix i < k, with an L2 penalty λ)
    m ← fl(fl(β1·m) + fl((1−β1)·ĝ))
    v ← fl(fl(β2·v) + fl(fl(ĝ·ĝ)·(1−β2)))
    p ← p·decay_factor              (the weights prefix, AdamW's decoupled decay)
    p ← p − fl(fl(m / fl(fl(√v·inv_sqrt_bc2) + ε))·step_size)

and likewise a ReLU layer's y ← max(y + b, 0) and dz = dy·[a > 0], which NumPy does in two
passes each. Every operation is the twin's, in the twin's order, on operands rounded to the
buffer's dtype as NumPy rounds a Python float, and Numba neither contracts a·b + c into a
fused multiply-add nor reassociates floating-point arithmetic unless asked to (``fastmath`` is
off), so the values are the twin's bit for bit (``tests/test_cpu_fused.py``; the one freedom
LLVM keeps is which NaN an addition of two NaNs returns). ``error_model="numpy"`` lets a
division by zero give inf as NumPy's does, and lets LLVM vectorize the loops. The loops do not
emit NumPy's floating-point RuntimeWarnings; where ``np.seterr``/``np.errstate`` asks NumPy to
raise (or call a handler), the twin runs instead, so the error comes as before. Measured on the
2-core development machine: Adam over 7 510 parameters (the digits network) 5 µs against the
twin's 32–50 µs; 79 510 (T1) 38 µs against 170–200 µs; 25.2 M (W1, two threads) ≈ 27–36 ms
against 60–80 ms.

Numba is optional (``pip install "gpunn[fast]"``): without it, or with the environment
variable ``GPUNN_NUMBA=0``, :func:`available` is False and the twins run. Loading the loops
costs 0.5–1 s (compiling them on the first use ever, ≈ 2 s, then cached on disk by Numba), so
a process loads them once it has been taking Adam steps for :data:`WARM_UP_SECONDS`, pauses
between steps counted as at most :data:`GAP_SECONDS` (a short job never pays;
``GPUNN_NUMBA=1`` loads them at the first step, and benchmarks load them up front with
:func:`available`). The ReLU loops run only once that happened (:func:`loaded`),
so inference never pays for it either. A loop that fails to compile later (another dtype) turns the loops off
with a warning, and the twin does that step. The loops release the GIL, so a big buffer is
split between the CPU runner's threads (:func:`gpunn.cpu_runner.run_split`). Clipping, L1 and
array-valued hyperparameters run the twin.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .cpu_chunks import run_split

try:  # where NumPy 2 keeps the floating-point error settings; only its identity is read
    from numpy._core._ufunc_config import _extobj_contextvar as _numpy_errors
except ImportError:  # another NumPy: np.geterr() on every call instead
    _numpy_errors = None

# The order of the constants in the array the Adam loop reads them from (one array of the
# buffer's dtype: storing a Python float in it rounds it as NumPy rounds a Python float operand).
ADAM_CONSTANTS = (
    "l2",
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "inv_sqrt_bc2",
    "eps",
    "step_size",
    "decay_factor",
)

ENV_VAR = "GPUNN_NUMBA"  # "0": the loops are off; "1": loaded at the first Adam step
# Unless GPUNN_NUMBA=1, the loops are loaded once the process has been taking Adam steps for
# this long (wall time since its first one): loading costs 0.5–1 s, more than a short job's
# whole update time, and a job that has run this long is likely to run long enough to earn it
# back (the loops save 70–90 % of Adam's time). A digits fit (≈ 0.3 s) or `gpunn train` on
# the digits then never pays for Numba; a grid search or a long fit does after a second.
WARM_UP_SECONDS = 1.0
# What one gap between two Adam steps adds to that time at most: the time between steps is
# training, but a pause (a notebook between fits, a server between requests) is not, and a
# short fit after a long pause must not load the loops on its first step.
GAP_SECONDS = 0.25
NOT_INSTALLED = "numba is not installed (pip install 'gpunn[fast]')"

_kernels: dict[str, Any] = {}  # the compiled loops by name, once Numba is imported
_state: dict[str, Any] = {"checked": False, "available": False, "reason": None}
_errors_seen: tuple[Any, bool] = (object(), False)  # (NumPy's error settings object, whether they raise)
_clock: list[float] = []  # [perf_counter() at the last ready() call, training seconds counted so far]
_now = time.perf_counter  # the clock (a test replaces it)


def _off_reason() -> str | None:
    """Why the loops cannot run here before trying to load them (GPUNN_NUMBA=0, Numba
    missing), or None."""
    if _env() == "0":
        return f"turned off by {ENV_VAR}=0"
    if importlib.util.find_spec("numba") is None:
        return NOT_INSTALLED
    return None


def _env() -> str:
    return os.environ.get(ENV_VAR, "").strip()


def installed() -> bool:
    """Whether the loops may run in this process (Numba installed, GPUNN_NUMBA not "0"), without
    loading them; False too once loading failed."""
    if _state["checked"]:
        return bool(_state["available"])
    return _off_reason() is None


def ready() -> bool:
    """Whether an Adam step should run the loop now. True once loaded. Before that, every call
    counts the time since the previous call, at most :data:`GAP_SECONDS` of it, as training;
    once that sum reaches :data:`WARM_UP_SECONDS` (at the first call with ``GPUNN_NUMBA=1``)
    it loads the loops (see :func:`available`) and says whether that worked. False where the
    loops cannot run. ≈ 0.1 µs once decided, ≈ 0.5 µs while counting."""
    if _state["available"]:
        return True
    if _state["checked"]:
        return False
    if _env() != "1":
        now = _now()
        counted = min(now - _clock[0], GAP_SECONDS) + _clock[1] if _clock else 0.0
        _clock[:] = [now, counted]  # (two threads at once may count a gap twice: harmless)
        if counted < WARM_UP_SECONDS:
            return False
    return available()


def available() -> bool:
    """True when the loops can run: Numba is installed, ``GPUNN_NUMBA`` is not "0", and the
    float32 Adam loop compiled (or loaded from Numba's cache) and ran. The first call in a
    process does that: 0.5–1 s (Numba's import and start-up), ≈ 2 s the first time ever."""
    if not _state["checked"]:
        _state["reason"] = _off_reason()
        if _state["reason"] is None:
            try:
                _load()
            except Exception as exc:  # a broken Numba or LLVM, an unusable cache: the twin still works
                _state["checked"] = True
                _turn_off(f"numba failed to load or compile the CPU loops ({type(exc).__name__}: {exc})")
                return False
            _state["available"] = True
        # only now: an interrupt while loading (KeyboardInterrupt) leaves it to be tried again
        _state["checked"] = True
    return bool(_state["available"])


def loaded() -> bool:
    """True once :func:`available` has loaded the loops in this process; never loads them.

    The ReLU loops run only then: a model that only predicts never pays Numba's start-up, and
    training uses them from the step after :func:`ready` loaded the loops (their bits are
    NumPy's, so the switch changes nothing but the time)."""
    return bool(_state["available"])


def why_unavailable() -> str | None:
    """Why :func:`available` is False (None when it is True); loads the loops to find out."""
    return None if available() else _state["reason"]


def describe() -> str:
    """One line for ``gpunn info``, without loading Numba: which CPU Adam update runs."""
    if _state["checked"]:
        on, reason = _state["available"], _state["reason"]
    else:
        reason = _off_reason()
        on = reason is None
    if not on:
        return f"NumPy passes ({reason})"
    try:
        version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:  # a Numba without package metadata
        version = "version unknown"
    if _state["checked"]:
        loading = ""
    elif _env() == "1":
        loading = "; loaded at the first Adam step"
    else:
        loading = f"; loaded after {WARM_UP_SECONDS:g} s of training"
    return f"one compiled pass (numba {version}{loading})"


def _load() -> None:
    """Import the loops and run the float32 Adam loop once, so that a Numba that cannot compile
    or load it fails here, not in a training step."""
    from . import _fused_loops  # noqa: PLC0415 — imports Numba (~0.3 s): only when an update needs it

    p, g, m, v = (np.zeros(3, np.float32) for _ in range(4))
    _fused_loops.adam_range(p, g, m, v, np.ones(len(ADAM_CONSTANTS), np.float32), 1, 0, 3, True, True)
    _kernels["adam"] = _fused_loops.adam_range
    _kernels["bias_relu"] = _fused_loops.bias_relu
    _kernels["relu_backward"] = _fused_loops.relu_backward
    _kernels["relu_backward_inplace"] = _fused_loops.relu_backward_inplace


def _turn_off(reason: str) -> None:
    _state["available"], _state["reason"] = False, reason
    warnings.warn(f"gpunn: {reason}; the CPU runs NumPy's passes", RuntimeWarning, stacklevel=2)


def _guard(name: str, run: Callable[[], Any]) -> bool:
    """``run()``; False (nothing done, the loops turned off) when Numba fails to compile loop
    ``name`` for these argument types. Numba compiles before it runs, so a failed compile wrote
    nothing; any other error is the caller's."""
    try:
        run()
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("numba", "llvmlite"):
            raise
        _turn_off(f"numba failed to compile {name} ({type(exc).__name__}: {exc})")
        return False
    return True


def numpy_raises() -> bool:
    """Whether NumPy's floating-point error settings (np.seterr / np.errstate) ask to raise or
    call a handler for some error, which the loops cannot do: the twin runs then. ≈ 30 ns while
    the settings stay the same object."""
    global _errors_seen  # noqa: PLW0603 — one cached answer per settings object
    if _numpy_errors is None:
        return any(v in ("raise", "call") for v in np.geterr().values())
    settings = _numpy_errors.get()
    seen, raises = _errors_seen
    if settings is not seen:
        raises = any(v in ("raise", "call") for v in np.geterr().values())
        _errors_seen = (settings, raises)  # one tuple: another thread reads a consistent pair
    return raises


def _disjoint(arrays: Sequence[np.ndarray]) -> bool:
    """No two of the arrays share memory (by their address ranges: a loop reading one while
    writing another that overlaps it would see its own writes, which NumPy guards against)."""
    return not any(
        np.may_share_memory(arrays[i], arrays[j]) for i in range(len(arrays)) for j in range(i + 1, len(arrays))
    )


# ----------------------------------------------------------------------------- Adam


def _alike(arrays: Sequence[Any], ndim: int) -> bool:
    """NumPy arrays of ``ndim`` dimensions and one float dtype (float32 or float64) and shape,
    C-contiguous and writeable: what the loops take."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.ndim != ndim or first.dtype not in (np.float32, np.float64):
        return False
    return all(
        type(a) is np.ndarray
        and a.shape == first.shape
        and a.dtype == first.dtype
        and a.flags.c_contiguous
        and a.flags.writeable
        for a in arrays
    )


def fits(*buffers: Any) -> bool:
    """Whether the Adam loop can take these flat buffers: 1-D, alike (:func:`_alike`), and no
    two overlapping. (Anything else runs the twin, which also raises NumPy's own errors, a
    read-only buffer's say.)"""
    return _alike(buffers, 1) and _disjoint(buffers)


def adam_small(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    constants: np.ndarray,
    k: int,
    l2_on: bool,
    decay_on: bool,
) -> bool:
    """One Adam step of a buffer that :func:`fits` said the loop takes and that is one piece
    (no thread split), with ``constants`` already written; False (nothing done) when NumPy is
    set to raise on floating-point errors or the loop failed to compile: run the twin."""
    if numpy_raises():
        return False
    loop = _kernels["adam"]
    return _guard("adam", lambda: loop(p, g, m, v, constants, k, 0, p.shape[0], l2_on, decay_on))


def adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, n_decay: int, values: Sequence[float]) -> bool:
    """One Adam step over the flat buffers in one pass, big buffers split between threads: the
    arithmetic of the twin ``adam_passes``, with an L2 penalty folded into the weights prefix
    as ``effective_gradient`` folds it. ``values``: the Python floats in :data:`ADAM_CONSTANTS`'
    order (l2 0: no penalty; decay_factor 1: no decay), which decide, as they do for the twin,
    whether the penalty and the decay apply. p, g, m, v: as :func:`fits` says. Returns False
    (nothing done) where the twin must run: see :func:`adam_small`."""
    if numpy_raises():
        return False
    constants = np.array(values, dtype=p.dtype)
    k = min(max(int(n_decay), 0), p.size)
    l2_on, decay_on = values[0] != 0.0 and k > 0, values[8] != 1.0 and k > 0
    loop = _kernels["adam"]

    def share(lo: int, hi: int) -> None:
        loop(p, g, m, v, constants, k, lo, hi, l2_on, decay_on)

    return _guard("adam", lambda: run_split(share, p.size))


# ----------------------------------------------------------------------------- ReLU layers


def bias_relu(y: Any, b: Any) -> bool:
    """y ← max(y + b, 0) in place (y: (N, C), b: (C,)) in one pass: NumPy's ``y += b`` then
    ``maximum(y, 0)``, bit for bit (NaN kept, max(−0, 0) = +0). Returns False, doing nothing,
    when the loops are not loaded, the arrays are not ones it takes (b overlapping y among
    them), or NumPy is set to raise on floating-point errors."""
    if not (
        _state["available"]
        and _alike((y,), 2)
        and type(b) is np.ndarray
        and b.dtype == y.dtype
        and b.shape == y.shape[1:]
        and b.flags.c_contiguous
        and not np.may_share_memory(y, b)
        and not numpy_raises()
    ):
        return False
    loop = _kernels["bias_relu"]
    return _guard("bias_relu", lambda: loop(y, b))


def relu_backward(dy: Any, a: Any, out: Any = None) -> Any:
    """dz = dy · [a > 0] in one pass (NumPy's ``dy * (a > 0)``, bit for bit: inf·0 is NaN);
    ``out`` may be dy. Returns dz, or None (nothing done) when the loops are not loaded, the
    arrays are not ones it takes (the array written overlapping another), or NumPy is set to
    raise on floating-point errors."""
    if not _state["available"] or not _alike((dy, a), 2) or numpy_raises():
        return None
    if out is dy:
        if np.may_share_memory(dy, a):
            return None
        inplace = _kernels["relu_backward_inplace"]
        return dy if _guard("relu_backward_inplace", lambda: inplace(dy, a)) else None
    if out is None:
        out = np.empty_like(dy)
    elif not _alike((dy, out), 2) or not _disjoint((out, dy, a)):
        return None
    loop = _kernels["relu_backward"]
    return out if _guard("relu_backward", lambda: loop(dy, a, out)) else None
