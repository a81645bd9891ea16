"""`gpunn info` in a fresh process: devices, the CPU's reason, versions, BLAS; `gpunn check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gpunn as gn
from gpunn.backend.selection import numba_installed


def run_gpunn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpunn", *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def test_info_reports_devices_versions_and_blas() -> None:
    result = run_gpunn("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["gpunn"] == gn.__version__
    assert info["devices"][0] == "cpu"
    assert info["numpy"]
    assert info["blas"] and info["blas"][0]["threads"] >= 1
    if info["selected"] == "cpu":
        assert info["why_cpu"], "the CPU was chosen, so the reason must be given"
    else:
        assert info["gpus"] and info["gpus"][0]["total_memory"] > 0


@pytest.mark.no_gpu  # about the CPU fallback: skipped where a GPU is usable
def test_info_text_says_why_the_cpu_was_chosen() -> None:
    result = run_gpunn("info", env={"GPUNN_DEVICE": "auto"})
    assert result.returncode == 0, result.stderr
    assert "selected device: cpu" in result.stdout
    assert "why the CPU:" in result.stdout
    assert gn.why_cpu() in result.stdout


@pytest.mark.no_gpu  # about the CPU fallback: skipped where a GPU is usable
def test_info_with_unavailable_gpu_requested_reports_error() -> None:
    result = run_gpunn("info", env={"GPUNN_DEVICE": "cuda"})
    assert result.returncode == 1
    assert "error: GPUNN_DEVICE='cuda' asks for a GPU" in result.stdout


def test_version_is_the_package_version() -> None:
    result = run_gpunn("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gpunn {gn.__version__}"


def test_a_closed_pipe_ends_quietly() -> None:
    """`gpunn info | head -1`, at its worst: the reader is gone before gpunn writes a line (`true`
    reads nothing). No error, no traceback, exit 0."""
    script = f"{sys.executable} -m gpunn info | true"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_unknown_command_fails_cleanly() -> None:
    result = run_gpunn("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.default_device  # `gpunn check` as a user runs it: every device this machine really has
def test_check_passes_with_a_row_per_override() -> None:
    result = run_gpunn("check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("gpunn check: pass: "), result.stdout
    if numba_installed():
        numba_rows = [line.split() for line in lines if line.startswith("numba ")]
        assert ["numba", "cpu", "adam_update", "float32", "0", "0", "(bits)", "pass"] in numba_rows


def test_check_json_names_each_row_on_the_cpu() -> None:
    result = run_gpunn("check", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert all(r["device"] == "cpu" and r["comparison"] == "bitwise" and r["ok"] for r in report["rows"])
    if numba_installed():
        assert {("numba", "adam_update", "float64"), ("numba", "adam_update", "float32")} <= {
            (r["backend"], r["op"], r["dtype"]) for r in report["rows"]
        }
        assert "matmul" in report["inherits_the_reference"]["numba on cpu"]
        assert "bias_activation" in report["inherits_the_reference"]["numba on cpu"]
