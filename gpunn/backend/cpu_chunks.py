"""The CPU runner of the update twins: flat buffers in cache-sized pieces, big ones on threads.

An update streams its buffers (p, g and the rule's state, all n elements) through several
in-place NumPy passes. Run whole, each pass reads and writes n elements from memory; run in
pieces of at most ``CHUNK`` elements, every pass of a piece works on data in cache, with a
scratch of (workers, lanes·CHUNK) elements (:func:`scratch`) however big the model. From
``PARALLEL_MIN`` elements up the pieces are shared between up to 4 threads, each taking a
contiguous run of whole pieces and a scratch row of its own (NumPy releases the GIL inside its
loops). ``n_decay`` (the length of the weights prefix) is translated to each piece.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

# Elements per piece. Adam's five float32 pieces (2.5 MiB) live in L3, not in a 512 KiB L2:
# smaller pieces that fit L2 lose more to the ~1 µs cost of each NumPy call than they gain,
# and measured over W1's 25.2 M and T2's 1.9 M parameters on two threads, 128 Ki pieces beat
# 64 Ki by 15 % (W1: 52 against 62 ms) and tie 256 Ki; 1 Mi pieces are 20-30 % slower.
CHUNK = 131_072
PARALLEL_MIN = 1 << 20  # below this many elements a second thread costs more than it saves
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, and waiting on work
    handed to them would hang; the child makes its own pool when it needs one."""
    global _pool  # noqa: PLW0603
    _pool = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool)


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
    share = -(-n // workers // piece) * piece  # contiguous shares, aligned to whole pieces
    _on_threads(lambda k: run(k * share, min((k + 1) * share, n), rows[k]), workers)


def run_split(task: Callable[[int, int], None], n: int) -> None:
    """``task(lo, hi)`` over [0, n): in one call below ``PARALLEL_MIN`` elements, else in
    contiguous shares (multiples of 16 elements, whole cache lines) on the update threads.
    For a compiled loop that releases the GIL (:mod:`gpunn.cpu_fused`)."""
    workers = cpu_workers() if n >= PARALLEL_MIN else 1
    if workers == 1:
        task(0, n)
        return
    share = -(-n // workers // 16) * 16
    _on_threads(lambda k: task(min(k * share, n), min((k + 1) * share, n)), workers)


def _on_threads(work: Callable[[int], None], workers: int) -> None:
    """work(0) on this thread and work(1) … work(workers − 1) on the pool's, waiting for all."""
    global _pool  # noqa: PLW0603 — one pool for the process, made on first use
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=cpu_workers(), thread_name_prefix="gpunn-update")
    futures = [_pool.submit(work, k) for k in range(1, workers)]
    try:
        work(0)
    finally:
        wait(futures)  # never return while a thread still writes the buffers
    for future in futures:
        future.result()
