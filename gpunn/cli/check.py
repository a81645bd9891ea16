"""``gpunn check``: every accelerated Ops override held to the reference Ops.

Each method a device's accelerated Ops overrides (NumbaOps on the CPU, CupyOps on a GPU) runs the
cases of :mod:`gpunn.cli.check_cases`, and so does the reference (:class:`NumpyOps` on the same
device), on copies of the same inputs; every array argument afterwards and every array returned
is compared (:func:`error`): on the CPU bit for bit, on a GPU within the bounds of
:func:`~gpunn.cli.check_cases.bounds` (NVRTC contracts a·b + c into one fused multiply-add,
CUDA's exp and tanh are not the host's, sums run in other orders). On a GPU the reference itself
(CuPy, as ``GPUNN_OPS=reference`` runs) is also held to the reference on the CPU.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend.device import CPU, Device, to_numpy
from ..backend.ops import NumpyOps
from ..backend.selection import all_ops, numba_installed
from .check_cases import DTYPES, PROTOCOL, Arg, Case, bounds, cases, eps, ulps_of


@dataclass(frozen=True)
class Backend:
    """Ops under test on ``device``, held to ``reference`` on ``reference_device``."""

    name: str
    ops: NumpyOps
    device: Device
    reference: NumpyOps
    reference_device: Device
    bitwise: bool

    def methods(self) -> tuple[str, ...]:
        """What is checked: the overrides, or every method of the reference on another device."""
        if type(self.ops) is type(self.reference):
            return PROTOCOL
        return tuple(m for m in PROTOCOL if getattr(type(self.ops), m, None) is not getattr(NumpyOps, m, None))


def _at_every_size(ops: NumpyOps) -> NumpyOps:
    """``ops`` running its own code at every size: an Ops that leaves small buffers to the
    reference (NumbaOps' ``min_size``) would otherwise compare the reference with itself."""
    if getattr(ops, "min_size", 0):
        ops = copy.copy(ops)
        ops.min_size = 0
    return ops


def backends(devices: Iterable[Device]) -> list[Backend]:
    """Each device's accelerated Ops against its reference; on a GPU also the reference (CuPy)
    against the reference on the CPU."""
    out = []
    for dev in devices:
        reference, *accelerated = all_ops(dev)
        out += [Backend(ops.name, _at_every_size(ops), dev, reference, dev, dev.kind == "cpu") for ops in accelerated]
        if dev.kind != "cpu":
            out.append(Backend("reference", reference, dev, all_ops(CPU)[0], CPU, False))
    return out


def _run(ops: NumpyOps, dev: Device, case: Case) -> dict[str, np.ndarray]:
    """The method on fresh copies of the inputs on ``dev``: every array argument afterwards and
    every array returned, on the host."""
    with dev, np.errstate(all="ignore"):  # the edge cases overflow and make NaNs on purpose
        arrays = {k: dev.xp.array(v) for k, v in case.arrays.items()}

        def resolve(v: Any) -> Any:
            return arrays[v] if isinstance(v, Arg) else tuple(map(resolve, v)) if type(v) is tuple else v

        method = getattr(ops, case.op)
        returned = method(*list(arrays.values())[: case.positional], **dict(resolve(tuple(case.kwargs.items()))))
        results = (
            zip(("loss", "grad"), returned, strict=True) if isinstance(returned, tuple) else [("result", returned)]
        )
        arrays.update((k, v) for k, v in results if v is not None)
        return {k: np.asarray(to_numpy(v)) for k, v in arrays.items()}


def _ordered(x: np.ndarray) -> np.ndarray:
    """The floats' bits as integers in the floats' order (−0 just below +0), as float64."""
    bits = x.view(np.int32 if x.itemsize == 4 else np.int64).astype(np.int64)
    return np.where(bits < 0, -(bits & np.int64(2 ** (8 * x.itemsize - 1) - 1)) - 1, bits).astype(np.float64)


def error(got: np.ndarray, want: np.ndarray, bitwise: bool, dtype: str, terms: Any = 0.0) -> float:
    """The largest error over the elements: representable values apart (``bitwise``; +0 and −0
    one apart), else |got − want| in units of eps(dtype)·terms + the smallest subnormal; inf
    where a NaN, an infinity or infinite terms meet anything but their equal (NaNs are equal
    whatever their payloads)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return math.inf
    if got.dtype.kind != "f":
        return 0.0 if np.array_equal(got, want) else math.inf
    with np.errstate(all="ignore"):
        if bitwise:
            err = np.abs(_ordered(got) - _ordered(want))
        else:
            g, w = got.astype(np.float64), want.astype(np.float64)
            unit = eps(dtype) * np.asarray(terms) + float(np.finfo(dtype).smallest_subnormal)
            finite = np.isfinite(g - w) & np.isfinite(unit)
            err = np.where(g == w, 0.0, np.where(finite, np.abs(g - w) / unit, math.inf))
    err = np.where(np.isnan(got) & np.isnan(want), 0.0, np.where(np.isnan(got) | np.isnan(want), math.inf, err))
    return float(err.max(initial=0.0))


@dataclass(frozen=True)
class Outcome:
    backend: Backend
    case: Case
    error: float  # of its worst output, in ulps (see error())
    allowed: float
    worst: str  # that output's name, or what went wrong

    @property
    def ok(self) -> bool:
        return self.error <= self.allowed

    @property
    def ratio(self) -> float:
        return self.error / self.allowed if self.allowed else 0.0 if self.error == 0 else math.inf

    def describe(self) -> str:
        b, unit = self.backend, "bits" if self.backend.bitwise else "terms"
        return f"{b.name} on {b.device}, {self.case.id}: {self.worst} {self.error:.3g} ({unit}), bound {self.allowed:g}"


def run_case(backend: Backend, case: Case) -> Outcome:
    """``case`` on the backend and on its reference: the worst output against its bound."""
    results = []
    for ops, dev in ((backend.reference, backend.reference_device), (backend.ops, backend.device)):
        try:
            results.append(_run(ops, dev, case))
        except Exception as exc:  # a result of the case, set beside the other side's
            results.append(exc)
    want, got = results
    if isinstance(want, Exception) or isinstance(got, Exception):
        same = type(want) is type(got)
        return Outcome(backend, case, 0.0 if same else math.inf, 0.0, f"raises {got!r} (reference: {want!r})")
    if set(got) != set(want):
        return Outcome(backend, case, math.inf, 0.0, f"returns {sorted(got)}, the reference {sorted(want)}")
    limits = {} if backend.bitwise else bounds(case)
    outcomes = []
    for name in want:
        terms, k = limits.get(name, (0.0, 0))
        err = error(got[name], want[name], backend.bitwise, case.dtype, terms)
        outcomes.append(Outcome(backend, case, err, ulps_of(k), name))
    return max(outcomes, key=lambda o: (o.ratio, o.allowed))


def check(backend_list: Sequence[Backend], case_list: Sequence[Case] | None = None) -> dict[str, Any]:
    """Every case of each backend's methods; one row per backend, op and dtype (its worst case)."""
    start, case_list = time.perf_counter(), cases() if case_list is None else case_list
    rows = []
    for b in backend_list:
        for op in b.methods():
            for dtype in DTYPES:
                group = [run_case(b, c) for c in case_list if c.op == op and c.dtype == dtype]
                worst = max(group, key=lambda o: (not o.ok, o.ratio, o.allowed), default=None)
                if worst is not None:
                    rows.append({
                        "backend": b.name, "device": str(b.device), "reference_device": str(b.reference_device),
                        "op": op, "dtype": dtype, "comparison": "bitwise" if b.bitwise else "terms",
                        "max_error_ulps": worst.error if math.isfinite(worst.error) else None,
                        "bound_ulps": worst.allowed, "ok": all(o.ok for o in group), "cases": len(group),
                        "worst_case": f"{worst.case.label}: {worst.worst}",
                    })  # fmt: skip
    inherited = {f"{b.name} on {b.device}": [m for m in PROTOCOL if m not in b.methods()] for b in backend_list}
    return {
        "ok": all(r["ok"] for r in rows),
        "rows": rows,
        "inherits_the_reference": inherited,
        "cases": sum(r["cases"] for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_report(report: dict[str, Any]) -> str:
    """The rows as a table, what each backend inherits, and a one-line verdict."""
    lines = [f"{'backend':<10} {'device':<14} {'op':<22} {'dtype':<8} {'max error':>9} {'bound':>13}  result"]
    for r in report["rows"]:
        device = r["device"] if r["device"] == r["reference_device"] else f"{r['device']} vs {r['reference_device']}"
        err = "inf" if r["max_error_ulps"] is None else f"{r['max_error_ulps']:.3g}"
        bound = f"{r['bound_ulps']:.4g} ({'bits' if r['comparison'] == 'bitwise' else 'terms'})"
        result = "pass" if r["ok"] else f"FAIL  worst: {r['worst_case']}"
        lines.append(f"{r['backend']:<10} {device:<14} {r['op']:<22} {r['dtype']:<8} {err:>9} {bound:>13}  {result}")
    for who, methods in report["inherits_the_reference"].items():
        lines += [f"{who} inherits the reference: {', '.join(methods)}"] if methods else []
    lines.append(
        "ulps: (bits) representable values between the two results, the CPU's promise is 0; (terms) units of "
        "eps·|terms| of the formula, a GPU's bound (gpunn/cli/check.py)"
    )
    bad, n = sum(not r["ok"] for r in report["rows"]), len(report["rows"])
    if bad:
        lines.append(f"gpunn check: FAIL: {bad} of {n} rows differ from the reference beyond their bound")
    else:
        seconds = report["seconds"]
        lines.append(f"gpunn check: pass: {n} rows, {report['cases']} cases conform to the reference ({seconds:.1f} s)")
    return "\n".join(lines)


def command(devices: Sequence[Device], as_json: bool = False) -> int:
    """``gpunn check`` on ``devices``: print the report (or JSON); 1 if any row fails, else 0."""
    backend_list = backends(devices)
    if not backend_list:
        why = "Numba is not installed, see pip install 'gpunn[fast]'" if not numba_installed() else "no other Ops"
        where = ", ".join(map(str, devices))
        message = f"gpunn check: only the reference Ops are present on {where}: {why}; nothing to check"
        print(json.dumps({"ok": True, "rows": [], "message": message}) if as_json else message)
        return 0
    report = check(backend_list)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0 if report["ok"] else 1
