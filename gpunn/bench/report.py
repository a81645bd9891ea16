"""What ``gpunn bench`` prints: the plan up front, a progress line, the table and the plot."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import numpy as np

from ..backend.device import Device
from .run import Workload, memory_estimate
from .steps import MODELS

# what each timed step is, as the table labels it
FRAMEWORKS = {
    "gpunn": "gpunn, Trainer.fit",
    "user_loop": "gpunn, your own loop",  # the README's step-by-step loop (CPU, SGD or Adam)
    "graph": "gpunn, CUDA graph",  # Trainer(graph=True): the step replayed (GPU only)
    "reference": "gpunn, reference Ops",  # the same step on NumpyOps: what the accelerated Ops gain
    "numpy": "NumPy loop by hand",
    "torch": "PyTorch eager",
}
INDENT = " " * 22


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plan(devices: list[Device], work: Workload, optimizer: str, against: tuple[str, ...]) -> str:
    """Said before anything is measured: the cases, the windows, the memory they may take, and
    (for the quick sample) how to run the full suite."""
    cases = work.cases(devices)
    per_device = []
    for dev in devices:
        models = [f"{m} at {_and([str(b) for b in per_kind[dev.kind]])}" for m, per_kind in work.batches.items()]
        per_device.append(f"{dev}: {'; '.join(models)}")
    largest = max(cases, key=lambda c: memory_estimate(c, optimizer, against))
    gib = memory_estimate(largest, optimizer, against) / 2**30
    lines = [
        f"gpunn bench: {len(cases)} case(s), {work.repeat} timed windows each"
        + (", about a minute on a laptop CPU" if work.quick else ""),
        f"  {' | '.join(per_device)} (batch sizes)",
        f"  memory: up to about {gib:.1f} GiB for models and data ({largest.device} {largest.model} at batch "
        f"{largest.batch}), besides the libraries' own",
    ]
    if work.quick:
        lines.append("  the full suite, every model (W1 too) and batch size, 10 windows: gpunn bench --full (minutes)")
    return "\n".join(lines)


class Progress:
    """One line on a terminal, rewritten before each case and cleared before its row prints;
    nothing where ``stream`` is not a terminal (a log, a pipe)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.active = stream.isatty()

    def __call__(self, k: int, total: int, case: Any) -> None:
        if self.active:
            self.stream.write(
                f"\r\033[K  measuring case {k} of {total}: {case.device} {case.model} at batch {case.batch} ..."
            )
            self.stream.flush()

    def clear(self) -> None:
        if self.active:
            self.stream.write("\r\033[K")
            self.stream.flush()


def header(optimizer: str) -> str:
    """What the table's rows and columns mean, then the column titles."""
    models = ", ".join(f"{name} = {'-'.join(map(str, sizes))}" for name, sizes in MODELS.items())
    return "\n".join(
        [
            f"One training step (forward, softmax-with-loss, backward, {optimizer} update) per row, float32;",
            f"models by layer sizes: {models}.",
            "  ms/step (p10–p90)   median milliseconds per step; the fastest and the slowest tenth of the windows",
            "  samples/s           training samples per second (batch size ÷ time per step)",
            "  GFLOP/s, % of peak  the step's arithmetic rate, and that over a large matrix product's on the device",
            "  gpunn ×faster       Trainer.fit's step speed over that row's, paired window by window (< 1: slower)",
            f"device  model batch  {'step':<21} {'ms/step (p10–p90)':<30} {'samples/s':>10} {'GFLOP/s':>8} "
            f"{'% of peak':>9}  gpunn ×faster (p10–p90)",
        ]
    )


def format_row(row: dict[str, Any]) -> str:
    """One line per timed step for the terminal table, then what else was found about the case."""
    lines = []
    for name, label in FRAMEWORKS.items():
        if name not in row:
            continue
        r = row[name]
        spread = f"({r['ms_p10']:.3f}–{r['ms_p90']:.3f})"
        line = (
            f"{row['device']:<7} {row['model']:<5} {row['batch']:>5}  {label:<21} "
            f"{r['ms_per_step']:8.3f} {spread:<21} {r['samples_per_s']:>10,.0f} "
            f"{r['gflop_per_s']:8.1f} {100 * r['share_of_ceiling']:8.1f}%"
        )
        if f"gpunn_over_{name}" in row:
            p10, p90 = row["ratio_p10_p90"][f"gpunn_over_{name}"]
            line += f"  {row[f'gpunn_over_{name}']:13.2f} ({p10:.2f}–{p90:.2f})"
        lines.append(line)
    if "user_loop_over_numpy" in row:
        p10, p90 = row["ratio_p10_p90"]["user_loop_over_numpy"]
        lines.append(
            f"{INDENT}your own loop: {row['user_loop_over_numpy']:.2f}× the NumPy loop's speed ({p10:.2f}–{p90:.2f})"
        )
    extra = (
        f"{INDENT}Trainer.fit's step: {row['gpunn']['over_products']:.2f}× the time of its matrix products alone"
        f" (they reach {100 * row['products_share_of_ceiling']:.0f}% of peak)"
    )
    memory = row["memory"]
    extra += f"; peak memory {memory['ratio']:.2f}× the least a step needs" if memory["ratio"] is not None else ""
    if row.get("host_us_per_step") is not None:
        extra += (
            f"\n{INDENT}GPU: the host queues a step in {row['host_us_per_step']:.0f} µs, the GPU runs it in "
            f"{row['device_us_per_step']:.0f} µs (host slower: launch-bound)"
        )
    return "\n".join([*lines, extra])


def plot(result: dict[str, Any], path: str) -> None:
    """Samples/s per case and timed step as a bar chart (matplotlib), the p10–p90 spread of the
    windows as error bars."""
    from ..train.plots import require_matplotlib  # noqa: PLC0415

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = result["results"]
    figure = Figure(figsize=(max(6, 1.2 * len(rows)), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / len(FRAMEWORKS)
    for k, (name, label) in enumerate(FRAMEWORKS.items()):
        where = [i for i, r in enumerate(rows) if name in r]
        if where:
            figures = [rows[i][name] for i in where]
            rate = np.array([f["samples_per_s"] for f in figures])  # host: the JSON's floats
            # samples/s of the slowest (p90) and the fastest (p10) tenth of the windows
            low = rate * np.array([f["ms_per_step"] / f["ms_p90"] for f in figures])  # host: the JSON's floats
            high = rate * np.array([f["ms_per_step"] / f["ms_p10"] for f in figures])  # host: the JSON's floats
            x = [i + k * width for i in where]
            axes.bar(x, rate, width, yerr=[rate - low, high - rate], capsize=2, label=label)
    labels = [f"{r['device']}\n{r['model']} b{r['batch']}" for r in rows]
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, fontsize=7)
    axes.set(ylabel="samples/s (bars: p10–p90 of the windows)", yscale="log")
    axes.set_title(f"training-step throughput ({result['optimizer']}, float32)")
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=100)
