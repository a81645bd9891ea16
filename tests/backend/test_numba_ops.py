"""NumbaOps (gpunn/backend/numba_ops.py): when its compiled Adam loop runs, and that it then gives
the reference's bits where tests/backend/test_ops_conformance.py does not look: buffers split between
threads, optimizer steps end to end, the cases that must run the reference (small buffers,
clipping, L1, overlapping or odd layouts, NumPy set to raise), a forked child, and that the
loop loads at the first call that needs it, by the buffer's size, never by the clock. Needs
Numba (the test extra).
"""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba")

import gpunn as gn
from gpunn.backend import numba_loops, numba_ops, selection
from gpunn.backend.numba_ops import NumbaOps
from gpunn.backend.ops import NumpyOps

REFERENCE, NUMBA = NumpyOps(np), NumbaOps(np)
NUMBA.min_size = 0  # the loop at every size here; its threshold has tests of its own


@pytest.fixture
def loop_calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Calls into each compiled loop during the test, by name."""
    calls: collections.Counter = collections.Counter()
    for name in ("adam_range",):
        loop = getattr(numba_loops, name)
        monkeypatch.setattr(numba_loops, name, lambda *a, loop=loop, name=name: (calls.update([name]), loop(*a))[1])
    return calls


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _adam_buffers(n: int, dtype: Any, seed: int) -> list[np.ndarray]:
    """p, g, m, v with the ranges a running Adam has (v ≥ 0)."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal(n).astype(dtype),
        (rng.standard_normal(n) * 1e-2).astype(dtype),
        (rng.standard_normal(n) * 1e-3).astype(dtype),
        np.abs(rng.standard_normal(n) * 1e-5).astype(dtype),
    ]


ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 5}


