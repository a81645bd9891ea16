"""``gpunn bench``: what a run measures (:func:`workload`), and :func:`run`, which times each
case and puts its row together. The steps take turns window by window and every ratio is paired
round by round (:mod:`gpunn.bench.timing`), so that a load that comes and goes moves both sides alike.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend.device import Device, matmul_precision
from ..backend.selection import ops_for
from ..optim import OPTIMIZERS
from ..validation import check_choice
from .costs import count_launches, flops_per_step, minimum_bytes, peak_step_bytes
from .steps import (
    MODELS,
    Case,
    Step,
    blas_threads,
    gpunn_step,
    graph_step,
    handwritten_runs,
    numpy_step,
    reference_step,
    torch_step,
    user_loop_step,
)
from .timing import ceiling_size, host_and_device_us, matmul_step, paired_ratio, products_step, time_interleaved

# what the command line uses (blas_threads is re-exported for it)
__all__ = ["Workload", "blas_threads", "memory_estimate", "run", "torch_version", "workload"]

# The full suite (`gpunn bench --full`): every model at the batches that tell its story, 10 windows.
DEFAULT_BATCHES: dict[str, dict[str, tuple[int, ...]]] = {
    "T1": {"cpu": (32, 128, 1024), "cuda": (32, 128, 1024)},
    "T2": {"cpu": (128, 1024), "cuda": (128, 1024)},
    "W1": {"cpu": (512,), "cuda": (4096,)},
}
FULL_REPEAT = 10
# `gpunn bench` alone: about a minute on a laptop CPU (W1 alone takes minutes and GBs there)
QUICK_BATCHES: dict[str, dict[str, tuple[int, ...]]] = {
    "T1": {"cpu": (128, 1024), "cuda": (128, 1024)},
    "T2": {"cpu": (128,), "cuda": (128,)},
}
QUICK_REPEAT = 5
SKIP_REASONS = {
    "numpy": "the hand-written NumPy loop runs on the CPU with SGD or Adam only",
    "torch": "torch is not installed",
    "reference": "gpunn computes with the reference Ops here (GPUNN_OPS=reference, or no accelerated Ops)",
}
BASELINES = tuple(SKIP_REASONS)  # what --against may name


@dataclass(frozen=True)
class Workload:
    """What a ``gpunn bench`` run measures: ``batches[model][device kind]``, ``repeat`` windows per
    step; ``quick`` for the one-minute sample that ``gpunn bench`` without arguments runs."""

    batches: dict[str, dict[str, tuple[int, ...]]]
    repeat: int
    quick: bool

    def cases(self, devices: list[Device]) -> list[Case]:
        return [Case(d, m, b) for d in devices for m, per_kind in self.batches.items() for b in per_kind[d.kind]]


def workload(
    models: list[str] | None = None, batch_sizes: list[int] | None = None, repeat: int | None = None, full: bool = False
) -> Workload:
    """The quick sample when nothing is named (no models, batch sizes, repeat, nor ``full``);
    otherwise what is named, the full suite's defaults for the rest (every model, its batches, 10
    windows), so that a run that names its models keeps the meaning it always had."""
    quick = not full and models is None and batch_sizes is None and repeat is None
    defaults = QUICK_BATCHES if quick else DEFAULT_BATCHES
    for model in models or ():
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    chosen = {m: defaults[m] for m in models or defaults}
    if batch_sizes:
        chosen = {m: dict.fromkeys(("cpu", "cuda"), tuple(batch_sizes)) for m in chosen}
    return Workload(chosen, repeat or (QUICK_REPEAT if quick else FULL_REPEAT), quick)


def memory_estimate(case: Case, optimizer: str, against: tuple[str, ...]) -> int:
    """Bytes a case holds at its peak, roughly and from above: :func:`~gpunn.bench.costs.minimum_bytes`
    per copy of the model built (gpunn's step, its products alone, graph replay's on a GPU, each
    baseline that runs), plus the ceiling's three n×n matrices. Host memory on the CPU, GPU memory on a GPU."""
    copies = 3 if case.device.kind == "cuda" else 2
    if "numpy" in against and handwritten_runs(case, optimizer):
        copies += 2  # the user's own loop and the hand-written loop
    if "torch" in against and importlib.util.find_spec("torch") is not None:
        copies += 1
    if "reference" in against:
        copies += 1
    n = ceiling_size(case.device)
    return copies * minimum_bytes(MODELS[case.model], case.batch, optimizer) + 3 * 4 * n * n


def run(
    devices: list[Device],
    work: Workload,
    optimizer: str = "adam",
    against: tuple[str, ...] = ("numpy", "torch"),
    report: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int, Case], None] | None = None,
) -> dict[str, Any]:
    """Measure every case of ``work`` on ``devices``; returns the JSON-ready result.
    ``progress(k, total, case)`` is called before case k (from 1) is measured, ``report(row)`` after."""
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    cases = work.cases(devices)
    rows = []
    for k, case in enumerate(cases, 1):
        if progress is not None:
            progress(k, len(cases), case)
        rows.append(_measure_case(case, optimizer, against, work.repeat))
        if report is not None:
            report(rows[-1])
    # Launches are counted after every timed case: torch's profiler leaves CUPTI attached to the
    # process, which slows every later launch, the many-launch eager steps more than a graph's.
    for case, row in zip(cases, rows, strict=True):
        if case.device.kind == "cuda":
            errors: dict[str, str] = {}
            row["launches_per_step"] = _optional("launches per step", errors, count_launches, case, optimizer)
            if errors:
                row.setdefault("errors", {}).update(errors)
    result = {"optimizer": optimizer, "dtype": "float32", "matmul_precision": matmul_precision()}
    return {**result, "results": rows, "crossover": crossover(rows)}


