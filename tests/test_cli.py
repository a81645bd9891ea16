"""`gpunn info` in a fresh process: devices, the CPU's reason, versions, BLAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gpunn as gn


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


def test_unknown_command_fails_cleanly() -> None:
    result = run_gpunn("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr
