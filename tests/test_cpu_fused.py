"""Adam's one compiled pass on the CPU (gpunn.backend.cpu_fused) gives the NumPy twin's bits.

The same buffers are stepped by the twin (``adam_update`` with the one-pass loop switched off)
and by the loop, from the same gradients, for both dtypes, sizes from one element to a buffer
split between threads, with and without an L2 penalty and AdamW's decay, with the weights
prefix ending anywhere; then whole fits (Trainer and the small update of the compiled step)
must give equal weights either way. Needs Numba (the test extra installs it).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba")

import gpunn as gn
import gpunn.train.cpu_step
from gpunn import optim
from gpunn.backend import _fused_loops, cpu_fused, kernels, layer_kernels
from gpunn.backend import cpu_chunks as cpu_runner
from gpunn.backend.update_twins import adam_constants
from gpunn.optim.cpu_update import SmallUpdate, compile_update


@pytest.fixture
def twin() -> Any:
    """A context in which cpu_fused says it is unavailable, so that the twin runs (with a
    MonkeyPatch of its own: leaving it undoes only what it did)."""

    class Off:
        def __enter__(self) -> None:
            self.patch = pytest.MonkeyPatch()
            self.patch.setitem(cpu_fused._state, "checked", True)
            self.patch.setitem(cpu_fused._state, "available", False)

        def __exit__(self, *exc: object) -> None:
            self.patch.undo()

    return Off()


@pytest.fixture
def loop_calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Calls into each compiled loop during the test, by name (the loops wrapped where
    cpu_fused keeps them and where it loads them from)."""
    assert cpu_fused.available()  # loaded first: the load's own trial run is not counted
    calls: collections.Counter = collections.Counter()

    def counting(name: str, loop: Any) -> Any:
        def run(*args: Any) -> Any:
            calls[name] += 1
            return loop(*args)

        return run

    for name, attr in (
        ("adam", "adam_range"),
        ("bias_relu", "bias_relu"),
        ("relu_backward", "relu_backward"),
        ("relu_backward_inplace", "relu_backward_inplace"),
    ):
        monkeypatch.setattr(_fused_loops, attr, counting(name, getattr(_fused_loops, attr)))
        if name in cpu_fused._kernels:
            monkeypatch.setitem(cpu_fused._kernels, name, counting(name, cpu_fused._kernels[name]))
    return calls


def _buffers(n: int, dtype: Any, seed: int) -> list[np.ndarray]:
    """p, g, m, v with the ranges a running Adam has (v ≥ 0)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-2).astype(dtype)
    m = (rng.standard_normal(n) * 1e-3).astype(dtype)
    v = np.abs(rng.standard_normal(n) * 1e-5).astype(dtype)
    return [p, g, m, v]


def _update(buffers: list[np.ndarray], step: int, n_decay: int, l2: float, weight_decay: float) -> None:
    p, g, m, v = buffers
    c = adam_constants(1e-3, 0.9, 0.999, step, weight_decay)
    kernels.adam_update(
        p,
        g,
        m,
        v,
        kernels.scratch(p.size, p.dtype, lanes=2),
        n_decay=n_decay,
        step_size=c["step_size"],
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        inv_sqrt_bc2=c["inv_sqrt_bc2"],
        decay_factor=c["decay_factor"],
        l2=l2,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "n_decay"), [(1, 1), (7, 0), (7, 3), (7_510, 7_400), (99_991, 99_991)])
@pytest.mark.parametrize(("l2", "weight_decay"), [(0.0, 0.0), (1e-3, 0.0), (0.0, 0.01), (1e-3, 0.01)])
def test_one_pass_gives_the_twins_bits(twin, dtype, n, n_decay, l2, weight_decay):
    assert cpu_fused.available()
    fused = _buffers(n, dtype, seed=n)
    plain = [b.copy() for b in fused]
    calls = []
    original = cpu_fused.adam
    for step in range(1, 4):
        fused[1][...] = plain[1][...] = _buffers(n, dtype, seed=n + step)[1]
        with pytest.MonkeyPatch.context() as spy:
            spy.setattr(cpu_fused, "adam", lambda *a: (calls.append(1), original(*a)))
            _update(fused, step, n_decay, l2, weight_decay)
        with twin:
            _update(plain, step, n_decay, l2, weight_decay)
        for name, a, b in zip("pgmv", fused, plain, strict=True):
            assert np.array_equal(a, b), (name, step)
    assert len(calls) == 3  # the loop ran, not the twin


def test_a_buffer_split_between_threads_gives_the_twins_bits(twin, loop_calls):
    assert cpu_fused.available()
    n = cpu_runner.PARALLEL_MIN + 4_099  # two shares on two cores; the prefix ends in the second
    fused = _buffers(n, np.float32, seed=1)
    plain = [b.copy() for b in fused]
    _update(fused, 5, n - 17, 1e-3, 0.01)
    with twin:
        _update(plain, 5, n - 17, 1e-3, 0.01)
    assert loop_calls["adam"] == cpu_runner.cpu_workers()  # one share per thread, and no twin
    for name, a, b in zip("pgmv", fused, plain, strict=True):
        assert np.array_equal(a, b), name


def test_run_split_covers_every_element_once():
    for n in (0, 1, 15, cpu_runner.PARALLEL_MIN, cpu_runner.PARALLEL_MIN + 17):
        seen = np.zeros(n, np.int64)
        shares = []

        def mark(lo: int, hi: int, seen: np.ndarray = seen, shares: list = shares) -> None:
            seen[lo:hi] += 1
            shares.append((lo, hi))

        cpu_runner.run_split(mark, n)
        assert (seen == 1).all(), n
        assert all(lo % 16 == 0 for lo, _ in shares)
        if n >= cpu_runner.PARALLEL_MIN and cpu_runner.cpu_workers() > 1:
            assert len(shares) == cpu_runner.cpu_workers()


def test_an_error_in_a_share_reaches_the_caller_after_every_share_ended():
    n = cpu_runner.PARALLEL_MIN
    done = []

    def fail_first(lo: int, hi: int) -> None:
        if lo == 0:
            raise RuntimeError("share 0 failed")
        done.append((lo, hi))

    if cpu_runner.cpu_workers() == 1:
        pytest.skip("one core: no second share")
    with pytest.raises(RuntimeError, match="share 0 failed"):
        cpu_runner.run_split(fail_first, n)
    assert len(done) == cpu_runner.cpu_workers() - 1


def _adam_zero_eps(buffers: list[np.ndarray]) -> None:
    kernels.adam_update(
        *buffers,
        kernels.scratch(buffers[0].size, buffers[0].dtype),
        n_decay=buffers[0].size,
        step_size=1e-3,
        beta1=0.9,
        beta2=0.999,
        eps=0.0,  # √0·c + 0 = 0: m / 0 is ±inf or nan, as NumPy divides
        inv_sqrt_bc2=1.0,
        decay_factor=1.0,
    )


def test_inf_nan_and_a_zero_denominator_as_numpy_gives_them(twin, loop_calls):
    assert cpu_fused.available()
    p, g, m, v = _buffers(6, np.float32, seed=3)
    g[:3] = [np.inf, -np.inf, np.nan]
    v[3:], m[3:], g[3:] = 0.0, [1.0, 0.0, -1.0], 0.0
    fused = [p, g, m, v]
    plain = [b.copy() for b in fused]
    with np.errstate(all="ignore"):
        _adam_zero_eps(fused)
        with twin:
            _adam_zero_eps(plain)
    assert loop_calls["adam"] == 1
    for a, b in zip(fused, plain, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    assert np.isnan(fused[0][:3]).all() and np.isinf(fused[0][3]) and np.isnan(fused[0][4])


def test_clipping_l1_and_an_array_lr_run_the_twin(monkeypatch):
    assert cpu_fused.available()
    calls = []
    monkeypatch.setattr(cpu_fused, "adam", lambda *a: calls.append(1))
    model = gn.mlp([5, 4, 3], seed=0)
    for p in model.parameters():
        p.grad[...] = 0.5
    before = model.parameters()[0].data.copy()
    optim.Adam(model.parameters(), max_grad_norm=1.0).step()
    optim.Adam(model.parameters()).step(gn.L1(1e-3))
    assert calls == []
    assert not np.array_equal(model.parameters()[0].data, before)  # the twin did update
    array_lr = optim.Adam(model.parameters())
    array_lr.lr = np.array([1e-3], np.float32)  # broadcasts in the twin's passes
    array_lr.step()
    assert calls == []
    optim.Adam(model.parameters()).step(gn.L2(1e-3))
    assert calls == [1]


def test_small_update_takes_the_one_pass_and_stays_bit_equal(twin, loop_calls):
    assert cpu_fused.available()
    rng = np.random.default_rng(0)
    with twin:
        plain_model = gn.mlp([13, 7, 3], seed=0)
        plain = optim.AdamW(plain_model.parameters(), weight_decay=0.02)
        plain_update = compile_update(plain)
        assert isinstance(plain_update, SmallUpdate) and plain_update._fused is None
    model = gn.mlp([13, 7, 3], seed=0)
    fast = optim.AdamW(model.parameters(), weight_decay=0.02)
    update = compile_update(fast)
    assert isinstance(update, SmallUpdate) and update._fused is not None
    for step in range(5):
        grad = rng.standard_normal(fast._flat.size).astype(np.float32)
        fast._flat.grad[...] = plain._flat.grad[...] = grad
        fast.lr = plain.lr = 1e-3 * (step + 1)  # hyperparameters may change between steps
        penalty = gn.L2(1e-3 * step) if step % 2 else None
        update(penalty)
        with twin:
            plain_update(penalty)
        assert np.array_equal(fast._flat.data, plain._flat.data), step
        for name in fast.state_names:
            assert np.array_equal(fast._state[name], plain._state[name]), (name, step)
    assert loop_calls["adam"] == 5


def test_a_trainer_fit_gives_the_same_weights_either_way(twin, loop_calls):
    assert cpu_fused.available()
    x, y = gn.data.make_spiral(40, 3, seed=0)
    weights = []
    for fused in (True, False):
        model = gn.mlp([2, 16, 3], seed=1)
        trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), optim.Adam(lr=1e-2), regularizer=gn.L2(1e-3), device="cpu")
        if fused:
            trainer.fit(x, y, epochs=3, batch_size=32, seed=0)
        else:
            with twin:
                trainer.fit(x, y, epochs=3, batch_size=32, seed=0)
        weights.append([p.data.copy() for p in model.parameters()])
    assert loop_calls["adam"] > 0 and loop_calls["bias_relu"] > 0
    for a, b in zip(*weights, strict=True):
        assert np.array_equal(a, b)


def test_gpunn_numba_0_turns_it_off():
    code = "from gpunn.backend import cpu_fused; print(cpu_fused.available(), cpu_fused.why_unavailable())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"GPUNN_NUMBA": "0", "PATH": ""}
    )
    assert out.stdout.strip() == "False turned off by GPUNN_NUMBA=0"


# ----------------------------------------------------------------------------- ReLU layers


def _special(shape: tuple[int, int], dtype: Any, seed: int) -> np.ndarray:
    """Random values with NaN, ±inf and ±0 sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    for value, step in ((np.nan, 7), (np.inf, 11), (-np.inf, 13), (0.0, 5), (-0.0, 3)):
        flat[rng.integers(0, flat.size, max(1, flat.size // step))] = value
    return x


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (200, 100)])
def test_bias_relu_gives_numpys_bits(dtype, shape):
    assert cpu_fused.available()
    y = _special(shape, dtype, seed=shape[1])
    b = _special((1, shape[1]), dtype, seed=shape[0])[0]
    b[: shape[1] // 2] = -0.0  # −0 + −0 = −0 reaches the maximum: NumPy's gives +0
    y[:, : shape[1] // 2] = -0.0
    fused, plain = y.copy(), y.copy()
    with np.errstate(all="ignore"):
        assert cpu_fused.bias_relu(fused, b)
        layer_kernels.bias_activation_reference(plain, b, "relu")
    assert np.array_equal(_bits(fused), _bits(plain))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (200, 100)])
@pytest.mark.parametrize("where", ["new", "into-dy", "into-out"])
def test_relu_backward_gives_numpys_bits(dtype, shape, where):
    assert cpu_fused.available()
    dy = _special(shape, dtype, seed=1)  # inf·0 is NaN, as NumPy's dy * (a > 0) makes it
    a = np.abs(_special(shape, dtype, seed=2))
    a[:, ::2] = 0.0
    with np.errstate(all="ignore"):
        expected = layer_kernels.activation_backward_reference(dy, a, "relu")
        out = {"new": None, "into-dy": dy, "into-out": np.empty_like(dy)}[where]
        dz = cpu_fused.relu_backward(dy, a, out)
    assert dz is not None and (out is None or dz is out)
    assert np.array_equal(_bits(dz), _bits(expected))


def test_relu_loops_run_only_once_loaded_and_only_on_layouts_they_take(twin):
    y, b = np.ones((4, 6), np.float32), np.ones(6, np.float32)
    assert cpu_fused.available()
    assert not cpu_fused.bias_relu(y[:, ::2], b[::2])  # not contiguous
    assert not cpu_fused.bias_relu(y, b.astype(np.float64))  # two dtypes
    assert not cpu_fused.bias_relu(y, b[:5])  # a bias of another width
    frozen = y.copy()
    frozen.flags.writeable = False
    assert not cpu_fused.bias_relu(frozen, b)
    assert cpu_fused.relu_backward(y, y[:, :5]) is None  # another shape
    assert cpu_fused.relu_backward(y, y, out=np.empty((4, 6), np.float64)) is None
    with twin:  # not loaded: the dispatchers run NumPy's passes, and say nothing failed
        assert not cpu_fused.loaded()
        assert not cpu_fused.bias_relu(y, b)
        assert cpu_fused.relu_backward(y, y) is None
        assert np.array_equal(layer_kernels.bias_activation(y, b, "relu"), np.full((4, 6), 2.0, np.float32))


def test_relu_networks_step_the_same_bits_with_the_loops_and_without(twin):
    """Layered and compiled steps of a ReLU network (fused and separate activations), with
    the loops loaded and without, from the same weights and batch."""
    assert cpu_fused.available()  # loads the loops (SGD's step would not)
    x, y = gn.data.make_spiral(50, 3, seed=2)
    weights = []
    for loops in (True, False):
        for compiled in (True, False):
            model = gn.Sequential(
                gn.Linear(2, 9, seed=0), gn.ReLU(), gn.Linear(9, 7, seed=1), gn.ReLU(), gn.Linear(7, 3, seed=2)
            )
            loss, opt = gn.SoftmaxWithLoss(), optim.SGD(model.parameters(), lr=0.1)
            step = gpunn.train.cpu_step.compile_step(model, loss, opt, None) if compiled else None
            with twin if not loops else contextlib.nullcontext():
                for _ in range(3):
                    if step is not None:
                        step(x, y)
                    else:
                        loss.forward(model.forward(x), y)
                        model.backward(loss.backward(), input_grad=False)
                        opt.step()
            weights.append(np.concatenate([p.data.ravel() for p in model.parameters()]))
    for w in weights[1:]:
        assert np.array_equal(_bits(w), _bits(weights[0]))


# ----------------------------------------------------------------------------- what must run the twin


def test_overlapping_buffers_go_to_the_twin():
    """A loop reading one buffer while writing another that overlaps it would see its own
    writes (NumPy guards against that); only disjoint buffers reach the loops."""
    assert cpu_fused.available()
    base = np.zeros(20, np.float32)
    p, g, m, v = (np.zeros(8, np.float32) for _ in range(4))
    assert cpu_fused.fits(p, g, m, v)
    assert not cpu_fused.fits(p, g, base[0:8], base[1:9])  # m and v overlap, one element apart
    assert not cpu_fused.fits(p, base[0:8], base[4:12], v)
    y = np.zeros((3, 4), np.float32)
    assert not cpu_fused.bias_relu(y, y[0])  # b is y's first row
    assert cpu_fused.relu_backward(y, y, out=y) is None  # in place, reading the array it writes
    rows = np.zeros((4, 4), np.float32)
    assert cpu_fused.relu_backward(rows[:3], np.ones((3, 4), np.float32), out=rows[1:]) is None


@pytest.mark.parametrize("path", ["optimizer.step", "SmallUpdate"])
def test_an_l2_too_small_for_the_dtype_still_adds_its_rounded_zero(twin, path, loop_calls):
    """The twin decides on the Python float: l2 = 1e-50 rounds to 0 in float32 but is still
    added as fl(0·W), which turns an infinite weight's gradient into NaN. The loop must too."""
    assert cpu_fused.available()
    runs = []
    for loops in (True, False):
        model = gn.mlp([3, 4, 2], seed=0)
        model.parameters()[0].data[0, 0] = np.inf
        opt = optim.Adam(model.parameters())
        update = compile_update(opt) if path == "SmallUpdate" else opt.step
        for p in model.parameters():
            p.grad[...] = 0.25
        with contextlib.nullcontext() if loops else twin, np.errstate(all="ignore"):
            update(gn.L2(1e-50))
        runs.append([_bits(opt._flat.data.copy()), _bits(opt._state["exp_avg"].copy())])
    assert loop_calls["adam"] == 1  # the loop stepped once, the twin once
    assert np.isnan(runs[1][0].view(np.float32)[0])  # the twin's NaN
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


def test_numpy_set_to_raise_raises_as_before(twin, loop_calls):
    """np.errstate(all="raise") makes the twin raise FloatingPointError; the loops cannot, so
    they step aside and the same error comes."""
    assert cpu_fused.available()
    model = gn.mlp([3, 4, 2], seed=0)
    opt = optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad[...] = 1e30  # ĝ² overflows float32
    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        opt.step()
    with np.errstate(all="raise"):
        assert not cpu_fused.bias_relu(np.ones((2, 3), np.float32), np.ones(3, np.float32))
        assert cpu_fused.relu_backward(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)) is None
    assert loop_calls["adam"] == 0
    assert cpu_fused.bias_relu(np.ones((2, 3), np.float32), np.ones(3, np.float32))  # settings restored
    opt.step()  # NumPy back to warning: the loop
    assert loop_calls["adam"] == 1


def test_a_loop_that_fails_to_compile_turns_the_loops_off_and_the_twin_steps(monkeypatch):
    import numba  # noqa: PLC0415

    def broken(*args: Any) -> None:
        raise numba.core.errors.TypingError("no implementation for these types")

    assert cpu_fused.available()
    monkeypatch.setitem(cpu_fused._state, "available", True)  # restored after the test
    monkeypatch.setitem(cpu_fused._state, "reason", None)
    monkeypatch.setitem(cpu_fused._kernels, "bias_relu", broken)
    y, b = np.ones((2, 3), np.float32), np.ones(3, np.float32)
    with pytest.warns(RuntimeWarning, match="failed to compile bias_relu"):
        out = layer_kernels.bias_activation(y, b, "relu")
    assert np.array_equal(out, np.full((2, 3), 2.0, np.float32))  # the twin did it, once
    assert not cpu_fused.loaded() and "bias_relu" in cpu_fused._state["reason"]


def test_an_interrupt_while_loading_leaves_it_to_be_tried_again(monkeypatch):
    monkeypatch.setitem(cpu_fused._state, "checked", False)
    monkeypatch.setitem(cpu_fused._state, "available", False)
    real = cpu_fused._load

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_fused, "_load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cpu_fused.available()
    monkeypatch.setattr(cpu_fused, "_load", real)
    assert cpu_fused.available()


