"""`gpunn bench` runs and reports sane numbers (no timing assertions: speed is not tested)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn.bench import report as table
from gpunn.bench import run as bench
from gpunn.bench import timing
from gpunn.cli.main import build_parser, main


def test_flops_of_a_step_are_exact() -> None:
    # forward 2·N·in·out per layer, backward 4·N·in·out, minus the first layer's dX.
    n = 7
    expected = 2 * n * (784 * 100 + 100 * 10) + 4 * n * (784 * 100 + 100 * 10) - 2 * n * 784 * 100
    assert bench.flops_per_step((784, 100, 10), n) == expected


def test_minimum_memory_counts_parameters_state_activations_and_batch() -> None:
    params = 3 * 4 + 4 + 4 * 2 + 2
    # Adam: data + grad + 2 state buffers; activations N·(4 + 2); batch N·3 floats + N int64 labels
    assert bench.minimum_bytes((3, 4, 2), 5, "adam") == 4 * (params * 4 + 5 * 6 + 5 * 3) + 8 * 5
    assert bench.minimum_bytes((3, 4, 2), 5, "sgd") == 4 * (params * 2 + 5 * 6 + 5 * 3) + 8 * 5


def test_crossover_is_the_smallest_batch_where_the_gpu_wins() -> None:
    def row(device: str, batch: int, rate: float) -> dict:
        return {"model": "T1", "device": device, "batch": batch, "gpunn": {"samples_per_s": rate}}

    rows = [row("cpu", 32, 100), row("cpu", 128, 200), row("cpu", 1024, 300)]
    rows += [row("cuda:0", 32, 50), row("cuda:0", 128, 250), row("cuda:0", 1024, 3000)]
    assert bench.crossover(rows) == {"T1": 128}
    assert bench.crossover(rows[:3]) == {}  # no GPU measured: no crossover to report
    assert bench.crossover([*rows[:3], row("cuda:0", 32, 1)]) == {"T1": None}  # the GPU never wins


def _positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_command_writes_sane_json_and_a_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpunn",
            "bench",
            "--devices",
            "cpu",
            "--models",
            "T1",
            "--batch-sizes",
            "8",
            "--repeat",
            "3",
            "--against",
            "numpy",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # every step is labelled, every column titled, and both ratios against the hand-written loop printed
    lines = result.stdout.splitlines()
    (title,) = [line for line in lines if line.startswith("device ")]
    columns = (
        "device",
        "model",
        "batch",
        "step",
        "ms/step (p10–p90)",
        "samples/s",
        "GFLOP/s",
        "% of peak",
        "gpunn ×faster",
    )
    assert title.split() == [*" ".join(columns).split(), "(p10–p90)"]
    for label in ("gpunn, Trainer.fit", "gpunn, your own loop", "NumPy loop by hand"):
        assert any(line.startswith(f"cpu     T1        8  {label}") for line in lines), label
    by_hand = next(line for line in lines if "NumPy loop by hand" in line)
    assert by_hand.split()[-2] == f"{report['results'][0]['gpunn_over_numpy']:.2f}"
    assert any(line.strip().startswith("your own loop: ") and "× the NumPy loop's speed" in line for line in lines)
    assert any(line.strip().startswith("Trainer.fit's step: ") for line in lines)
    assert "gpunn bench --full" not in result.stdout  # the workload was named: no quick sample to explain
    assert "1 case(s), 3 timed windows each" in result.stderr and "memory: up to about" in result.stderr
    assert report["optimizer"] == "adam" and report["environment"]["numpy"]
    (row,) = report["results"]
    assert (row["device"], row["model"], row["batch"]) == ("cpu", "T1", 8)
    assert row["ops"] in ("NumpyOps", "NumbaOps")
    assert row["flops_per_step"] == bench.flops_per_step((784, 100, 10), 8)
    assert _positive_finite(row["matmul_ceiling_gflop_per_s"])
    assert _positive_finite(row["products_ms_per_step"]) and _positive_finite(row["products_share_of_ceiling"])
    assert _positive_finite(row["gpunn"]["over_products"])
    for framework in ("gpunn", "user_loop", "numpy"):
        figures = row[framework]
        for key in ("ms_per_step", "ms_p10", "ms_p90", "samples_per_s", "gflop_per_s", "share_of_ceiling"):
            assert _positive_finite(figures[key]), (framework, key, figures[key])
        assert figures["ms_p10"] <= figures["ms_per_step"] <= figures["ms_p90"]
        assert figures["windows"] == 3
    for ratio in ("gpunn_over_numpy", "user_loop_over_numpy"):
        p10, p90 = row["ratio_p10_p90"][ratio]
        assert 0 < p10 <= row[ratio] <= p90, ratio
    assert _positive_finite(row["memory"]["peak_bytes"]) and row["memory"]["ratio"] >= 1.0
    assert row["launches_per_step"] is None  # launches are counted on a GPU only
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_user_loop_and_the_hand_written_loop_train_alike(optimizer: str) -> None:
    # The ratio compares like with like: from the same weights and batch, the README's loop
    # and the hand-written NumPy loop give the same losses step after step.
    case = bench.Case(gn.Device("cpu"), "T1", 16)
    _, model = bench.gpunn_step(case, optimizer)
    user_loop, by_hand = bench.user_loop_step(case, optimizer), bench.numpy_step(case, optimizer, model)
    ours, theirs = [float(user_loop()) for _ in range(4)], [by_hand() for _ in range(4)]
    assert ours[-1] < ours[0]  # it trains
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # float32 rounding, differently ordered


def test_no_user_loop_or_hand_written_loop_where_the_baseline_does_not_run() -> None:
    case = bench.Case(gn.Device("cpu"), "T1", 4)
    _, model = bench.gpunn_step(case, "momentum")
    assert bench.user_loop_step(case, "momentum") is None and bench.numpy_step(case, "momentum", model) is None
    result = bench.run([gn.Device("cpu")], bench.workload(["T1"], [4], 3), optimizer="momentum", against=("numpy",))
    (row,) = result["results"]
    assert "user_loop" not in row and "numpy" not in row
    assert row["skipped"] == {"numpy": bench.SKIP_REASONS["numpy"]}


def test_the_reference_row_is_the_same_step_on_the_reference_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """--against reference times gpunn's step computed by NumpyOps beside the accelerated Ops' (the
    same numbers: NumbaOps keeps the reference's bits), and is skipped, with why, where gpunn
    computes with the reference anyway."""
    pytest.importorskip("numba")
    from gpunn.backend.numba_ops import NumbaOps  # noqa: PLC0415

    monkeypatch.delenv("GPUNN_OPS", raising=False)
    accelerated: list[int] = []
    real = NumbaOps.adam_update
    monkeypatch.setattr(NumbaOps, "adam_update", lambda self, *a, **k: accelerated.append(1) or real(self, *a, **k))
    case = bench.Case(gn.Device("cpu"), "T1", 16)
    fast, _ = bench.gpunn_step(case, "adam")
    reference = bench.reference_step(case, "adam")
    ours = [float(fast()) for _ in range(3)]
    assert len(accelerated) == 3
    assert [float(reference()) for _ in range(3)] == ours and len(accelerated) == 3
    result = bench.run([gn.Device("cpu")], bench.workload(["T1"], [4], 3), against=("reference",))
    (row,) = result["results"]
    assert row["ops"] == "NumbaOps" and row["reference"]["windows"] == 3 and row["gpunn_over_reference"] > 0
    assert "gpunn, reference Ops" in table.format_row(row)
    monkeypatch.setenv("GPUNN_OPS", "reference")
    assert bench.reference_step(case, "adam") is None
    (row,) = bench.run([gn.Device("cpu")], bench.workload(["T1"], [4], 3), against=("reference",))["results"]
    assert "reference" not in row and row["skipped"] == {"reference": bench.SKIP_REASONS["reference"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "T9"], "unknown model 'T9'"),
        (["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["--repeat", "1"], "--repeat must be at least 3"),
        (["--against", "jax"], "--against takes numpy, torch, reference or none"),
        (["--devices", "tpu"], "device must be"),
    ],
)
def test_bench_rejects_bad_flags_in_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpunn", "bench", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_paired_ratio_cancels_drift_that_medians_do_not() -> None:
    # The machine's load rises round after round (1x .. 5x); gpunn runs 1.25x faster than the
    # NumPy loop in every round except the middle one, where its window caught a 10 % hiccup.
    # The unpaired medians land on that very window; the paired ratio does not.
    load = [1.0, 2.0, 3.0, 4.0, 5.0]
    gpunn_ms = [x * (1.1 if k == 2 else 1.0) for k, x in enumerate(load)]
    numpy_ms = [1.25 * x for x in load]
    median, p10, p90 = bench.paired_ratio(numpy_ms, gpunn_ms)
    unpaired = float(np.median(numpy_ms)) / float(np.median(gpunn_ms))
    assert math.isclose(unpaired, 3.75 / 3.3)  # 1.14x: the hiccup taken for the typical round
    assert math.isclose(median, 1.25) and math.isclose(p90, 1.25)
    assert p10 < 1.25  # the hiccup shows in the spread


def test_device_time_is_taken_behind_a_spin_so_launch_gaps_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in GPU that logs what happens in order: the device's time must be bracketed by
    # events recorded after a spin long enough to cover the host queueing the same steps.
    log: list[tuple[str, float]] = []

    class Event:
        def record(self) -> None:
            log.append(("record", 0.0))

        def synchronize(self) -> None:
            log.append(("event sync", 0.0))

    cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: 7.0)  # ms
    device = types.SimpleNamespace(kind="cuda", xp=types.SimpleNamespace(cuda=cuda))
    device.synchronize = lambda: log.append(("sync", 0.0))
    monkeypatch.setattr(timing.raw_kernels, "spin", lambda xp, seconds: log.append(("spin", seconds)))

    def step() -> None:
        time.sleep(0.001)
        log.append(("step", 0.0))

    host_us, device_us = timing.host_and_device_us(types.SimpleNamespace(device=device), step, steps=5)
    events = [name for name, _ in log]
    assert events == ["step", "sync", *["step"] * 5, "sync", "spin", "record", *["step"] * 5, "record", "event sync"]
    assert host_us >= 1000  # each step sleeps 1 ms on the host
    (spun,) = [seconds for name, seconds in log if name == "spin"]
    assert spun >= 2 * 5 * host_us / 1e6  # the spin outlasts twice the host's queueing of the 5 steps
    assert device_us == pytest.approx(7.0 * 1e3 / 5)  # the events' ms over the steps, in µs
    assert timing.host_and_device_us(types.SimpleNamespace(device=types.SimpleNamespace(kind="cpu")), step) is None


def test_a_failing_gpu_extra_is_reported_and_costs_no_other_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first run on a real GPU must not lose the table to an auxiliary measurement: a graph
    # whose capture failed (StepGraph then trains eagerly) and a launch counter that raises are
    # both reported in the row's errors, and the failed "replay" is not timed as one.
    class FailedReplay:
        failed = "CUDARuntimeError: capture refused on purpose"

        def step(self) -> None:
            pass

    monkeypatch.setattr(bench, "graph_step", lambda case, optimizer: FailedReplay())

    def broken_timer(case: object, step: object) -> None:
        raise RuntimeError("no events here")

    monkeypatch.setattr(bench, "host_and_device_us", broken_timer)
    with pytest.warns(RuntimeWarning, match="host and device µs failed"):
        result = bench.run([gn.Device("cpu")], bench.workload(["T1"], [4], 3), against=())
    (row,) = result["results"]
    assert "graph" not in row and "gpunn_over_graph" not in row
    assert row["errors"] == {
        "host and device µs": "RuntimeError: no events here",
        "graph replay": "CUDA graph capture failed: CUDARuntimeError: capture refused on purpose",
    }
    assert row["host_us_per_step"] is None and _positive_finite(row["gpunn"]["samples_per_s"])


def test_launches_are_counted_after_every_case_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's profiler leaves CUPTI attached to the process and slows later launches, so no
    # case may be timed after one was profiled; a counter that fails is an error, not a crash
    order: list[str] = []
    gpu = types.SimpleNamespace(kind="cuda")

    def measure(case: bench.Case, optimizer: str, against: tuple, repeat: int) -> dict:
        order.append(f"time {case.device.kind} {case.batch}")
        figures = {"samples_per_s": 1.0}
        return {
            "device": case.device.kind,
            "model": case.model,
            "batch": case.batch,
            "gpunn": figures,
            "launches_per_step": None,
        }

    def count(case: bench.Case, optimizer: str) -> float:
        order.append(f"count {case.device.kind} {case.batch}")
        if case.batch == 64:
            raise RuntimeError("CUPTI is busy")
        return 10.0

    monkeypatch.setattr(bench, "_measure_case", measure)
    monkeypatch.setattr(bench, "count_launches", count)
    with pytest.warns(RuntimeWarning, match="CUPTI is busy"):
        result = bench.run([gn.Device("cpu"), gpu], bench.workload(["T1"], [32, 64], 3), against=())
    assert order == ["time cpu 32", "time cpu 64", "time cuda 32", "time cuda 64", "count cuda 32", "count cuda 64"]
    rows = result["results"]
    assert [r["launches_per_step"] for r in rows] == [None, None, 10.0, None]
    assert "errors" not in rows[2] and rows[3]["errors"] == {"launches per step": "RuntimeError: CUPTI is busy"}


def test_a_baseline_that_fails_is_left_out_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. PyTorch out of memory at W1's batch on a GPU: gpunn's figures must survive it
    def failing_baseline(case: object, optimizer: str, model: object):
        def step() -> None:
            raise MemoryError("the baseline ran out of memory on purpose")

        return step

    monkeypatch.setattr(bench, "numpy_step", failing_baseline)
    with pytest.warns(RuntimeWarning, match="the numpy step failed"):
        result = bench.run([gn.Device("cpu")], bench.workload(["T1"], [4], 3), against=("numpy",))
    (row,) = result["results"]
    assert "numpy" not in row and "gpunn_over_numpy" not in row
    assert row["errors"] == {"numpy step": "MemoryError: the baseline ran out of memory on purpose"}
    assert _positive_finite(row["gpunn"]["samples_per_s"])


def test_gpunn_failing_is_never_hidden() -> None:
    def broken() -> None:
        raise ValueError("gpunn itself broke")

    with pytest.raises(ValueError, match="gpunn itself broke"):
        bench.time_interleaved({"gpunn": broken}, gn.Device("cpu"), windows=3, errors={})


# ----------------------------------------------------------------------------- what a run measures


def test_bench_alone_is_a_quick_sample_and_full_is_the_whole_suite() -> None:
    quick = bench.workload()
    assert quick.quick and quick.repeat == 5
    assert quick.batches == {"T1": {"cpu": (128, 1024), "cuda": (128, 1024)}, "T2": {"cpu": (128,), "cuda": (128,)}}
    full = bench.workload(full=True)
    assert not full.quick and full.repeat == 10 and full.batches == bench.DEFAULT_BATCHES
    assert list(full.batches) == ["T1", "T2", "W1"]
    cpu = gn.Device("cpu")
    assert len(quick.cases([cpu])) == 3 and len(full.cases([cpu])) == 6


@pytest.mark.parametrize(
    ("args", "batches", "repeat"),
    [
        # ci/gpu-check's CPU run and GPU runs: named models, the full suite's batches
        (
            ["--models", "T1,T2", "--repeat", "5"],
            {"T1": bench.DEFAULT_BATCHES["T1"], "T2": bench.DEFAULT_BATCHES["T2"]},
            5,
        ),
        (["--models", "W1", "--repeat", "10", "--tf32"], {"W1": bench.DEFAULT_BATCHES["W1"]}, 10),
        (["--batch-sizes", "8"], {m: {"cpu": (8,), "cuda": (8,)} for m in ("T1", "T2", "W1")}, 10),
        (["--repeat", "3"], bench.DEFAULT_BATCHES, 3),
    ],
)
def test_naming_the_workload_keeps_the_full_suites_defaults_for_the_rest(
    args: list[str], batches: dict, repeat: int
) -> None:
    parsed = build_parser().parse_args(["bench", *args])
    work = bench.workload(parsed.models, parsed.batch_sizes, parsed.repeat, parsed.full)
    assert (work.batches, work.repeat, work.quick) == (batches, repeat, False)


def _fake_run(monkeypatch: pytest.MonkeyPatch) -> list:
    """bench.run recorded instead of measured: [(devices, workload)] per call."""
    calls: list = []

    def run(
        devices: list, work: bench.Workload, optimizer: str, against: tuple, report: object, progress: object
    ) -> dict:
        calls.append((devices, work))
        return {"optimizer": optimizer, "results": [], "crossover": {}}

    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "torch_version", lambda: None)
    return calls


def test_bench_says_up_front_what_it_will_run_and_how_to_run_the_full_suite(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _fake_run(monkeypatch)
    assert main(["bench", "--devices", "cpu"]) == 0
    ((_, work),) = calls
    assert work.quick
    out, err = capsys.readouterr()
    plan = err.splitlines()
    assert plan[0] == "gpunn bench: 3 case(s), 5 timed windows each, about a minute on a laptop CPU"
    assert plan[1] == "  cpu: T1 at 128 and 1024; T2 at 128 (batch sizes)"
    assert plan[2].startswith("  memory: up to about 0.") and "GiB for models and data (cpu T2 at batch 128)" in plan[2]
    assert "gpunn bench --full" in plan[3]
    for column in ("ms/step (p10–p90)", "samples/s", "GFLOP/s, % of peak", "gpunn ×faster"):
        assert any(line.startswith(f"  {column} ") for line in out.splitlines()), column
    assert out.splitlines()[-1].endswith("gpunn bench --full")


def test_bench_json_to_stdout_stays_clean(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_run(monkeypatch)
    assert main(["bench", "--devices", "cpu", "--full", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["results"] == []  # stdout is the JSON and nothing else
    assert err.startswith("gpunn bench: 6 case(s), 10 timed windows each\n")
    assert "cpu W1 at batch 512" in err and "--full" not in err.split("\n", 1)[1]


def test_the_full_suite_names_its_memory_before_it_starts() -> None:
    # W1 on the CPU: 25 M parameters held by gpunn's step, its products, your loop and the NumPy loop
    w1 = bench.Case(gn.Device("cpu"), "W1", 512)
    expected = 4 * bench.minimum_bytes(bench.MODELS["W1"], 512, "adam") + 3 * 4 * 2048**2
    assert bench.memory_estimate(w1, "adam", ("numpy",)) == expected
    assert expected > 1.5 * 2**30
    assert bench.memory_estimate(w1, "momentum", ("numpy",)) < expected  # no hand-written loop for momentum
    plan = table.plan([gn.Device("cpu")], bench.workload(full=True), "adam", ("numpy",))
    assert f"memory: up to about {expected / 2**30:.1f} GiB for models and data (cpu W1 at batch 512)" in plan


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_on_a_terminal_and_nothing_in_a_log() -> None:
    case = bench.Case(gn.Device("cpu"), "T2", 128)
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = table.Progress(stream)
        progress(2, 3, case)
        progress.clear()
    assert terminal.getvalue() == "\r\x1b[K  measuring case 2 of 3: cpu T2 at batch 128 ...\r\x1b[K"
    assert log.getvalue() == ""


def test_plot_draws_the_p10_p90_spread_as_error_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes  # noqa: PLC0415 — an optional extra

    bars: list = []
    original = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, w, **kw: bars.append(kw) or original(self, x, h, w, **kw))
    figures = {"samples_per_s": 1000.0, "ms_per_step": 1.0, "ms_p10": 0.8, "ms_p90": 1.25}
    row = {"device": "cpu", "model": "T1", "batch": 1, "gpunn": figures}
    table.plot({"optimizer": "adam", "results": [row]}, str(tmp_path / "bench.png"))
    ((low,), (high,)) = bars[0]["yerr"]
    assert (low, high) == pytest.approx((200.0, 250.0))  # 1000 samples/s at p90 (800) and at p10 (1250)
