"""NumbaOps: the CPU's compiled overrides, when the ``fast`` extra (Numba) is installed.

Each override is one compiled loop (:mod:`.numba_loops`) doing the reference's operations in
the reference's order and rounding, so it gives :class:`~gpunn.backend.ops.NumpyOps`'s bits
exactly (the one freedom LLVM keeps: which NaN an addition of two NaNs returns). Where a loop
cannot take its arguments (other layouts or dtypes, overlapping buffers, clipping or L1), or
``np.seterr`` / ``np.errstate`` asks NumPy to raise or call a handler on a floating-point error,
the reference runs. Adam's loop reads p, g, m and v once where the reference makes 13 passes
(benchmarks/README.md), for models of :data:`MIN_SIZE` parameters or more, where that wins.
Numba is imported and the loop compiled (≈ 2 s the first time, then 0.5–1 s from Numba's
cache) at the first call that runs it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from types import ModuleType
from typing import Any

import numpy as np

from .ops import NumpyOps

PARALLEL_MIN = 1 << 20  # elements from which Adam's loop is split between threads
# Elements from which Adam's loop runs: measured on 2 cores, the step of 784-100-10 (79,510
# parameters, batch 128) gains 22 % and 784-1024-1024-10 42 %, while 64-100-10 (7,510) gains
# nothing and would pay Numba's import (0.5–1 s) in every process. Below it, Numba is not loaded.
MIN_SIZE = 1 << 15


class NumbaOps(NumpyOps):
    """NumpyOps with Numba loops for the passes that dominate a CPU step."""

    name = "numba"
    min_size = MIN_SIZE  # gpunn check and the tests set 0 on an instance of their own, to reach every size

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, *,
        lr: float, beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0, n_decay: int = 0,
        l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """Adam / AdamW, with an L2 penalty or without, in one pass for buffers of MIN_SIZE
        elements or more (split between threads from PARALLEL_MIN); smaller buffers, clipping, L1
        and hyperparameters that are not Python numbers: the reference."""
        python_numbers = all(type(x) is float or type(x) is int for x in (lr, beta1, beta2, eps, weight_decay, l2))
        takes = p.size >= self.min_size and clip is None and l1 == 0.0 and python_numbers
        takes = takes and _alike((p, g, m, v), 1) and _disjoint((p, g, m, v))
        loops = _loops() if takes and not _numpy_raises() else None
        if loops is None:
            super().adam_update(
                p, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, step=step,
                weight_decay=weight_decay, n_decay=n_decay, l2=l2, l1=l1, clip=clip,
            )  # fmt: skip
            return
        lr, step = self._lr_and_step(lr, step)
        step_size, inv_sqrt_bc2, decay_factor = self.adam_constants(lr, beta1, beta2, step, weight_decay)
        # stored in p's dtype: each Python float rounded as NumPy rounds it as an operand
        c = np.array([l2, beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_sqrt_bc2, eps, step_size, decay_factor], p.dtype)
        k = min(max(n_decay, 0), p.size)
        l2_on, decay_on = l2 != 0.0 and k > 0, decay_factor != 1.0 and k > 0
        loop = loops.adam_range
        _split(lambda lo, hi: loop(p, g, m, v, c, k, lo, hi, l2_on, decay_on), p.size)


@functools.cache
def _loops() -> ModuleType | None:
    """The compiled loops, imported (with Numba, ≈ 0.3 s) at the first call that needs them; None,
    with one warning, where Numba is installed but does not load (built for another NumPy, say):
    the reference runs instead."""
    try:
        from . import numba_loops  # noqa: PLC0415
    except Exception as exc:  # any failure of an optional extra means: run without it
        warnings.warn(
            f"Numba is installed but does not load ({type(exc).__name__}: {exc}); the CPU runs the reference "
            "Ops (pip install -U numba, or uninstall it)",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return numba_loops


def describe() -> str:
    """One line for ``gpunn info`` (imports no Numba): NumbaOps' loops and Numba's version, or
    why there are none (which Ops a device runs: :mod:`.selection`)."""
    if importlib.util.find_spec("numba") is None:
        return "none: numba is not installed (pip install 'gpunn[fast]')"
    try:
        version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        version = "version unknown"
    return f"Adam for {MIN_SIZE:,}+ parameters (numba {version}; compiled at first use)"


def _numpy_raises() -> bool:
    """Whether np.seterr / np.errstate asks NumPy to raise or call a handler on some
    floating-point error (the loops cannot: the reference runs then)."""
    return any(v in ("raise", "call") for v in np.geterr().values())


def _alike(arrays: tuple[Any, ...], ndim: int) -> bool:
    """NumPy arrays of ``ndim`` dimensions, one shape and one dtype (float32 or float64),
    C-contiguous and writeable: what the loops take."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.ndim != ndim or first.dtype not in (np.float32, np.float64):
        return False
    return all(
        type(x) is np.ndarray
        and x.shape == first.shape
        and x.dtype == first.dtype
        and x.flags.c_contiguous
        and x.flags.writeable
        for x in arrays
    )


def _disjoint(arrays: tuple[Any, ...]) -> bool:
    """No two of the arrays share memory (a loop writing one while reading another that
    overlaps it would see its own writes, which NumPy guards against)."""
    return not any(np.may_share_memory(x, y) for i, x in enumerate(arrays) for y in arrays[i + 1 :])


# ----------------------------------------------------------------------------- threads

_pool: ThreadPoolExecutor | None = None


@functools.cache
def _workers() -> int:
    """Threads for a big buffer: the cores this process may use (when it first asks), at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _split(task: Callable[[int, int], None], n: int) -> None:
    """task(lo, hi) over [0, n): in one call below PARALLEL_MIN elements, else in contiguous
    shares (multiples of 16 elements, whole cache lines) on threads (the loops release the GIL)."""
    global _pool  # noqa: PLW0603 — one pool for the process, made on first use
    if n < PARALLEL_MIN or _workers() == 1:
        task(0, n)
        return
    workers = _workers()
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpunn-numba")
    share = -(-n // workers // 16) * 16
    futures = [_pool.submit(task, min(k * share, n), min((k + 1) * share, n)) for k in range(1, workers)]
    try:
        task(0, min(share, n))
    finally:
        wait(futures)  # never return while a thread still writes the buffers
    for future in futures:
        future.result()


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: waiting on work handed to them
    would hang, so the child makes a pool of its own when it needs one."""
    global _pool  # noqa: PLW0603
    _pool = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool)
