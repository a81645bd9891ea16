"""How ``gpunn bench`` times a step: the steps take turns window by window, the device
synchronized before each clock read, every ratio paired round by round; and the references a
step is timed against (the device's matrix-product ceiling, the step's matrix products alone)."""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

from ..backend.cuda import compile as raw_kernels
from ..backend.device import Device
from .steps import MODELS, Case, Step

WINDOW_SECONDS = 0.05  # aim for windows long enough to swamp timer noise
# Between windows, so that the worker threads the previous framework left spinning (OpenBLAS
# and OpenMP spin-wait for up to ~0.1 s) are asleep and do not steal the next one's cores.
PAUSE_SECONDS = {"cpu": 0.25, "cuda": 0.02}


def ceiling_size(dev: Device) -> int:
    """n of the ceiling's n×n matrices: big enough to be compute-bound on ``dev``."""
    return 2048 if dev.kind == "cpu" else 8192


def matmul_step(dev: Device) -> tuple[Step, float]:
    """The ceiling: one n×n·n×n float32 matrix product into a preallocated output, n = :func:`ceiling_size`;
    returns the step and its FLOPs."""
    n = ceiling_size(dev)
    rng = np.random.default_rng(0)
    with dev:
        a, b = (dev.send(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        out = dev.xp.empty((n, n), dtype=np.float32)
    return (lambda: dev.xp.matmul(a, b, out=out)), 2.0 * n**3


def products_step(case: Case) -> Step:
    """One step's matrix products alone, into preallocated outputs: x·W per layer, xᵀ·dz for
    every layer, dz·Wᵀ for all but the first. The step's time over theirs: what the rest costs."""
    sizes = MODELS[case.model]
    dev, n, xp = case.device, case.batch, case.device.xp
    rng = np.random.default_rng(0)
    with dev:
        weights = [dev.send(rng.standard_normal((i, o), dtype=np.float32)) for i, o in itertools.pairwise(sizes)]
        acts = [dev.send(rng.standard_normal((n, width), dtype=np.float32)) for width in sizes]
        grads = [xp.empty_like(w) for w in weights]
        outs = [xp.empty((n, width), dtype=np.float32) for width in sizes]

    def step() -> None:
        for i, w in enumerate(weights):
            xp.matmul(acts[i], w, out=outs[i + 1])
        for i in range(len(weights) - 1, -1, -1):
            xp.matmul(acts[i].T, acts[i + 1], out=grads[i])
            if i > 0:
                xp.matmul(acts[i + 1], weights[i].T, out=outs[i])

    return step


def synchronizer(dev: Device) -> Callable[[], None]:
    """Wait for every queued kernel, CuPy's and torch's (once a torch baseline is built), before
    a clock is read."""
    if dev.kind == "cpu":
        return lambda: None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return lambda: (dev.synchronize(), torch.cuda.synchronize(dev.index))
    return dev.synchronize


def time_interleaved(
    steps: dict[str, Step], dev: Device, windows: int, errors: dict[str, str]
) -> dict[str, list[float]]:
    """Milliseconds per step of every window on ``dev``, the steps taking turns window by window.
    A step other than gpunn's that raises while warming up (a baseline out of memory, a graph
    that cannot replay) is left out and its error recorded in ``errors``."""
    sync, pause = synchronizer(dev), PAUSE_SECONDS[dev.kind]
    per_window = {}
    for name, step in list(steps.items()):
        try:
            for _ in range(3):  # warm-up: compilation, allocation pools, BLAS threads
                step()
            sync()
        except Exception as exc:
            if name == "gpunn":
                raise
            errors[f"{name} step"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"gpunn bench: the {name} step failed ({exc}); left out", RuntimeWarning, stacklevel=3)
            del steps[name]
            continue
        start = time.perf_counter()
        step()
        sync()
        per_window[name] = max(1, min(200, round(WINDOW_SECONDS / max(time.perf_counter() - start, 1e-6))))
        for _ in range(min(50, per_window[name] * 2)):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for window in range(windows):
        # Rotate who goes first: a framework's spinning worker threads (OpenMP in torch, BLAS
        # pools) slow whoever runs right after it; the pause lets them sleep before each window.
        for name in names[window % len(names) :] + names[: window % len(names)]:
            time.sleep(pause)
            sync()
            start = time.perf_counter()
            for _ in range(per_window[name]):
                steps[name]()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3 / per_window[name])
    return times


def host_and_device_us(case: Case, step: Step, steps: int = 20) -> tuple[float, float] | None:
    """(host µs, device µs) per step on a GPU; None on the CPU. Host: the time Python takes to
    queue ``steps`` steps. Device: the time the GPU takes to run them once queued — a spin kernel
    holds the GPU for twice the host's queueing time while the host queues them behind it, so the
    CUDA events see the kernels back to back, not the launch gaps. Host above device: launch-bound.
    """
    if case.device.kind != "cuda":
        return None
    cuda = case.device.xp.cuda
    step()
    case.device.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    host = time.perf_counter() - began
    case.device.synchronize()
    start, end = cuda.Event(), cuda.Event()
    # 20 steps of ~10-20 launches stay well inside the ~1000 launches a stream queues before
    # the host blocks (which would bring the launch gaps back)
    raw_kernels.spin(case.device.xp, 2.0 * host + 0.01)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    return host / steps * 1e6, cuda.get_elapsed_time(start, end) * 1e3 / steps


def paired_ratio(numerator_ms: list[float], denominator_ms: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 of numerator[k] / denominator[k] over the rounds k: with ms per step
    on both sides, how many times faster the denominator's step ran, judged round by round."""
    ratios = np.asarray(numerator_ms, dtype=np.float64) / np.asarray(denominator_ms, dtype=np.float64)
    return float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))
