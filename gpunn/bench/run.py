"""``gpunn bench``: training-step throughput per device, measured honestly.

For each device, model and batch size, one training step (forward, softmax-with-loss,
backward, optimizer update) of gpunn is timed against the same step written by hand in
NumPy (the CPU's reference, :mod:`gpunn.handwritten`) and in PyTorch eager (when torch is
installed), all starting from the same weights. The frameworks run interleaved, window by
window (A/B/C/A/B/C ...), so that drift on a shared machine cancels; the device is
synchronized before every clock read; results are the median milliseconds per step with
p10/p90 over the windows. Every ratio (gpunn over a baseline, a step's share of the ceiling,
a step over its matrix products) is paired: taken window by window between windows of the
same round, which ran seconds apart, then the median of those — so a load that comes and goes
on a shared machine moves both sides of each ratio alike. Beside them: the exact
matrix-product FLOPs of a step, achieved GFLOP/s as a share of the device's matrix-product
ceiling measured in the same run, the memory a step really uses against the minimum it must,
kernel launches per step on a GPU, and, per model, the smallest batch at which the GPU beats
the CPU.
"""

from __future__ import annotations

import itertools
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import cpu_fused
from ..backend.cuda import compile as raw_kernels
from ..backend.device import Device, matmul_precision
from ..optim import OPTIMIZERS
from ..validation import check_choice
from .steps import (
    MODELS,
    Case,
    Step,
    blas_threads,
    ceiling_size,
    gpunn_step,
    graph_step,
    matmul_step,
    numpy_step,
    products_step,
    torch_step,
)

# The command line and the tests import everything from here; the steps themselves are built
# in gpunn.bench_steps and re-exported.
__all__ = [
    "DEFAULT_BATCHES",
    "FRAMEWORKS",
    "HEADER",
    "MODELS",
    "Case",
    "Step",
    "blas_threads",
    "crossover",
    "flops_per_step",
    "format_row",
    "gpunn_step",
    "graph_step",
    "matmul_step",
    "minimum_bytes",
    "numpy_step",
    "plot",
    "products_step",
    "run",
    "torch_step",
    "torch_version",
]

DEFAULT_BATCHES: dict[str, dict[str, tuple[int, ...]]] = {
    "T1": {"cpu": (32, 128, 1024), "cuda": (32, 128, 1024)},
    "T2": {"cpu": (128, 1024), "cuda": (128, 1024)},
    "W1": {"cpu": (512,), "cuda": (4096,)},
}
FRAMEWORKS = ("gpunn", "graph", "numpy", "torch")  # graph: gpunn with CUDA-graph replay (GPU only)
WINDOW_SECONDS = 0.05  # aim for windows long enough to swamp timer noise
# Between windows, so that the worker threads the previous framework left spinning (OpenBLAS
# and OpenMP spin-wait for up to ~0.1 s) are asleep and do not steal the next one's cores.
PAUSE_SECONDS = {"cpu": 0.25, "cuda": 0.02}


def flops_per_step(sizes: tuple[int, ...], batch: int) -> int:
    """Matrix-product FLOPs of one step: forward 2·N·in·out per Linear, backward 4·N·in·out,
    minus the first layer's input gradient (2·N·in·out), which training never needs."""
    pairs = list(itertools.pairwise(sizes))
    total = sum(6 * batch * i * o for i, o in pairs)
    return total - 2 * batch * pairs[0][0] * pairs[0][1]


def minimum_bytes(sizes: tuple[int, ...], batch: int, optimizer: str, itemsize: int = 4) -> int:
    """The memory a step cannot do without: parameters, gradients, optimizer state, one
    activation per layer output, and the batch (inputs and int64 labels)."""
    n_params = sum(i * o + o for i, o in itertools.pairwise(sizes))
    state = len(OPTIMIZERS[optimizer].state_names)
    activations = batch * sum(sizes[1:])
    return itemsize * (n_params * (2 + state) + activations + batch * sizes[0]) + 8 * batch


