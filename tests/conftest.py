"""Shared fixtures: every test that takes ``device`` runs on the CPU and on each usable GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpunn as gn


def _devices() -> list[gn.Device]:
    # GPUNN_TEST_DEVICES=cpu limits the run to the CPU even where a GPU works.
    wanted = os.environ.get("GPUNN_TEST_DEVICES")
    devices = gn.available_devices()
    if wanted:
        devices = [d for d in devices if str(d) in wanted.split(",")]
    return devices


DEVICES = _devices()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gn.gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a usable GPU (gpunn info says why there is none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
