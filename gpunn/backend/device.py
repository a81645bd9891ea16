"""Devices: which array module computes, where arrays live, and how they move.

A :class:`Device` is ``cpu`` (NumPy) or ``cuda:N`` (CuPy on GPU N). This is the only module
that imports CuPy, and lazily: ``import gpunn`` works without CuPy or a usable GPU. Whether a
GPU is usable is decided once, by running a small kernel on it, and the reason for any failure
is kept for :func:`why_cpu`: gpunn never falls back silently.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

ENV_VAR = "GPUNN_DEVICE"
INSTALL_HINT = 'pip install "gpunn[cuda12]" ([cuda13] for CUDA 13)'


class DeviceMismatchError(TypeError):
    """An array lives on a different device than the model, layer or optimizer using it."""


class DeviceUnavailableError(RuntimeError):
    """A GPU was asked for explicitly and none is usable; the message says why."""


class StepCaptureError(RuntimeError):
    """Code inside a training step being captured as a CUDA graph tried to read a device value
    on the host: a capture records kernels without running them, so no value exists to read."""


class _Capturing(threading.local):
    """Whether this thread is recording a training step (a CUDA graph capture, or the CPU's
    emulation of one): a capture on one thread says nothing about another thread's work."""

    active = False


_capturing = _Capturing()


@contextlib.contextmanager
def capturing_step() -> Iterator[None]:
    """Mark the code inside as a step being captured: :func:`refuse_host_read` raises in it."""
    outer, _capturing.active = _capturing.active, True
    try:
        yield
    finally:
        _capturing.active = outer


def refuse_host_read(what: str) -> None:
    """Raise :class:`StepCaptureError` if a step is being captured on this thread. Code that
    reads a device value back to the host (``int(t.min())``, ``float(loss)``) calls this first,
    so that a capture fails naming the read, not with CuPy's "D2H transfers are disallowed"."""
    if _capturing.active:
        raise StepCaptureError(
            f"{what}, which a captured training step cannot do: a CUDA graph records kernels "
            "without running them and replays them with no Python in between"
        )


@dataclass(frozen=True)
class Device:
    """Where arrays live and which array module computes on them: ``Device("cpu")`` NumPy,
    ``Device("cuda", n)`` CuPy on GPU ``n``. Immutable, compared by value."""

    kind: str
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"Device kind must be 'cpu' or 'cuda', got {self.kind!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"Device index must be an integer >= 0, got {self.index!r}")
        if self.kind == "cpu" and self.index != 0:
            raise ValueError(f"the CPU device has index 0, got {self.index}")

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __repr__(self) -> str:
        return f"Device('{self}')"

    @property
    def xp(self) -> ModuleType:
        """The array module: ``numpy`` on the CPU, ``cupy`` on a GPU."""
        return np if self.kind == "cpu" else _import_cupy()

    def __enter__(self) -> Device:
        """Make this GPU current, so that ``xp`` allocations land on it (no-op on the CPU)."""
        if self.kind == "cuda":
            _cuda_context(self.index).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda":
            _cuda_context(self.index).__exit__(*exc)

    def send(self, x: Any, dtype: Any = None) -> Any:
        """The array-like ``x`` as an array on this device, converted to ``dtype`` when given; no
        copy where it is already there (and of that dtype)."""
        if self.kind == "cpu":
            if _is_cupy_array(x):
                x = x.get()
            return np.asarray(x, dtype=dtype)  # host: a device array was copied to the host above
        cupy = _import_cupy()
        if isinstance(x, cupy.ndarray) and x.device.id == self.index:
            return x if dtype is None else x.astype(dtype, copy=False)
        with self:
            return cupy.asarray(x, dtype=dtype)

    def synchronize(self) -> None:
        """Wait until every kernel queued on this device has finished (no-op on the CPU)."""
        if self.kind == "cuda":
            _import_cupy().cuda.Device(self.index).synchronize()


CPU = Device("cpu")


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _Probe:
    count: int  # GPUs CUDA reports (0 when CuPy or the driver is missing)
    reason: str | None  # why cuda:0 is not usable, in one short line with its fix; None when usable
    detail: str | None = None  # the exception behind the reason, in full (gpunn info --verbose)


