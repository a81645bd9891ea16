"""`gpunn info` in a fresh process: devices, the CPU's reason, versions, BLAS; `gpunn check`."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types

import pytest

import gpunn as gn
from gpunn.backend import device as backend
from gpunn.backend.selection import numba_installed
from gpunn.cli.sysinfo import format_info, system_info


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


def test_info_under_reference_ops_lists_no_compiled_ops() -> None:
    result = run_gpunn("info", "--json", env={"GPUNN_DEVICE": "cpu", "GPUNN_OPS": "reference"})
    info = json.loads(result.stdout)
    assert (info["ops"], info["cpu_compiled_ops"]) == ("reference", "none (GPUNN_OPS=reference)")


def test_bench_help_says_when_w1_runs() -> None:
    text = run_gpunn("bench", "--help").stdout
    assert "all three with --full, --batch-sizes or --repeat" in " ".join(text.split())


def test_info_with_a_malformed_gpunn_device_still_reports() -> None:
    result = run_gpunn("info", "--json", env={"GPUNN_DEVICE": "cuda:x"})
    assert result.returncode == 1
    info = json.loads(result.stdout)
    assert info["selected"] is None
    assert "GPUNN_DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'" in info["device_error"]


INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def _cupy_that_counts_no_gpu(driver: int, build: int) -> types.SimpleNamespace:
    """CuPy as it is where CUDA cannot count the GPUs: ``driver`` and ``build`` as CUDA reports
    them (12090: CUDA 12.9; a driver version of 0: no driver loaded)."""

    def count() -> int:
        raise RuntimeError(INSUFFICIENT)  # CuPy's CUDARuntimeError reads the same

    versions = {"driverGetVersion": lambda: driver, "runtimeGetVersion": lambda: build}
    runtime = types.SimpleNamespace(getDeviceCount=count, **versions)
    return types.SimpleNamespace(__version__="14.2.0", cuda=types.SimpleNamespace(runtime=runtime))


def _no_cupy() -> None:
    raise ImportError("No module named 'cupy'")


@pytest.mark.parametrize(
    ("cupy", "expected", "not_expected"),
    [
        (_cupy_that_counts_no_gpu(0, 12090), "no NVIDIA driver found", "pip install"),
        (_cupy_that_counts_no_gpu(11040, 12090), "too old for this CuPy (needs CUDA 12, have 11.4): update", "pip"),
        (_cupy_that_counts_no_gpu(12020, 13000), 'CUDA 13, have 12.2): use cupy-cuda12x ("gpunn[cuda12]")', "update"),
        (None, 'CuPy is not installed; for an NVIDIA GPU: pip install "gpunn[cuda12]"', "driver"),
    ],
    ids=["no driver", "driver too old", "driver of the other CUDA", "no CuPy"],
)
def test_why_the_cpu_is_one_short_line_with_the_fix_that_applies(
    monkeypatch: pytest.MonkeyPatch, cupy: types.SimpleNamespace | None, expected: str, not_expected: str
) -> None:
    # The probe the reason comes from, on the machine each case describes; `gpunn info` reports it.
    monkeypatch.setattr(backend, "_import_cupy", _no_cupy if cupy is None else lambda: cupy)
    probe = inspect.unwrap(backend._runtime)()  # uncached (and unsimulated)
    monkeypatch.setattr(backend, "_runtime", lambda: probe)
    monkeypatch.setattr(backend, "_probe", lambda: probe)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    reason = gn.why_cpu()
    assert expected in reason and not_expected not in reason
    assert len(reason) <= 100 and "\n" not in reason
    info = system_info()
    assert info["selected"] == "cpu" and info["why_cpu"] == reason
    full = INSUFFICIENT if cupy is not None else "No module named 'cupy'"
    assert full in info["why_cpu_detail"] and full not in reason  # the whole error: only on request
    lines = format_info(info).splitlines()
    assert f"why the CPU: {reason}" in lines and not any(full in line for line in lines)
    assert f"  the error: {info['why_cpu_detail']}" in format_info(info, verbose=True).splitlines()


def test_why_the_cpu_when_gpunn_device_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert gn.why_cpu() == "GPUNN_DEVICE=cpu asks for the CPU (unset it to use a GPU)"
    assert backend.why_cpu_detail() is None  # no error behind it
    assert "the full error" not in format_info(system_info())


@pytest.mark.no_gpu  # the real fallback: skipped where a GPU is usable
def test_info_verbose_gives_the_full_error() -> None:
    result = run_gpunn("info", "--verbose", env={"GPUNN_DEVICE": "auto"})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("why the CPU: ")]
    assert len(line) <= len("why the CPU: ") + 100
    detail = backend.why_cpu_detail()
    if detail is not None:
        assert f"  the error: {detail}" in result.stdout.splitlines()


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
