"""ci/summarize_gpu_check.py: the GPU targets are judged from the bench figures it merges."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gpunn.bench.run import crossover

SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "summarize_gpu_check.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("summarize_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(model: str, batch: int, **figures) -> dict:
    cpu = {"device": "cpu", "model": model, "batch": batch, "gpunn_over_torch": 99.0}
    return {"results": [cpu, {"device": "cuda:0", "model": model, "batch": batch, **figures}]}


def test_targets_read_the_gpu_rows_and_judge_each_bound(summarize):
    summary = {
        "bench": _bench("T1", 128, gpunn_over_torch=1.7, graph_over_torch=2.5, launches_per_step=10),
        "bench_w1": _bench("W1", 4096, gpunn_over_torch=0.97, gpunn={"over_products": 1.08}),
        "bench_tf32": {"missing": "bench-tf32.json: no such file"},
    }
    checks = summarize.targets(summary)
    assert checks["T1@128 gpunn / torch eager"] == {"value": 1.7, "target": ">= 1.5", "met": True}
    assert checks["T1@128 graph replay / torch eager"]["met"] is False
    assert checks["T1@128 launches per step (3 per Linear + 4)"]["met"] is True  # at most 10
    assert checks["W1 step / its matrix products"] == {"value": 1.08, "target": "<= 1.1", "met": True}
    assert checks["W1 gpunn / torch eager (FP32)"]["met"] is False
    assert checks["W1 gpunn / torch eager (TF32 both)"] == {"value": None, "target": ">= 1.0", "met": None}


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="{f}"
skipped="{s}" tests="{t}">{cases}</testsuite></testsuites>"""


def test_test_counts_add_up_the_phases_and_name_a_missing_one(summarize, tmp_path):
    """ci/gpu-check runs the GPU tests first and the rest after; a phase its timeout killed
    leaves no file, which the summary must say instead of passing over it."""
    gpu_cases = (
        '<testcase classname="tests.test_graph" name="test_replay_equals_eager[cuda:0]"/>'
        '<testcase classname="tests.test_graph" name="test_replay_equals_eager[cpu]"/>'
        '<testcase classname="tests.test_backend" name="test_cuda_env_is_read"/>'
        '<testcase classname="tests.test_kernels" name="test_adam[cuda:0]"><failure message="bad"/></testcase>'
    )
    rest_cases = '<testcase classname="tests.test_cli" name="test_help"><skipped message="why"/></testcase>'
    (tmp_path / "tests-gpu.xml").write_text(JUNIT.format(f=1, s=0, t=4, cases=gpu_cases))
    (tmp_path / "tests-rest.xml").write_text(JUNIT.format(f=0, s=1, t=1, cases=rest_cases))
    phases = [tmp_path / "tests-gpu.xml", tmp_path / "tests-rest.xml"]
    counts = summarize.test_counts(phases)
    assert (counts["tests"], counts["failures"], counts["skipped"], counts["passed"]) == (5, 1, 1, 3)
    assert counts["gpu_tests_run"] == 2  # the [cuda:0] ids, not every name that says cuda
    assert counts["failed"] == ["tests.test_kernels::test_adam[cuda:0]"]
    assert "missing" not in counts
    replay = summarize.tests_named(phases, "repla")
    assert replay == {
        "tests.test_graph::test_replay_equals_eager[cuda:0]": "passed",
        "tests.test_graph::test_replay_equals_eager[cpu]": "passed",
    }
    (tmp_path / "tests-rest.xml").unlink()
    counts = summarize.test_counts(phases)
    assert counts["tests"] == 4 and counts["missing"][0].startswith("tests-rest.xml")


