"""A GPU machine's choice of device, simulated on a machine without a usable GPU.

``ci/gpu-check`` runs this suite where cuda:0 works and GPUNN_DEVICE is unset. There,
everything that leaves the device to gpunn runs on cuda:0: the CLI without ``--device``,
``gn.Trainer``, ``gn.load`` and the scikit-learn estimators without ``device=``,
``gn.device()``, ``gn.available_devices()``, ``gn.why_cpu()`` (None). A test that asserts
"cpu" without asking for it, or that leans on the default device while comparing with NumPy,
passes on the CPU-only CI and fails only on the GPU machine.

So ``tests/conftest.py`` runs every test (and, through ``sitecustomize``, every Python
subprocess it starts) with gpunn's own choice answering as the GPU machine's would: cuda:0
is there and usable. Nothing can run on it: the first use of CuPy raises
:class:`SimulatedGPUError`, which says what to do. A test that names its device (``"cpu"``,
``--device cpu``, the ``device`` fixture) never notices. Tests exempt from the simulation
carry a marker: ``gpu`` (they need the real one), ``no_gpu`` (the CPU fallback itself: they
run only where no GPU is usable) and ``default_device`` (about gpunn's own choice: they run
against the real machine and assert only what holds on either kind).

Limits: a subprocess started with an environment of its own (without PYTHONPATH and
GPUNN_TEST_SIMULATED_GPU) and work done in module- or session-scoped fixtures see the real
machine; and since nothing computes on the simulated GPU, this finds the tests that use the
default device, not NumPy-only operations applied to CuPy arrays (a check of its own).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ENV_VAR = "GPUNN_TEST_SIMULATED_GPU"  # "1" in a test's environment while it is simulated
OFF_VAR = "GPUNN_TEST_SIMULATE_GPU"  # "0" turns the simulation off for a whole run
NAME = "simulated GPU (tests/simulated_gpu.py)"
MESSAGE = (
    "something ran on cuda:0, most likely the device gpunn picks by itself, which is cuda:0 on a GPU "
    "machine (ci/gpu-check). The test suite simulates that machine here (tests/simulated_gpu.py), and "
    "nothing runs on its GPU. Name the device the test is about (device='cpu', --device cpu, the "
    "`device` fixture); for a test about the default itself, mark it @pytest.mark.default_device and "
    "assert only what holds on both a CPU and a GPU machine."
)

HINT = (
    "This test ran with gpunn's own choice of device answering as on a GPU machine: gn.device(), the CLI "
    "without --device, estimators and gn.Trainer without device= pick cuda:0, and gn.why_cpu() is None "
    "(tests/simulated_gpu.py). If it failed for that reason, name its device (device='cpu', --device cpu), "
    "or mark it no_gpu (about the CPU fallback) or default_device (about the default; device-neutral asserts)."
)


class SimulatedGPUError(RuntimeError):
    """Something tried to run on the simulated cuda:0."""


def _like(original: Callable[..., Any], replacement: Callable[..., Any]) -> Callable[..., Any]:
    # keeps __wrapped__ (the uncached function), which tests of the probe itself call
    return functools.wraps(original)(replacement)


def patch(backend: ModuleType, assign: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make ``gpunn.backend.device`` answer as on a machine whose cuda:0 is usable (and is used by default)."""
    usable = backend._Probe(1, None)

    def no_cupy() -> ModuleType:
        raise SimulatedGPUError(MESSAGE)

    def properties(index: int = 0) -> dict[str, Any]:
        return {
            "name": NAME,
            "total_memory": 80 * 2**30,
            "free_memory": 79 * 2**30,
            "compute_capability": "9.0",
            "multiprocessors": 132,
            "driver_version": 13000,
            "runtime_version": 13000,
        }

    replacements = {
        "_probe": _like(backend._probe, lambda: usable),
        "_runtime": _like(backend._runtime, lambda: usable),
        "_kernel_failure": _like(
            backend._kernel_failure, lambda index: None if index == 0 else f"cuda:{index} is not simulated"
        ),
        "_import_cupy": no_cupy,
        "gpu_properties": properties,
        "cupy_version": lambda: "simulated",
    }
    for name, value in replacements.items():
        assign(backend, name, value)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``gpunn.backend.device`` as soon as a subprocess imports it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "gpunn.backend.device":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Simulate the GPU machine in this process (called by the generated sitecustomize)."""
    if "gpunn.backend.device" in sys.modules:
        patch(sys.modules["gpunn.backend.device"])
    else:
        sys.meta_path.insert(0, _PatchOnImport())


SITECUSTOMIZE = '''\
"""Written by tests/conftest.py: a test's Python subprocesses simulate a GPU machine too."""
import importlib.machinery
import importlib.util
import os
import sys

if os.environ.get({env!r}) == "1":
    _spec = importlib.util.spec_from_file_location("_gpunn_simulated_gpu", {path!r})
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.install()

# then whatever sitecustomize this one hides
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''


def write_sitecustomize(folder: Path) -> Path:
    """A folder to put first on PYTHONPATH: its sitecustomize simulates the GPU in subprocesses."""
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(env=ENV_VAR, path=str(Path(__file__).resolve())))
    return folder
