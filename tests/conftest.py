"""Shared fixtures: every test that takes ``device`` runs on the CPU and on each usable GPU.

Without a usable GPU, every test also runs with gpunn's own choice of device answering as on a
GPU machine (cuda:0, on which nothing can run; see tests/simulated_gpu.py), so that a test that
leaves the device to gpunn and expects the CPU fails here, not only under ci/gpu-check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import simulated_gpu

import gpunn as gn
from gpunn.backend import device as backend


def _devices() -> list[gn.Device]:
    # GPUNN_TEST_DEVICES=cpu limits the run to the CPU even where a GPU works.
    wanted = os.environ.get("GPUNN_TEST_DEVICES")
    devices = gn.available_devices()
    if wanted:
        devices = [d for d in devices if str(d) in wanted.split(",")]
    return devices


DEVICES = _devices()


# Markers that exempt a test from the simulated GPU machine (tests/simulated_gpu.py)
REAL_MACHINE_MARKERS = ("gpu", "no_gpu", "default_device")
SIMULATE_GPU = not gn.gpu_available() and os.environ.get(simulated_gpu.OFF_VAR) != "0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_gpu: about the CPU fallback: runs only where no GPU is usable (skipped on a GPU machine)"
    )
    config.addinivalue_line(
        "markers",
        "default_device: about the device gpunn picks by itself: runs against this machine's real GPU or CPU "
        "instead of the simulated GPU machine, and asserts only what holds on both",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gn.gpu_available():
        skip = pytest.mark.skip(reason="about the CPU fallback, and this machine has a usable GPU")
        marker = "no_gpu"
    else:
        skip = pytest.mark.skip(reason="needs a usable GPU (gpunn info says why there is none)")
        marker = "gpu"
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)  # the old style, which every pytest the GPU machine may have knows
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and SIMULATE_GPU and not any(item.get_closest_marker(name) for name in REAL_MACHINE_MARKERS):
        report.sections.append(("simulated GPU machine", simulated_gpu.HINT))


@pytest.fixture(scope="session")
def _simulated_gpu_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated_gpu.write_sitecustomize(tmp_path_factory.mktemp("simulated-gpu-site"))


@pytest.fixture(autouse=True)
def _simulated_gpu_machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Without a usable GPU, gpunn's own choice of device answers as under ci/gpu-check: cuda:0.

    GPUNN_DEVICE is unset as there, and the test's Python subprocesses simulate the same.
    GPUNN_TEST_SIMULATE_GPU=0 turns this off; the markers in REAL_MACHINE_MARKERS exempt a test.
    """
    if not SIMULATE_GPU or any(request.node.get_closest_marker(name) for name in REAL_MACHINE_MARKERS):
        yield
        return
    site = request.getfixturevalue("_simulated_gpu_site")
    simulated_gpu.patch(backend, monkeypatch.setattr)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv(simulated_gpu.ENV_VAR, "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    yield


@pytest.fixture(params=DEVICES, ids=str)
def device(request: pytest.FixtureRequest) -> gn.Device:
    """Each usable device in turn: cpu, then cuda:0 when a GPU really runs kernels."""
    return request.param


@pytest.fixture
def gpu() -> gn.Device:
    """cuda:0 (tests using it also carry the ``gpu`` marker and skip without one)."""
    return gn.device("cuda:0")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