def _measure_case(case: Case, optimizer: str, against: tuple[str, ...], repeat: int) -> dict[str, Any]:
    sizes = MODELS[case.model]
    step, model = gpunn_step(case, optimizer)
    # the ceiling is timed in the same windows, so that drift on a shared machine moves it and the steps alike
    ceiling, ceiling_flops = matmul_step(case.device)
    steps: dict[str, Step] = {"gpunn": step, "ceiling": ceiling, "products": products_step(case)}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}  # auxiliary measurements that failed: reported, not fatal
    replay = _optional("graph replay", errors, graph_step, case, optimizer)
    if replay is not None:
        steps["graph"] = replay.step
    # a user's own loop is measured where the hand-written loop it is compared with runs
    loop = _optional("user loop", errors, user_loop_step, case, optimizer) if "numpy" in against else None
    if loop is not None:
        steps["user_loop"] = loop
    for name, build in (("numpy", numpy_step), ("torch", torch_step), ("reference", reference_step)):
        if name in against:
            arguments = (case, optimizer) if name == "reference" else (case, optimizer, model)
            other = _optional(f"{name} baseline", errors, build, *arguments)
            if other is not None:
                steps[name] = other
            elif f"{name} baseline" not in errors:
                skipped[name] = SKIP_REASONS[name]
    with case.device:
        times = time_interleaved(steps, case.device, repeat, errors)
        host_device = _optional("host and device µs", errors, host_and_device_us, case, step) or (None, None)
    if replay is not None and replay.failed is not None:  # StepGraph trained eagerly: no replay figure
        times.pop("graph", None)
        errors["graph replay"] = f"CUDA graph capture failed: {replay.failed}"
    flops = flops_per_step(sizes, case.batch)
    ceiling_ms, products = times.pop("ceiling"), times.pop("products")
    row: dict[str, Any] = {
        "device": str(case.device),
        "ops": type(ops_for(case.device)).__name__,  # the primitives gpunn's layers and optimizer ran
        "model": case.model,
        "sizes": list(sizes),
        "batch": case.batch,
        "flops_per_step": flops,
        "matmul_ceiling_gflop_per_s": ceiling_flops / float(np.median(ceiling_ms)) / 1e6,
        # the step's matrix products alone, and the step's time over theirs (1.0: nothing else costs)
        "products_ms_per_step": float(np.median(products)),
        "products_share_of_ceiling": paired_ratio(ceiling_ms, products)[0] * flops / ceiling_flops,
        "launches_per_step": None,  # counted by run() once every case is timed (GPU only)
        # GPU: µs per step the host spends queueing the eager step, and the device spends running it
        "host_us_per_step": host_device[0],
        "device_us_per_step": host_device[1],
    }
    for name, ms in times.items():
        median = float(np.median(ms))
        row[name] = {
            "ms_per_step": median,
            "ms_p10": float(np.percentile(ms, 10)),
            "ms_p90": float(np.percentile(ms, 90)),
            "samples_per_s": case.batch / median * 1e3,
            "gflop_per_s": flops / median / 1e6,
            # the step's GFLOP/s over the ceiling's, paired window by window
            "share_of_ceiling": paired_ratio(ceiling_ms, ms)[0] * flops / ceiling_flops,
            "windows": len(ms),
        }
    row["gpunn"]["over_products"] = paired_ratio(times["gpunn"], products)[0]
    # A_over_B: B's ms over A's in the same round (> 1: A faster), median and p10–p90 of the rounds
    row["ratio_p10_p90"] = {}
    pairs = [("gpunn", name) for name in times if name != "gpunn"]
    # graph replay against torch and against the eager step it replays; a user's loop against the NumPy loop
    more = (("graph", "torch"), ("graph", "gpunn"), ("user_loop", "numpy"))
    pairs += [(a, b) for a, b in more if a in times and b in times]
    for mine, other in pairs:
        median, p10, p90 = paired_ratio(times[other], times[mine])
        row[f"{mine}_over_{other}"] = median
        row["ratio_p10_p90"][f"{mine}_over_{other}"] = [p10, p90]
    del steps, step, model, replay, loop, ceiling  # freed before the memory probe builds its own step
    peak, minimum = peak_step_bytes(case, optimizer), minimum_bytes(sizes, case.batch, optimizer)
    row["memory"] = {"peak_bytes": peak, "minimum_bytes": minimum, "ratio": None if peak is None else peak / minimum}
    if skipped:
        row["skipped"] = skipped
    if errors:
        row["errors"] = errors
    return row


def _optional(what: str, errors: dict[str, str], measure: Callable[..., Any], *args: Any) -> Any:
    """``measure(*args)``, or None when it raises: an extra that fails (a baseline, graph replay,
    launch counting) is reported in ``errors`` and warned about; the other figures stand."""
    try:
        return measure(*args)
    except Exception as exc:  # any failure of an extra is reported, none is fatal
        errors[what] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"gpunn bench: {what} failed ({errors[what]}); reported as null", RuntimeWarning, stacklevel=2)
        return None


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


def torch_version() -> str | None:
    """The installed torch's version (the baseline), or None."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return str(torch.__version__)