# ----------------------------------------------------------------------------- measuring


def synchronizer(dev: Device) -> Callable[[], None]:
    """Wait for every queued kernel, CuPy's and torch's, before a clock is read."""
    if dev.kind == "cpu":
        return lambda: None
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return lambda: (dev.synchronize(), torch.cuda.synchronize(dev.index))
    except ImportError:
        pass
    return dev.synchronize


def time_interleaved(
    steps: dict[str, Step],
    sync: Callable[[], None],
    windows: int,
    pause: float = 0.25,
    errors: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per step of every window, the frameworks taking turns window by window.

    With ``errors`` given, a step other than gpunn's that raises while warming up (a baseline
    out of memory, a graph that cannot replay) is left out and its error recorded there."""
    per_window = {}
    for name, step in list(steps.items()):
        try:
            for _ in range(3):  # warm-up: compilation, allocation pools, BLAS threads
                step()
            sync()
        except Exception as exc:
            if errors is None or name == "gpunn":
                raise
            errors[f"{name} step"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"gpunn bench: the {name} step failed ({exc}); left out", RuntimeWarning, stacklevel=3)
            del steps[name]
            continue
        start = time.perf_counter()
        step()
        sync()
        one = max(time.perf_counter() - start, 1e-6)
        per_window[name] = max(1, min(200, round(WINDOW_SECONDS / one)))
        for _ in range(min(50, per_window[name] * 2)):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for window in range(windows):
        # Rotate who goes first: a framework's idle worker threads (OpenMP's spin-wait in
        # torch, BLAS pools) can slow whoever runs right after it, so each takes every place
        # in turn; the pause lets those threads go to sleep before the next window.
        for name in names[window % len(names) :] + names[: window % len(names)]:
            step = steps[name]
            time.sleep(pause)
            sync()
            start = time.perf_counter()
            for _ in range(per_window[name]):
                step()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3 / per_window[name])
    return times


def peak_step_bytes(case: Case, optimizer: str, steps: int = 3) -> int | None:
    """Peak bytes held while training with the gpunn step (model, state and batch included):
    NumPy's allocations as tracemalloc sees them on the CPU; on a GPU, the blocks CuPy's
    memory pool holds after a few steps, which is its high-water mark since it frees nothing."""
    if case.device.kind == "cpu":
        tiny, _ = gpunn_step(Case(case.device, "T1", 2), optimizer)
        tiny()  # one-time allocations of a first step (lazy imports, caches) are not the model's
        del tiny
        tracemalloc.start()
        try:
            step, _ = gpunn_step(case, optimizer)
            step()
            # The high-water mark of training, not of building the model (weights are drawn
            # in float64 on the host before rounding); what the model holds stays counted.
            tracemalloc.reset_peak()
            for _ in range(steps):
                step()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    pool = case.device.xp.get_default_memory_pool()
    with case.device:
        step, model = gpunn_step(case, optimizer)
        step()
        case.device.synchronize()
        pool.free_all_blocks()  # drop the cached blocks that building the model left behind
        for _ in range(steps):
            step()
        case.device.synchronize()
        peak = pool.total_bytes()  # blocks held by the pool: what the step needed at its peak
        del step, model
        pool.free_all_blocks()
    return int(peak)


def count_launches(case: Case, optimizer: str) -> float | None:
    """:func:`launches_per_step` of a freshly built gpunn step of ``case`` (None on the CPU)."""
    if case.device.kind != "cuda":
        return None
    with case.device:
        step, _ = gpunn_step(case, optimizer)
        return launches_per_step(case, step)


def launches_per_step(case: Case, step: Step, steps: int = 5) -> float | None:
    """CUDA kernel launches (and copies) per gpunn step, counted by PyTorch's CUPTI-based
    profiler, which sees every kernel in the process; None on the CPU or without torch."""
    if case.device.kind != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    except ImportError:
        return None
    step()
    case.device.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        case.device.synchronize()
    return _gpu_activities(prof) / steps or None


def host_and_device_us(case: Case, step: Step, steps: int = 20) -> tuple[float, float] | None:
    """(host µs, device µs) per step on a GPU. None on the CPU.

    Host: the time Python takes to queue ``steps`` steps (the device runs behind). Device: the
    time the GPU takes to run the same steps when they are already queued — a spin kernel holds
    the GPU for twice the host's queueing time while the host queues them behind it, so the
    CUDA events around them see the kernels back to back, not the gaps where the GPU waited for
    the next launch. Host above device means the step is launch-bound (and graph replay pays).
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