def _adam_both(n: int, dtype: Any = np.float32, **kwargs: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One Adam step of the same buffers by NumbaOps and by the reference."""
    fast = _adam_buffers(n, dtype, seed=1)
    plain = [b.copy() for b in fast]
    NUMBA.adam_update(*fast, **{**ADAM, **kwargs})
    REFERENCE.adam_update(*plain, **{**ADAM, **kwargs})
    return fast, plain


def test_a_buffer_split_between_threads_gives_the_references_bits(loop_calls):
    n = numba_ops.PARALLEL_MIN + 4_099  # a share per core; the weights end in the last one
    fast, plain = _adam_both(n, n_decay=n - 17, l2=1e-3, weight_decay=0.01)
    assert loop_calls["adam_range"] == numba_ops._workers()  # one share per thread, and no reference
    for name, a, b in zip("pgmv", fast, plain, strict=True):
        assert np.array_equal(_bits(a), _bits(b)), name


def test_the_thread_split_covers_every_element_once():
    for n in (0, 1, 15, numba_ops.PARALLEL_MIN, numba_ops.PARALLEL_MIN + 17):
        seen, shares = np.zeros(n, np.int64), []

        def mark(lo: int, hi: int, seen: np.ndarray = seen, shares: list = shares) -> None:
            seen[lo:hi] += 1
            shares.append((lo, hi))

        numba_ops._split(mark, n)
        assert (seen == 1).all(), n
        assert all(lo % 16 == 0 for lo, _ in shares)
        if n >= numba_ops.PARALLEL_MIN:
            assert len(shares) == numba_ops._workers()


def test_an_error_in_a_share_reaches_the_caller_after_every_share_ended():
    if numba_ops._workers() == 1:
        pytest.skip("one core: no second share")
    done = []

    def fail_first(lo: int, hi: int) -> None:
        if lo == 0:
            raise RuntimeError("share 0 failed")
        done.append((lo, hi))

    with pytest.raises(RuntimeError, match="share 0 failed"):
        numba_ops._split(fail_first, numba_ops.PARALLEL_MIN)
    assert len(done) == numba_ops._workers() - 1


def test_clipping_l1_and_an_array_lr_run_the_reference(loop_calls):
    clip = (1.0, np.array([4.0]))
    for kwargs in ({"clip": clip}, {"l1": 1e-3}, {"lr": np.array([1e-3], np.float32)}):
        fast, plain = _adam_both(6, **kwargs)
        for a, b in zip(fast, plain, strict=True):
            assert np.array_equal(_bits(a), _bits(b)), kwargs
    assert loop_calls["adam_range"] == 0
    _adam_both(6, l2=1e-3, n_decay=4)
    assert loop_calls["adam_range"] == 1


def test_overlapping_or_read_only_buffers_go_to_the_reference(loop_calls):
    """A loop reading one buffer while writing another that overlaps it would see its own
    writes (NumPy guards against that); a read-only buffer must raise NumPy's error."""
    base = np.zeros(20, np.float32)
    p, g = np.ones(8, np.float32), np.ones(8, np.float32)
    NUMBA.adam_update(p, g, base[0:8], base[1:9], **ADAM)  # m and v overlap, one element apart
    assert sum(loop_calls.values()) == 0
    frozen = np.ones(8, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        NUMBA.adam_update(frozen, g, np.zeros(8, np.float32), np.zeros(8, np.float32), **ADAM)


def test_an_l2_too_small_for_the_dtype_still_adds_its_rounded_zero(loop_calls):
    """The reference decides on the Python float: l2 = 1e-50 rounds to 0 in float32 but is
    still added as fl(0·W), which turns an infinite weight's gradient into NaN. The loop too."""
    p = np.array([np.inf, 1.0, 2.0], np.float32)
    runs = []
    for ops in (NUMBA, REFERENCE):
        buffers = [p.copy(), np.full(3, 0.25, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)]
        with np.errstate(all="ignore"):
            ops.adam_update(*buffers, **ADAM, n_decay=2, l2=1e-50)
        runs.append(buffers)
    assert loop_calls["adam_range"] == 1
    assert np.isnan(runs[1][0][0])  # the reference's NaN
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(_bits(a), _bits(b))


def test_numpy_set_to_raise_raises_as_the_reference_does(loop_calls):
    """np.errstate(all="raise") makes the reference raise FloatingPointError; the loops cannot,
    so they step aside and the same error comes."""
    p, g, m, v = (np.full(4, 1e30 if i == 1 else 0.0, np.float32) for i in range(4))  # g² overflows
    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        NUMBA.adam_update(p, g, m, v, **ADAM)
    assert sum(loop_calls.values()) == 0
    _adam_both(4)  # settings restored
    assert loop_calls["adam_range"] == 1


def test_networks_train_to_the_same_bits_with_either_ops(monkeypatch, loop_calls):
    """A network trained with AdamW + L2, layer by layer: NumbaOps and the reference give the
    same weights, and the loop did run (the network is above the loop's threshold)."""
    x, y = gn.data.make_spiral(50, 3, seed=2)
    weights = []
    for choice in ("auto", "reference"):
        monkeypatch.setenv(selection.ENV_VAR, choice)
        model = gn.mlp([2, 256, 128, 3], seed=0)  # 33,923 parameters
        loss, opt = gn.SoftmaxWithLoss(), gn.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(3):
            loss.forward(model.forward(x.astype(np.float32)), y)
            model.backward(loss.backward())
            opt.step(gn.L2(1e-3))
        weights.append(np.concatenate([p.data.ravel() for p in model.parameters()]))
    assert np.array_equal(_bits(weights[0]), _bits(weights[1]))
    assert weights[0].size >= numba_ops.MIN_SIZE
    assert loop_calls["adam_range"] == 3


def test_describe(monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    assert f"numba {importlib.metadata.version('numba')}" in numba_ops.describe()
    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert "numba version unknown" in numba_ops.describe()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert numba_ops.describe().startswith("none: numba is not installed")


def test_the_loop_loads_at_the_first_step_that_needs_it_by_size_never_by_the_clock():
    """A fresh process: a model below the threshold (the digits network) trains without ever
    importing Numba; the first Adam step of a model above it runs the compiled loop at once,
    however little time the process has trained."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import gpunn as gn\n"
        "from gpunn.backend import numba_ops\n"
        "small = gn.mlp([64, 100, 10], seed=0)\n"
        "gn.optim.Adam(small.parameters()).step()\n"
        "assert 'numba' not in sys.modules, 'imported for a model below the threshold'\n"
        "model = gn.mlp([784, 100, 10], seed=0)\n"
        "opt = gn.optim.Adam(model.parameters())\n"
        "calls = []\n"
        "real = numba_ops._loops\n"
        "numba_ops._loops = lambda: calls.append(1) or real()\n"
        "opt.step()\n"
        "assert calls == [1] and 'numba' in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != selection.ENV_VAR}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_forked_child_makes_its_own_update_threads():
    """The parent's pool threads do not exist in a forked child; a big update there must not
    wait on them forever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    code = (
        "import multiprocessing as mp, numpy as np\n"
        "from gpunn.backend import numba_ops\n"
        "def big(q):\n"
        "    n = numba_ops.PARALLEL_MIN + 5; seen = np.zeros(n, np.int64)\n"
        "    numba_ops._split(lambda lo, hi: seen.__setitem__(slice(lo, hi), seen[lo:hi] + 1), n)\n"
        "    q.put(int(seen.sum()))\n"
        "if __name__ == '__main__':\n"
        "    q = mp.Queue(); big(q); q.get()\n"
        "    ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=big, args=(q,)); p.start()\n"
        "    print(q.get(timeout=60)); p.join()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == str(numba_ops.PARALLEL_MIN + 5)


def test_a_numba_that_does_not_load_leaves_the_reference_running_with_one_warning(monkeypatch):
    """Numba found but failing to import (built for another NumPy): a warning naming the error,
    then the reference's bits, not an ImportError in the middle of a fit."""
    import gpunn.backend  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "gpunn.backend.numba_loops", None)  # its import now raises
    monkeypatch.delattr(gpunn.backend, "numba_loops", raising=False)  # and `from . import` cannot find it
    numba_ops._loops.cache_clear()
    try:
        rng = np.random.default_rng(0)
        p, g = rng.standard_normal((2, 1 << 15)).astype(np.float32)
        buffers = {name: [p.copy(), g.copy(), np.zeros_like(p), np.zeros_like(p)] for name in ("numba", "reference")}
        hyper = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 1}
        with pytest.warns(RuntimeWarning, match="Numba is installed but does not load"):
            numba_ops.NumbaOps(np).adam_update(*buffers["numba"], **hyper)
        NumpyOps(np).adam_update(*buffers["reference"], **hyper)
        for got, want in zip(buffers["numba"], buffers["reference"], strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        numba_ops._loops.cache_clear()


def test_using_chooses_the_ops_inside_its_block_over_the_variable(monkeypatch):
    """selection.using overrides GPUNN_OPS for its block only, nested blocks included, in this
    thread alone; a value other than auto or reference is refused, naming the argument."""
    import threading  # noqa: PLC0415

    cpu = gn.device("cpu")
    monkeypatch.setenv(selection.ENV_VAR, "auto")
    assert type(selection.ops_for(cpu)) is NumbaOps
    with selection.using("reference"):
        assert type(selection.ops_for(cpu)) is NumpyOps
        assert type(selection.ops_of(np.zeros(3))) is NumpyOps
        seen = []
        worker = threading.Thread(target=lambda: seen.append(type(selection.ops_for(cpu))))
        worker.start()
        worker.join()
        assert seen == [NumbaOps]  # another thread keeps the variable's choice
        with selection.using("auto"):
            assert type(selection.ops_for(cpu)) is NumbaOps
        assert selection.choice() == "reference"
    assert type(selection.ops_for(cpu)) is NumbaOps
    monkeypatch.setenv(selection.ENV_VAR, "reference")
    with selection.using("auto"):
        assert type(selection.ops_for(cpu)) is NumbaOps
    assert type(selection.ops_for(cpu)) is NumpyOps
    with pytest.raises(ValueError, match="which must be 'auto' or 'reference', got 'fast'"), selection.using("fast"):
        pass