def test_describe_needs_no_package_metadata(monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cpu_fused.available()
    assert cpu_fused.describe() == "one compiled pass (numba version unknown)"


def test_a_forked_child_makes_its_own_update_threads():
    """The parent's pool threads do not exist in a forked child; a big update there must not
    wait on them forever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    n = cpu_runner.PARALLEL_MIN + 5
    seen = np.zeros(n, np.int64)
    cpu_runner.run_split(lambda lo, hi: seen.__setitem__(slice(lo, hi), seen[lo:hi] + 1), n)  # the parent's pool
    code = (
        "import multiprocessing as mp, numpy as np\n"
        "from gpunn.backend import cpu_chunks as cpu_runner\n"
        "def big(q):\n"
        "    n = cpu_runner.PARALLEL_MIN + 5; seen = np.zeros(n, np.int64)\n"
        "    cpu_runner.run_split(lambda lo, hi: seen.__setitem__(slice(lo, hi), seen[lo:hi] + 1), n)\n"
        "    q.put(int(seen.sum()))\n"
        "if __name__ == '__main__':\n"
        "    q = mp.Queue(); big(q); q.get()\n"
        "    ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=big, args=(q,)); p.start()\n"
        "    print(q.get(timeout=60)); p.join()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == str(n)


# ----------------------------------------------------------------------------- when the loops load


def _fresh(monkeypatch: pytest.MonkeyPatch, env: str | None) -> list[float]:
    """cpu_fused as in a new process, on a clock the test moves (all restored after the test):
    returns the clock, a one-element list of seconds."""
    monkeypatch.setitem(cpu_fused._state, "checked", False)
    monkeypatch.setitem(cpu_fused._state, "available", False)
    monkeypatch.setattr(cpu_fused, "_clock", [])
    clock = [100.0]
    monkeypatch.setattr(cpu_fused, "_now", lambda: clock[0])
    if env is None:
        monkeypatch.delenv(cpu_fused.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(cpu_fused.ENV_VAR, env)
    return clock


def test_the_loops_load_after_a_second_of_adam_steps(monkeypatch):
    clock = _fresh(monkeypatch, None)
    assert cpu_fused.installed() and not cpu_fused.ready()  # the first step starts the count
    assert "after" in cpu_fused.describe()
    step = 0.125  # seconds a step (a binary fraction: the sum is exact)
    for _ in range(round(cpu_fused.WARM_UP_SECONDS / step) - 1):
        clock[0] += step
        assert not cpu_fused.ready() and not cpu_fused.loaded()
    clock[0] += step
    assert cpu_fused.ready() and cpu_fused.loaded()


def test_a_pause_between_steps_counts_as_little_training(monkeypatch):
    """A short fit an hour after another one does not load the loops at its first step."""
    clock = _fresh(monkeypatch, None)
    assert not cpu_fused.ready()
    clock[0] += 3600.0  # an hour idle
    assert not cpu_fused.ready()
    for _ in range(3):
        clock[0] += 0.01
        assert not cpu_fused.ready()
    assert not cpu_fused.loaded()
    assert cpu_fused._clock[1] == pytest.approx(cpu_fused.GAP_SECONDS + 0.03)


def test_gpunn_numba_1_loads_them_at_the_first_step(monkeypatch):
    _fresh(monkeypatch, "1")
    assert "first Adam step" in cpu_fused.describe()
    assert cpu_fused.ready() and cpu_fused.loaded()


def test_a_short_job_never_imports_numba():
    """A fit shorter than the warm-up takes NumPy's passes and never pays Numba's start-up."""
    code = (
        "import sys, numpy as np, gpunn as gn\n"
        "x, y = gn.data.make_spiral(30, 3, seed=0)\n"
        "model = gn.mlp([2, 8, 3], seed=0)\n"
        "trainer = gn.Trainer(model, gn.SoftmaxWithLoss(), gn.optim.Adam(lr=1e-2), device='cpu')\n"
        "trainer.fit(x, y, epochs=3, batch_size=16, verbose=False)\n"
        "print('numba' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != cpu_fused.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_gpunn_numba_0_or_a_failed_load_keep_ready_false(monkeypatch):
    clock = _fresh(monkeypatch, "0")
    clock[0] += 10.0
    assert not cpu_fused.installed() and not cpu_fused.ready() and not cpu_fused.ready()
    _fresh(monkeypatch, "1")

    def broken() -> None:
        raise RuntimeError("no usable cache directory")

    monkeypatch.setattr(cpu_fused, "_load", broken)
    with pytest.warns(RuntimeWarning, match="no usable cache directory"):
        assert not cpu_fused.ready()
    assert not cpu_fused.ready() and not cpu_fused.installed()
    assert "no usable cache directory" in cpu_fused.describe()


def test_training_across_the_switch_gives_the_twins_weights(monkeypatch, loop_calls):
    """The loops come on part-way through a fit (small update and big-buffer path, L2, ReLU):
    the weights are those of a fit that never used them."""
    weights = []
    for switch in (True, False):
        clock = _fresh(monkeypatch, None if switch else "0")
        x, y = gn.data.make_spiral(60, 3, seed=4)
        for sizes in ([2, 32, 3], [2, 400, 400, 3]):  # 1.2 k and 162 k parameters (> CHUNK)
            model = gn.mlp(sizes, seed=5)
            trainer = gn.Trainer(
                model, gn.SoftmaxWithLoss(), optim.AdamW(lr=1e-2), regularizer=gn.L2(1e-3), device="cpu"
            )

            def tick(trainer: Any, logs: Any, clock: list[float] = clock) -> None:
                clock[0] += 0.2  # each epoch counts 0.2 s: the loops load in the sixth

            trainer.fit(x, y, epochs=9, batch_size=32, callbacks=[tick], verbose=False)
            weights.append(np.concatenate([p.data.ravel() for p in model.parameters()]))
        assert cpu_fused.loaded() == switch
    assert loop_calls["adam"] > 10 and loop_calls["bias_relu"] > 10
    for a, b in zip(weights[:2], weights[2:], strict=True):
        assert np.array_equal(_bits(a), _bits(b))
