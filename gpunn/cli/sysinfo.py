"""What this machine offers gpunn: devices, library versions, BLAS, GPUs (``gpunn info``)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from .. import __version__, distributed
from ..backend import device as backend
from ..backend import numba_ops, selection


def blas_info() -> list[dict[str, Any]]:
    """The BLAS libraries NumPy loaded, with version and thread count (via threadpoolctl)."""
    names = {"library": "internal_api", "version": "version", "threads": "num_threads", "architecture": "architecture"}
    return [
        {ours: lib.get(theirs) for ours, theirs in names.items()}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def mpi_info() -> dict[str, Any]:
    """mpi4py's version, where ``mpiexec`` is, and this process's place when an MPI launcher
    started it (from the launcher's environment: MPI itself is not started)."""
    try:
        mpi4py = metadata.version("mpi4py")
    except metadata.PackageNotFoundError:
        mpi4py = None
    # A virtual environment's own mpiexec (the mpich wheel) comes first, as `python -m` would.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    layout = distributed.env_layout()
    return {
        "mpi4py": mpi4py,
        "mpiexec": shutil.which("mpiexec", path=path),
        "launched": None if layout is None else vars(layout),
    }


def system_info() -> dict[str, Any]:
    """Everything ``gpunn info`` prints, as a JSON-ready dict."""
    try:
        selected, device_error = str(backend.device()), None
    except (backend.DeviceUnavailableError, ValueError) as exc:  # a bad GPUNN_DEVICE too: info still reports
        selected, device_error = None, str(exc)
    devices = backend.available_devices()
    gpus = [{"device": str(dev), **backend.gpu_properties(dev.index)} for dev in devices if dev.kind == "cuda"]
    ops = selection.choice()
    return {
        "gpunn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "cupy": backend.cupy_version(),
        "blas": blas_info(),
        "ops": ops,
        "cpu_compiled_ops": "none (GPUNN_OPS=reference)" if ops == "reference" else numba_ops.describe(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in devices],
        "selected": selected,
        "device_error": device_error,
        "device_env": os.environ.get(backend.ENV_VAR),
        "why_cpu": backend.why_cpu() if selected == "cpu" else None,
        "why_cpu_detail": backend.why_cpu_detail() if selected == "cpu" else None,
        "gpus": gpus,
        "mpi": mpi_info(),
    }


def format_info(info: dict[str, Any], verbose: bool = False) -> str:
    """A readable report of :func:`system_info`; ``verbose`` adds the full error behind the
    one-line "why the CPU"."""
    lines = [
        f"gpunn {info['gpunn']}  (Python {info['python']}, {info['platform']})",
        f"numpy {info['numpy']}, cupy {info['cupy'] or 'not installed'}",
    ]
    for lib in info["blas"]:
        lines.append(f"BLAS: {lib['library']} {lib['version']}, {lib['threads']} thread(s), {lib['architecture']}")
    if not info["blas"]:
        lines.append("BLAS: unknown (threadpoolctl found no BLAS library loaded)")
    lines.append(f"ops: {info['ops']} (GPUNN_OPS); CPU compiled ops: {info['cpu_compiled_ops']}")
    lines.append(f"CPU cores: {info['cpu_count']}")
    for gpu in info["gpus"]:
        lines.append(
            f"{gpu['device']}: {gpu['name']}, {gpu['total_memory'] / 2**30:.1f} GiB "
            f"({gpu['free_memory'] / 2**30:.1f} GiB free), compute capability {gpu['compute_capability']}, "
            f"driver {gpu['driver_version']}, runtime {gpu['runtime_version']}"
        )
    lines.append(f"devices: {', '.join(info['devices'])}")
    env = f" ({backend.ENV_VAR}={info['device_env']})" if info["device_env"] else ""
    lines.append(f"selected device: {info['selected'] or 'none'}{env}")
    if info["device_error"]:
        lines.append(f"error: {info['device_error']}")
    if info["why_cpu"]:
        lines.append(f"why the CPU: {info['why_cpu']}")
        if info.get("why_cpu_detail"):
            lines.append(
                f"  the error: {info['why_cpu_detail']}" if verbose else "  (the full error: gpunn info --verbose)"
            )
    lines.extend(_format_mpi(info))
    return "\n".join(lines)


def _format_mpi(info: dict[str, Any]) -> list[str]:
    mpi = info.get("mpi") or {}
    if not mpi.get("mpi4py"):
        return ['MPI: mpi4py not installed (pip install "gpunn[mpi]" for mpiexec -n K gpunn train)']
    lines = [f"MPI: mpi4py {mpi['mpi4py']}, mpiexec {mpi['mpiexec'] or 'not found'}"]
    ranks = info.get("ranks")
    if ranks:
        library = f" ({mpi['library']})" if mpi.get("library") else ""
        lines.append(f"ranks: {len(ranks)}{library}")
        rows = [("rank", "local rank", "host", "device", "transport")]
        rows += [(str(r["rank"]), str(r["local_rank"]), r["host"], r["device"], r["transport"]) for r in ranks]
        widths = [max(len(row[k]) for row in rows) for k in range(5)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    elif mpi.get("launched"):
        launched = mpi["launched"]
        lines.append(f"this process: rank {launched['rank']} of {launched['size']}")
    return lines