def _gpu_activities(prof: Any) -> int:
    """Kernels, copies and memsets the profiler saw on the GPU (the raw Kineto events when
    this torch exposes them, else the CUDA-side function events)."""
    from torch.autograd import DeviceType  # noqa: PLC0415

    try:
        return sum(1 for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA)
    except AttributeError:
        return sum(1 for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA)


def summarize(
    ms: list[float], batch: int, flops: int, ceiling_ms: list[float], ceiling_flops: float
) -> dict[str, float]:
    """A framework's windows: median ms per step with p10/p90, samples/s and GFLOP/s of the
    median, and its share of the matrix-product ceiling paired window by window (the step's
    GFLOP/s over the ceiling's in the same round)."""
    median = float(np.median(ms))
    gflops = flops / (median / 1e3) / 1e9
    return {
        "ms_per_step": median,
        "ms_p10": float(np.percentile(ms, 10)),
        "ms_p90": float(np.percentile(ms, 90)),
        "samples_per_s": batch / median * 1e3,
        "gflop_per_s": gflops,
        "share_of_ceiling": paired_ratio(ceiling_ms, ms)[0] * flops / ceiling_flops,
        "windows": len(ms),
    }


def paired_ratio(numerator_ms: list[float], denominator_ms: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 of numerator[k] / denominator[k] over the rounds k: with ms per step
    on both sides, how many times faster the denominator's framework ran than the numerator's,
    judged between windows of the same round (seconds apart), so that drift cancels pair by
    pair instead of only in the long run."""
    ratios = np.asarray(numerator_ms, dtype=np.float64) / np.asarray(denominator_ms, dtype=np.float64)
    return float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))


# ----------------------------------------------------------------------------- the run


def run(
    devices: list[Device],
    models: list[str],
    batch_sizes: list[int] | None = None,
    optimizer: str = "adam",
    against: tuple[str, ...] = ("numpy", "torch"),
    repeat: int = 10,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every (device, model, batch) case; returns the JSON-ready result."""
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if any(dev.kind == "cpu" for dev in devices):
        # steady-state throughput: the compiled CPU loops (the `fast` extra) loaded before any
        # window, not part-way through a case (a short job would wait a second before loading)
        cpu_fused.available()
    rows = []
    cases = []
    for dev in devices:
        for model in models:
            for batch in batch_sizes or DEFAULT_BATCHES[model][dev.kind]:
                cases.append(Case(dev, model, batch))
                row = _measure_case(cases[-1], optimizer, against, repeat)
                rows.append(row)
                if report is not None:
                    report(row)
    # Launches are counted after every timed case: torch's profiler leaves CUPTI attached to
    # the process (Kineto tears it down only on request), which slows every later launch and
    # would tax the many-launch eager steps more than a replayed graph.
    for case, row in zip(cases, rows, strict=True):
        if case.device.kind == "cuda":
            errors: dict[str, str] = {}
            row["launches_per_step"] = _optional("launches per step", errors, count_launches, case, optimizer)
            if errors:
                row.setdefault("errors", {}).update(errors)
    return {
        "optimizer": optimizer,
        "dtype": "float32",
        "matmul_precision": matmul_precision(),
        "results": rows,
        "crossover": crossover(rows),
    }


def _measure_case(case: Case, optimizer: str, against: tuple[str, ...], repeat: int) -> dict[str, Any]:
    sizes = MODELS[case.model]
    step, model = gpunn_step(case, optimizer)
    # The ceiling is timed in the same interleaved windows, so that drift on a shared
    # machine moves it and the steps alike and their ratio stays honest.
    steps: dict[str, Step] = {"gpunn": step, "ceiling": matmul_step(case.device), "products": products_step(case)}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}  # auxiliary GPU measurements that failed: reported, not fatal
    replay = _optional("graph replay", errors, graph_step, case, optimizer)
    if replay is not None:
        steps["graph"] = replay.step
    for name, build in (("numpy", numpy_step), ("torch", torch_step)):
        if name in against:
            other = _optional(f"{name} baseline", errors, build, case, optimizer, model)
            if other is not None:
                steps[name] = other
            elif f"{name} baseline" not in errors:
                skipped[name] = SKIP_REASONS[name]
    sync = synchronizer(case.device)
    with case.device:
        times = time_interleaved(steps, sync, repeat, PAUSE_SECONDS[case.device.kind], errors)
        host_device = _optional("host and device µs", errors, host_and_device_us, case, step)
    failed = None if replay is None else replay.failed
    if failed is not None:  # the capture failed and StepGraph trained eagerly: not a replay figure
        times.pop("graph", None)
        errors["graph replay"] = f"CUDA graph capture failed: {failed}"
    flops = flops_per_step(sizes, case.batch)
    ceiling_flops = 2.0 * ceiling_size(case.device) ** 3
    ceiling_ms = times.pop("ceiling")
    ceiling = ceiling_flops / (float(np.median(ceiling_ms)) / 1e3) / 1e9
    products = times.pop("products")
    products_ms = float(np.median(products))
    row: dict[str, Any] = {
        "device": str(case.device),
        "model": case.model,
        "sizes": list(sizes),
        "batch": case.batch,
        "flops_per_step": flops,
        "matmul_ceiling_gflop_per_s": ceiling,
        # the step's matrix products alone, and the step's time over theirs (1.0: nothing else costs)
        "products_ms_per_step": products_ms,
        "products_share_of_ceiling": paired_ratio(ceiling_ms, products)[0] * flops / ceiling_flops,
        "launches_per_step": None,  # counted by run() once every case is timed (GPU only)
        # GPU: µs per step the host spends queueing the eager step, and the device spends running it
        "host_us_per_step": None if host_device is None else host_device[0],
        "device_us_per_step": None if host_device is None else host_device[1],
    }
    for name, ms in times.items():
        row[name] = summarize(ms, case.batch, flops, ceiling_ms, ceiling_flops)
    row["gpunn"]["over_products"] = paired_ratio(times["gpunn"], products)[0]
    # gpunn_over_X: X's ms over gpunn's in the same round (> 1: gpunn faster), median of the
    # rounds, with the p10–p90 of those per-round ratios beside it
    row["ratio_p10_p90"] = {}
    pairs = [("gpunn", name) for name in times if name != "gpunn"]
    pairs += [("graph", "torch")] if "graph" in times and "torch" in times else []
    for mine, other in pairs:
        median, p10, p90 = paired_ratio(times[other], times[mine])
        row[f"{mine}_over_{other}"] = median
        row["ratio_p10_p90"][f"{mine}_over_{other}"] = [p10, p90]
    del steps, step, model, replay  # the replay holds a second model: not the step's memory
    peak = peak_step_bytes(case, optimizer)
    minimum = minimum_bytes(sizes, case.batch, optimizer)
    row["memory"] = {"peak_bytes": peak, "minimum_bytes": minimum, "ratio": None if peak is None else peak / minimum}
    if skipped:
        row["skipped"] = skipped
    if errors:
        row["errors"] = errors
    return row