def _import_cupy() -> ModuleType:
    import cupy  # noqa: PLC0415 — the one lazy import of CuPy in gpunn

    return cupy


def _is_cupy_array(x: object) -> bool:
    cupy = sys.modules.get("cupy")  # no CuPy imported means no CuPy arrays exist
    return cupy is not None and isinstance(x, cupy.ndarray)


@functools.cache
def _cuda_context(index: int) -> Any:
    return _import_cupy().cuda.Device(index)


@functools.cache
def _probe() -> _Probe:
    """Find out once whether cuda:0 works: CuPy imports, a GPU is counted, a kernel runs."""
    runtime = _runtime()
    return runtime if runtime.reason is not None else _Probe(runtime.count, _kernel_failure(0))


@functools.cache
def _runtime() -> _Probe:
    """CuPy imports and CUDA counts the GPUs (no kernel runs, so no GPU gets a context)."""
    try:
        cupy = _import_cupy()
    except ImportError as exc:
        return _Probe(0, f"CuPy is not installed; for an NVIDIA GPU: {INSTALL_HINT}", _full(exc))
    except Exception as exc:  # a broken install raises all sorts of errors at import
        return _Probe(0, f"CuPy failed to import ({type(exc).__name__}); reinstall it", _full(exc))
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return _Probe(0, _cuda_unusable(cupy, exc), _full(exc))
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return _Probe(0, f"CUDA reports no GPU{hint}")
    return _Probe(count, None)


def _cuda_unusable(cupy: ModuleType, exc: BaseException) -> str:
    """Why CUDA failed to count the GPUs, in one line with the fix: no driver, a driver older
    than CuPy's CUDA (and which CuPy the driver takes), or another CUDA error by its name."""
    runtime = cupy.cuda.runtime
    try:
        driver, build = int(runtime.driverGetVersion()), int(runtime.runtimeGetVersion())
    except Exception:  # versions unknown: the error's name is all there is to say
        driver = build = -1
    if driver == 0:  # CUDA reports driver version 0 where no NVIDIA driver is loaded
        return "no NVIDIA driver found, which CuPy's CUDA needs (install one if this machine has an NVIDIA GPU)"
    if 0 < driver < build // 1000 * 1000:  # CuPy's CUDA major is newer than the driver's
        fix = "update the NVIDIA driver"
        if driver // 1000 in (12, 13):
            fix = f'use cupy-cuda{driver // 1000}x ("gpunn[cuda{driver // 1000}]")'
        have = f"{driver // 1000}.{driver % 1000 // 10}"
        return f"NVIDIA driver too old for this CuPy (needs CUDA {build // 1000}, have {have}): {fix}"
    name = str(exc).split(":")[0].strip()  # CuPy's CUDA errors start with their name: cudaErrorNoDevice: ...
    name = name if 0 < len(name) <= 40 else type(exc).__name__
    return f"CUDA is not usable ({name}); nvidia-smi shows the GPUs and the driver"


