"""Which Ops a device computes with: decided here, and only here.

``GPUNN_OPS`` chooses for the whole process: unset, empty or ``auto`` takes the fastest Ops a
device has (Numba's on the CPU when the ``fast`` extra is installed, the fused CUDA kernels on a
GPU); ``reference`` runs :class:`~gpunn.backend.ops.NumpyOps` everywhere (on a GPU the plain
CuPy path: the fallback should a fused kernel misbehave). Never chosen by timing or history.
:func:`using` sets the choice for the code it encloses, over the variable (``gpunn bench``
times the reference Ops beside the accelerated ones that way).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from .device import CPU, Device, device_of
from .ops import NumpyOps

ENV_VAR = "GPUNN_OPS"
CHOICES = ("auto", "reference")
_enclosing: ContextVar[str | None] = ContextVar("gpunn_ops_choice", default=None)


def choice() -> str:
    """The choice in force: "auto" or "reference" (from :func:`using`, else GPUNN_OPS)."""
    return _enclosing.get() or _parse(os.environ.get(ENV_VAR, ""))


@contextlib.contextmanager
def using(which: str) -> Iterator[None]:
    """Compute with ``which`` Ops ("auto" or "reference") inside the block, whatever GPUNN_OPS
    says; per thread and task, as a ContextVar."""
    if which not in CHOICES:
        raise ValueError(f"which must be 'auto' or 'reference', got {which!r}")
    token = _enclosing.set(which)
    try:
        yield
    finally:
        _enclosing.reset(token)


@functools.lru_cache(maxsize=8)
def _parse(raw: str) -> str:
    # cached by the raw value: every layer call asks, and a changed variable still counts
    value = raw.strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be 'auto' or 'reference', got {raw!r}")
    return value


def numba_installed() -> bool:
    """Whether the ``fast`` extra (Numba) is importable; imports nothing."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _ops(dev: Device, which: str) -> NumpyOps:
    if which == "reference" or (dev.kind == "cpu" and not numba_installed()):
        return NumpyOps(dev.xp)
    if dev.kind == "cpu":
        from .numba_ops import NumbaOps  # noqa: PLC0415 — the extra is optional

        return NumbaOps(np)
    from .cuda.ops import CupyOps  # noqa: PLC0415 — imports CuPy

    return CupyOps(dev.xp)


def ops_for(dev: Device) -> NumpyOps:
    """The Ops of device ``dev`` under the current GPUNN_OPS."""
    return _ops(dev, choice())


@functools.cache
def _cpu_ops(which: str) -> NumpyOps:
    return _ops(CPU, which)  # keyed by a string alone: hashing a Device costs every layer call


def ops_of(x: Any) -> NumpyOps:
    """The Ops of the device array ``x`` lives on (the fast path: a NumPy array)."""
    if type(x) is np.ndarray:
        return _cpu_ops(choice())
    return ops_for(device_of(x))


def all_ops(dev: Device) -> list[NumpyOps]:
    """Every Ops that device ``dev`` can run: the reference first, then its accelerated one
    (for ``gpunn check`` and the conformance tests)."""
    reference = _ops(dev, "reference")
    fast = _ops(dev, "auto")
    return [reference] if type(fast) is type(reference) else [reference, fast]
