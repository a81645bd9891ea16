"""ci/summarize_gpu_check.py: the GPU targets are judged from the bench figures it merges."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