def _full(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


@functools.cache
def _kernel_failure(index: int) -> str | None:
    """Run a tiny elementwise and reduction kernel on GPU ``index``; the error, or None."""
    cupy = _import_cupy()
    try:
        with cupy.cuda.Device(index):
            total = float((cupy.arange(8, dtype=cupy.float32) * 2.0).sum())
    except Exception as exc:
        return f"a test kernel failed on cuda:{index} ({_full(exc).splitlines()[0]}); check the CUDA install"
    if total != 56.0:
        return f"a test kernel on cuda:{index} returned {total} instead of 56.0"
    return None


def gpu_count() -> int:
    """GPUs CUDA reports (0 without CuPy or a driver); runs no kernel, creates no context."""
    return _runtime().count


def gpu_available() -> bool:
    """True when cuda:0 exists and runs kernels (decided once, then cached)."""
    return _probe().reason is None


def available_devices() -> list[Device]:
    """The CPU followed by every GPU that runs a test kernel."""
    gpus = [Device("cuda", i) for i in range(_probe().count) if _kernel_failure(i) is None]
    return [CPU, *gpus]


def why_cpu() -> str | None:
    """Why ``gn.device()`` chose the CPU, in one short line with the fix that applies, or None
    when it chose a GPU. :func:`why_cpu_detail` gives the error behind it in full."""
    spec = env_spec().lower()
    if spec == "cpu":
        return f"{ENV_VAR}=cpu asks for the CPU (unset it to use a GPU)"
    if spec != "auto":
        return None  # an explicit GPU either works or raises; it never falls back
    return _probe().reason


def why_cpu_detail() -> str | None:
    """The exception behind :func:`why_cpu`'s reason, in full (CuPy's or CUDA's own words), or
    None where the reason has none (a GPU chosen, ``GPUNN_DEVICE=cpu``, no GPU counted)."""
    return _probe().detail if env_spec().lower() == "auto" else None


def env_spec() -> str:
    """GPUNN_DEVICE, stripped; unset or empty (``GPUNN_DEVICE=``, as shells and CI files write an
    unset value) means "auto"."""
    return os.environ.get(ENV_VAR, "").strip() or "auto"


_SPEC = re.compile(r"^(cpu|cuda|gpu|auto)(?::(\d+))?$")


def device(spec: str | Device | None = None) -> Device:
    """The device named by ``spec``: ``"auto"`` (cuda:0 when usable, else the CPU), ``"cpu"``,
    ``"cuda"`` (cuda:0), ``"cuda:N"`` or a :class:`Device`; None reads ``GPUNN_DEVICE``, default
    ``"auto"``. A GPU that is not usable raises :class:`DeviceUnavailableError` with the reason."""
    if isinstance(spec, Device):
        return spec
    from_env = spec is None
    if from_env:
        spec = env_spec()
    if not isinstance(spec, str):
        raise TypeError(f"device spec must be a string such as 'cuda:0' or a Device, got {spec!r}")
    match = _SPEC.match(spec.strip().lower())
    if match is None or (match.group(1) in ("cpu", "auto") and match.group(2) is not None):
        name = ENV_VAR if from_env else "device"
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return CPU
    if kind == "auto":
        return Device("cuda", 0) if _probe().reason is None else CPU
    # cuda:N runs its test kernel on GPU N alone: a process that uses GPU 1 (one MPI rank
    # per GPU) must not also create a context, hundreds of MB, on GPU 0.
    probe = _probe() if index == 0 else _runtime()
    asked = f"{ENV_VAR}={spec!r}" if from_env else f"device {spec!r}"
    if probe.count == 0 or (index == 0 and probe.reason is not None):
        raise DeviceUnavailableError(f"{asked} asks for a GPU, but {probe.reason}")
    if index >= probe.count:
        raise DeviceUnavailableError(
            f"{asked} asks for GPU {index}, but CUDA reports {probe.count} GPU(s): use cuda:0 to cuda:{probe.count - 1}"
        )
    failure = _kernel_failure(index)
    if failure is not None:
        raise DeviceUnavailableError(f"{asked}: {failure}")
    return Device("cuda", index)


def set_matmul_precision(precision: str) -> None:
    """Choose how float32 matrix products run on the GPU.

    ``"highest"`` (the default) computes them in float32; ``"tf32"`` lets Ampere and newer
    GPUs use TF32 tensor cores (10-bit mantissa inputs, float32 accumulation): several
    times faster for large layers, at about 1e-3 relative error per product. CPU products
    are always float32. The setting is CuPy's (``CUPY_TF32``) and holds for the process.
    """
    if precision not in ("highest", "tf32"):
        raise ValueError(f"precision must be 'highest' or 'tf32', got {precision!r}")
    tf32 = precision == "tf32"
    os.environ["CUPY_TF32"] = "1" if tf32 else "0"  # read by CuPy at its first product
    # a CuPy already imported forgets its choice and reads CUPY_TF32 again at its next float32
    # product, on the GPU that runs it: setting TF32 directly would check the compute capability
    # of the current device (cuda:0), making a context there from a rank bound to cuda:N
    if "cupy" in sys.modules and _runtime().reason is None:
        from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TBD)