def _optional(what: str, errors: dict[str, str], measure: Callable[..., Any], *args: Any) -> Any:
    """``measure(*args)``, or None when it raises: a GPU-only extra (graph replay, launch counting,
    host/device timing) that fails is reported in the row's ``errors`` and warned about, so
    that it does not cost the rest of the run's figures."""
    try:
        return measure(*args)
    except Exception as exc:  # any failure of an extra is reported, none is fatal
        errors[what] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"gpunn bench: {what} failed ({errors[what]}); reported as null", RuntimeWarning, stacklevel=2)
        return None


SKIP_REASONS = {
    "numpy": "the hand-written NumPy loop runs on the CPU with Adam only",
    "torch": "torch is not installed",
}


def crossover(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per model, the smallest measured batch at which a GPU's gpunn beats the CPU's."""
    result: dict[str, int | None] = {}
    for model in sorted({r["model"] for r in rows}):
        cpu = {r["batch"]: r["gpunn"]["samples_per_s"] for r in rows if r["model"] == model and r["device"] == "cpu"}
        gpu = {r["batch"]: r["gpunn"]["samples_per_s"] for r in rows if r["model"] == model and r["device"] != "cpu"}
        common = sorted(set(cpu) & set(gpu))
        if common:
            result[model] = next((b for b in common if gpu[b] > cpu[b]), None)
    return result


def format_row(row: dict[str, Any]) -> str:
    """One line per framework for the terminal table."""
    lines = []
    for name in FRAMEWORKS:
        if name not in row:
            continue
        r = row[name]
        ratio = ""
        if name != "gpunn":
            p10, p90 = row["ratio_p10_p90"][f"gpunn_over_{name}"]
            ratio = f"  gpunn ×{row[f'gpunn_over_{name}']:.2f} ({p10:.2f}–{p90:.2f})"
        lines.append(
            f"{row['device']:<7} {row['model']:<3} {row['batch']:>5} {name:<6} "
            f"{r['ms_per_step']:9.3f} ms ({r['ms_p10']:.3f}–{r['ms_p90']:.3f}) "
            f"{r['samples_per_s']:>12,.0f}/s {r['gflop_per_s']:8.1f} GFLOP/s {100 * r['share_of_ceiling']:5.1f}%{ratio}"
        )
    memory = row["memory"]
    extra = (
        f"  step ×{row['gpunn']['over_products']:.2f} its matrix products"
        f" ({100 * row['products_share_of_ceiling']:.0f}% of ceiling)"
    )
    extra += f"  memory ×{memory['ratio']:.2f} of minimum" if memory["ratio"] is not None else ""
    if row.get("host_us_per_step") is not None:
        extra += f", host {row['host_us_per_step']:.0f} µs / device {row['device_us_per_step']:.0f} µs per step"
    return "\n".join(lines) + extra


HEADER = "device  mdl batch framework  ms/step (p10–p90)          samples/s      GFLOP/s  %ceil"


def plot(result: dict[str, Any], path: str) -> None:
    """Samples/s per case and framework, as a bar chart (matplotlib)."""
    from ..train.plots import require_matplotlib  # noqa: PLC0415

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = result["results"]
    labels = [f"{r['device']}\n{r['model']} b{r['batch']}" for r in rows]
    figure = Figure(figsize=(max(6, 1.2 * len(rows)), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / len(FRAMEWORKS)
    for k, name in enumerate(FRAMEWORKS):
        values = [r[name]["samples_per_s"] if name in r else 0.0 for r in rows]
        if any(values):
            axes.bar([i + k * width for i in range(len(rows))], values, width, label=name)
    axes.set_xticks([i + width for i in range(len(rows))], labels, fontsize=7)
    axes.set(ylabel="samples/s", yscale="log", title=f"training-step throughput ({result['optimizer']}, float32)")
    axes.legend()
    figure.savefig(path, dpi=100)


def torch_version() -> str | None:
    """The installed torch's version (the baseline), or None."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return str(torch.__version__)
