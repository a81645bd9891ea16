"""Adam in one pass on the CPU: the twin's arithmetic compiled by Numba, when Numba is installed.

The NumPy twin of Adam (:func:`gpunn.update_twins.adam_passes`) makes 13 passes over the flat
buffers. For a small model each pass is a NumPy call of a few µs; for a big one each streams
megabytes through the caches. This module runs the same operations element by element in one
compiled loop, reading p, g, m and v once and writing p, m and v once:

    ĝ = g + fl(λ·p)                  (the weights prefix i < k, with an L2 penalty λ)
    m ← fl(fl(β1·m) + fl((1−β1)·ĝ))
    v ← fl(fl(β2·v) + fl(fl(ĝ·ĝ)·(1−β2)))
    p ← p·decay_factor              (the weights prefix, AdamW's decoupled decay)
    p ← p − fl(fl(m / fl(fl(√v·inv_sqrt_bc2) + ε))·step_size)

Every operation is the twin's, in the twin's order, on operands rounded to the buffer's dtype
as NumPy rounds a Python float, and Numba neither contracts a·b + c into a fused multiply-add
nor reorders floating-point arithmetic unless asked to (``fastmath`` is off), so the bits are
the twin's (``tests/test_cpu_fused.py`` checks them). ``error_model="numpy"`` lets a division
by zero give inf as NumPy's does, and lets LLVM vectorize the loop. Measured on the 2-core
development machine: 7 510 parameters (the digits network) 5 µs against the twin's 32–50 µs;
79 510 (T1) 38 µs against 170–200 µs; 25.2 M (W1, two threads) ~27 ms against 60–80 ms.

Numba is optional (``pip install "gpunn[fast]"``): without it, or with the environment
variable ``GPUNN_NUMBA=0``, :func:`available` is False and the twin runs. The loop is compiled
on first use (about a second, then cached on disk by Numba) for each dtype. It releases the
GIL, so a big buffer is split between the CPU runner's threads (:func:`gpunn.cpu_runner.run_split`).
Clipping and L1 are not fused here: those steps run the twin.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from typing import Any

import numpy as np

from .cpu_runner import run_split

# The order of the constants in the array the loop reads them from (one array of the buffer's
# dtype: storing a Python float in it rounds it as NumPy rounds a Python float operand).
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

ENV_VAR = "GPUNN_NUMBA"  # "0" turns the compiled loops off

_kernels: dict[str, Any] = {}  # "adam": the compiled loop, once Numba is imported
_state: dict[str, Any] = {"checked": False, "available": False, "reason": None}


def available() -> bool:
    """True when the one-pass updates can run: Numba is installed, ``GPUNN_NUMBA`` is not "0",
    and the loop compiled (or loaded from Numba's cache) and ran. The first call in a process
    does that: 0.5–1 s (Numba's import and start-up), about 2 s the first time ever (compiling)."""
    if not _state["checked"]:
        _state["checked"] = True
        if os.environ.get(ENV_VAR, "1").strip() == "0":
            _state["reason"] = f"turned off by {ENV_VAR}=0"
        elif importlib.util.find_spec("numba") is None:
            _state["reason"] = "numba is not installed (pip install 'gpunn[fast]')"
        else:
            try:
                _load()
                _state["available"] = True
            except Exception as exc:  # a broken Numba or LLVM: the twin still works
                _state["reason"] = f"numba failed to compile the loop ({type(exc).__name__}: {exc})"
                warnings.warn(f"gpunn: {_state['reason']}; the CPU runs NumPy's passes", RuntimeWarning, stacklevel=3)
    return bool(_state["available"])


def why_unavailable() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return None if available() else _state["reason"]


def describe() -> str:
    """One line for ``gpunn info``, without loading Numba: which CPU Adam update runs."""
    if _state["checked"]:
        on, reason = _state["available"], _state["reason"]
    elif os.environ.get(ENV_VAR, "1").strip() == "0":
        on, reason = False, f"turned off by {ENV_VAR}=0"
    else:
        on = importlib.util.find_spec("numba") is not None
        reason = None if on else "numba is not installed (pip install 'gpunn[fast]')"
    if on:
        return f"one compiled pass (numba {importlib.metadata.version('numba')})"
    return f"NumPy passes ({reason})"


def _load() -> None:
    """Import the loops and run the float32 one once, so that a Numba that cannot compile or
    load it fails here, not in a training step."""
    from . import _fused_loops  # noqa: PLC0415 — imports Numba (~0.3 s): only when an update needs it

    loop = _fused_loops.adam_range
    a = np.zeros(3, np.float32)
    loop(a, a.copy(), a.copy(), a.copy(), np.ones(len(ADAM_CONSTANTS), np.float32), 1, 0, 3, True, True)
    _kernels["adam"] = loop
    _kernels["bias_relu"] = _fused_loops.bias_relu
    _kernels["relu_backward"] = _fused_loops.relu_backward
    _kernels["relu_backward_inplace"] = _fused_loops.relu_backward_inplace


def loaded() -> bool:
    """True once :func:`available` has loaded the loops in this process; never loads them.

    The layers' loops below run only then: a model that only predicts never pays Numba's
    start-up, and training, whose first Adam step loads the loops, uses them from its second
    step on (their bits are NumPy's, so the switch changes nothing but the time)."""
    return bool(_state["available"])


def fits(*buffers: Any) -> bool:
    """Whether the one-pass loop can take these buffers: NumPy, 1-D, contiguous, writeable,
    one float dtype (float32 or float64), and no two the same memory. (Anything else runs the
    twin, which also raises NumPy's own errors, a read-only buffer's say.)"""
    first = buffers[0]
    if type(first) is not np.ndarray or first.dtype not in (np.float32, np.float64):
        return False
    n, dtype = first.shape, first.dtype
    for b in buffers:
        if (
            type(b) is not np.ndarray
            or b.ndim != 1
            or b.shape != n
            or b.dtype != dtype
            or not b.flags.c_contiguous
            or not b.flags.writeable
        ):
            return False
    return len({b.ctypes.data for b in buffers}) == len(buffers)


def adam_loop() -> Any:
    """The compiled loop itself, ``loop(p, g, m, v, constants, k, lo, hi, l2_on, decay_on)``
    over elements [lo, hi) (for a caller that has checked everything :func:`adam` checks)."""
    return _kernels["adam"]


def adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, constants: np.ndarray, n_decay: int) -> None:
    """One Adam step over the flat buffers in one pass: the arithmetic of the twin
    ``adam_passes`` with an L2 penalty folded into the weights prefix as ``effective_gradient``
    folds it. ``constants``: (9,) array of p's dtype in :data:`ADAM_CONSTANTS`' order (l2 0:
    no penalty; decay_factor 1: no decay). p, g, m, v: (n,) contiguous, as :func:`fits` says."""
    loop = _kernels["adam"]
    k = min(max(int(n_decay), 0), p.size)
    l2_on = bool(constants[0] != 0.0) and k > 0
    decay_on = bool(constants[8] != 1.0) and k > 0
    run_split(lambda lo, hi: loop(p, g, m, v, constants, k, lo, hi, l2_on, decay_on), p.size)


# ----------------------------------------------------------------------------- ReLU layers


def _rows(*arrays: Any) -> bool:
    """(N, C) NumPy arrays of one float dtype and shape, C-contiguous and writeable."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.ndim != 2 or first.dtype not in (np.float32, np.float64):
        return False
    for a in arrays:
        if (
            type(a) is not np.ndarray
            or a.shape != first.shape
            or a.dtype != first.dtype
            or not a.flags.c_contiguous
            or not a.flags.writeable
        ):
            return False
    return True


def bias_relu(y: Any, b: Any) -> bool:
    """y ← max(y + b, 0) in place (y: (N, C), b: (C,)) in one pass: NumPy's ``y += b`` then
    ``maximum(y, 0)``, bit for bit (NaN kept, max(−0, 0) = +0). Returns False, doing nothing,
    when the loops are not loaded or the arrays are not ones it takes."""
    if not (
        _state["available"]
        and _rows(y)
        and type(b) is np.ndarray
        and b.dtype == y.dtype
        and b.shape == y.shape[1:]
        and b.flags.c_contiguous
    ):
        return False
    _kernels["bias_relu"](y, b)
    return True


def relu_backward(dy: Any, a: Any, out: Any = None) -> Any:
    """dz = dy · [a > 0] in one pass (NumPy's ``dy * (a > 0)``, bit for bit: inf·0 is NaN);
    ``out`` may be dy. Returns dz, or None (nothing done) when the loops are not loaded or the
    arrays are not ones it takes."""
    if not _state["available"] or not _rows(dy, a):
        return None
    if out is dy:
        _kernels["relu_backward_inplace"](dy, a)
        return dy
    if out is None:
        out = np.empty_like(dy)
    elif not _rows(dy, out):
        return None
    _kernels["relu_backward"](dy, a, out)
    return out