def matmul_precision() -> str:
    """The current GPU float32 matrix-product precision: "highest" or "tf32"."""
    # CuPy's own reading of the variable: any integer above 0 switches its products to TF32
    try:
        return "tf32" if int(os.environ.get("CUPY_TF32", "0")) > 0 else "highest"
    except ValueError:
        return "highest"


def gpu_properties(index: int = 0) -> dict[str, Any]:
    """Name, memory (bytes), compute capability and CUDA versions of GPU ``index``."""
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(index)
    with cupy.cuda.Device(index):
        free, total = runtime.memGetInfo()
    name = props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "total_memory": int(total),
        "free_memory": int(free),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": int(props["multiProcessorCount"]),
        "driver_version": int(runtime.driverGetVersion()),
        "runtime_version": int(runtime.runtimeGetVersion()),
    }


def cupy_version() -> str | None:
    """CuPy's version if it imports, else None (imports it)."""
    try:
        return _import_cupy().__version__
    except Exception:
        return None


# ----------------------------------------------------------------------------- arrays


def array_module(x: Any) -> ModuleType:
    """``cupy`` for a CuPy array, ``numpy`` for anything else."""
    if type(x) is np.ndarray:  # every CPU call, several per layer and step: skip the probe
        return np
    return sys.modules["cupy"] if _is_cupy_array(x) else np


def device_of(x: Any) -> Device:
    """The device an array lives on (the CPU for NumPy arrays and Python values)."""
    return Device("cuda", int(x.device.id)) if _is_cupy_array(x) else CPU


def on_input_device(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method(self, x, ...)`` with the GPU that holds ``x`` current: CuPy launches kernels
    and allocates on the current GPU whatever device the arguments are on, so a model on cuda:1
    called outside ``with dev:`` would compute on cuda:0. NumPy input: called as it is."""

    @functools.wraps(method)
    def run(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        if type(x) is np.ndarray:
            return method(self, x, *args, **kwargs)
        return call_on_device_of(x, method, self, x, *args, **kwargs)

    return run


def call_on_device_of(x: Any, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` with the GPU that holds ``x`` current (switched only when it
    is not, as CuPy's own device context does); for anything but a CuPy array, called as it is."""
    if not _is_cupy_array(x):
        return function(*args, **kwargs)
    runtime = sys.modules["cupy"].cuda.runtime
    wanted, current = x.data.device_id, runtime.getDevice()
    if wanted == current:
        return function(*args, **kwargs)
    runtime.setDevice(wanted)
    try:
        return function(*args, **kwargs)
    finally:
        runtime.setDevice(current)


def to_numpy(x: Any) -> Any:
    """Copy device arrays to the host, through lists, tuples and dicts; NumPy arrays and
    Python values come back unchanged (no copy)."""
    return _map_arrays(x, lambda v: v.get() if _is_cupy_array(v) else v)


def to_device(x: Any, dev: str | Device) -> Any:
    """Move arrays to ``dev``, through lists, tuples and dicts; no copy when already there.
    Python numbers, strings and None pass through unchanged."""
    target = device(dev)

    def move(v: Any) -> Any:
        return target.send(v) if isinstance(v, (np.ndarray, np.generic)) or _is_cupy_array(v) else v

    return _map_arrays(x, move)


def _map_arrays(x: Any, leaf: Any) -> Any:
    """``leaf`` applied to everything inside the dicts, lists and tuples of ``x``."""
    if isinstance(x, dict):
        return {k: _map_arrays(v, leaf) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple takes its fields one by one
        return type(x)(*(_map_arrays(v, leaf) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_map_arrays(v, leaf) for v in x)
    return leaf(x)


def check_device(x: Any, expected: Device, name: str, owner: str) -> None:
    """Raise DeviceMismatchError unless array ``x`` lives on ``expected``."""
    actual = device_of(x)
    if actual != expected:
        raise DeviceMismatchError(
            f"{name} is on {actual} but {owner} is on {expected}; move it with gn.to_device({name}, '{expected}')"
        )