def test_its_crossover_is_the_bench_s_own(summarize):
    """The script keeps a standard-library copy of gpunn.bench.run.crossover (it must report when
    NumPy is missing); both give the same answer, split over a GPU and a CPU bench file or not."""

    def row(device: str, batch: int, rate: float, model: str = "T1") -> dict:
        return {"model": model, "device": device, "batch": batch, "gpunn": {"samples_per_s": rate}}

    cpu = [row("cpu", 32, 100), row("cpu", 128, 200), row("cpu", 1024, 300), row("cpu", 128, 9, "T2")]
    gpu = [row("cuda:0", 32, 50), row("cuda:0", 128, 250), row("cuda:0", 1024, 3000), row("cuda:0", 128, 1, "T2")]
    for rows in (cpu + gpu, cpu, gpu, cpu[:1] + gpu[1:]):
        assert summarize.crossover({"results": rows}) == crossover(rows)
    assert summarize.crossover({"results": gpu}, {"results": cpu}) == crossover(cpu + gpu) == {"T1": 128, "T2": None}


def test_a_gpu_step_that_never_started_on_a_gpu_fails_the_check(summarize):
    """With a GPU present, a GPU step the deadline kept from starting leaves its evidence
    missing: a problem, as a GPU step cut short is; without a GPU, or for a CPU-side step, a note."""

    def judged(gpu: bool, name: str) -> tuple[list[str], list[str]]:
        not_started = {"status": "not started: 12 s left", "exit_code": None}
        steps = {"info": {"status": "ok", "exit_code": 0}, name: not_started}
        summary = {
            "preflight": {},
            "gpu": {"name": "H100"} if gpu else None,
            "info": {"why_cpu": "none here"},
            "steps": steps,
            "tests": {"gpu": {}, "rest": {}},
            "mechanisms": {},
            "sanitizer": {"memcheck": {"status": "ok", "exit_code": 0, "tests": {"passed": 3, "skipped": 0}},
                          "racecheck": {"status": "ok", "exit_code": 0, "tests": {"passed": 3, "skipped": 0}}},
        }  # fmt: skip
        return summarize.verdict(summary)

    problems, notes = judged(True, "bench-tf32")
    assert problems == ["bench-tf32: not started: 12 s left"] and notes == []
    problems, notes = judged(True, "tests-rest")
    assert problems == [] and notes == ["tests-rest: not started: 12 s left"]
    problems, _ = judged(False, "bench-tf32")
    assert problems == ["no GPU: none here"]


def test_each_gpu_speed_mechanism_is_judged_by_the_10_percent_rule(summarize):
    """The fused kernels by the reference Ops' step over the eager one, graph replay by the eager
    step over its replay: kept where the best GPU workload gains 10 %, named; a CPU row never counts."""

    def row(device: str, model: str, batch: int, **ratios: float) -> dict:
        return {"device": device, "model": model, "batch": batch, **ratios}

    bench = {
        "results": [
            row("cuda:0", "T1", 128, gpunn_over_reference=1.8, graph_over_gpunn=1.04),
            row("cuda:0", "T2", 128, gpunn_over_reference=1.2, graph_over_gpunn=1.07),
            row("cpu", "T1", 128, gpunn_over_reference=3.0, graph_over_gpunn=5.0),
        ]
    }
    found = summarize.mechanisms({"bench": bench, "bench_w1": None})
    fused, graph = (found[name] for name in summarize.MECHANISMS)
    assert fused == {"gains": {"T1@128": 1.8, "T2@128": 1.2}, "best": "T1@128", "earns_its_place": True}
    assert graph["best"] == "T2@128" and graph["earns_its_place"] is False
    notes = summarize._mechanism_notes(found)
    assert "1.80x on T1@128, earns its place" in notes[0]
    assert "at most 1.07x on T2@128, under the 10 % bar" in notes[1]
    nothing = summarize.mechanisms({"bench": None, "bench_w1": {"results": []}})
    assert all(m == {"gains": {}, "best": None, "earns_its_place": None} for m in nothing.values())
    assert all(note.endswith("not measured") for note in summarize._mechanism_notes(nothing))
