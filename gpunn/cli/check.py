"""``gpunn check``: every accelerated Ops override held to the reference Ops.

Each method a device's accelerated Ops overrides (NumbaOps on the CPU when Numba is installed,
CupyOps on a GPU) runs the cases of :func:`cases`, and the reference (:class:`NumpyOps` on the
same device) runs on copies of the same inputs. Every array argument afterwards, and every
array returned, is compared:

- on the CPU, bit for bit: the error is the number of representable values between the two
  (+0 and −0 one apart); two NaNs are equal whatever their payloads.
- on a GPU, within a bound in the size of the terms (NVRTC contracts a·b + c into one fused
  multiply-add, CUDA's exp and tanh are not the host's, sums run in other orders): with
  ``terms`` the formula on absolute values in float64 (for y + a·x: |y| + |a·x|), an element
  passes when |got − want| <= ulps_of(k)·(eps·terms + the smallest subnormal), k the roundings
  of both sides together per output (the tables below, counted as tests/tolerances.py
  explains). Where a result or its terms are not finite, both sides must be equal (or both
  NaN); arrays a method only reads must come out unchanged.

On a GPU the reference itself (CuPy, as ``GPUNN_OPS=reference`` runs) is also held to the
reference on the CPU, with the same bounds.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend.device import CPU, Device, to_numpy
from ..backend.ops import NumpyOps
from ..backend.selection import all_ops, numba_installed

LAYER_OPS = ("matmul", "bias_activation", "activation", "activation_backward", "column_sums", "softmax_cross_entropy")
UPDATE_OPS = ("sum_of_squares", "sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update")
PROTOCOL = LAYER_OPS + UPDATE_OPS
ACTIVATIONS = NumpyOps.ACTIVATIONS
ALPHA = 0.07  # LeakyReLU's slope
DTYPES = ("float32", "float64")
SHAPES, EDGE_SHAPE = ((1, 1), (7, 3), (33, 257), (0, 3)), (5, 7)
SIZES, EDGE_SIZE = (1, 7, 33 * 257), 33
LARGE_SIZE = (1 << 20) + 7  # from here a CPU loop may split a buffer between threads
HYPER = {  # not the defaults, so that a swapped or dropped constant shows
    "sgd_update": {"lr": 0.3},
    "momentum_update": {"lr": 0.3, "momentum": 0.7},
    "adagrad_update": {"lr": 0.2, "eps": 1e-2},
    "rmsprop_update": {"lr": 0.2, "alpha": 0.85, "eps": 1e-2},
    "adam_update": {"lr": 0.03, "beta1": 0.8, "beta2": 0.95, "eps": 1e-3, "step": 3},
}
STATE = {"sgd_update": "", "momentum_update": "v", "adagrad_update": "h", "rmsprop_update": "s", "adam_update": "mv"}
VARIANTS = {"momentum_update": {"nesterov": {"nesterov": True}}, "adam_update": {"adamw": {"weight_decay": 0.7}}}

# Roundings k of both sides together. Activations: libm (the reference's sigmoid through exp and
# log1p, 11 each side; tanh 2 ulps, 4) and tanh' = 1 − a² contracted (5); the rest is exact or
# the same single roundings on both sides (α rounded to the dtype).
FORWARD_ROUNDINGS = {"identity": 0, "relu": 0, "leaky_relu": 0, "sigmoid": 22, "tanh": 8}
BACKWARD_ROUNDINGS = {"identity": 0, "relu": 0, "leaky_relu": 0, "sigmoid": 0, "tanh": 5}
# Updates: one side's count is b + c·k_g with k_g = 4 (the clip factor rounded, g·s, l2·p +
# l1·sign(p), their sum) under a penalty or clipping, else 0; both sides: twice that.
UPDATE_ROUNDINGS = {
    "sgd_update": {"p": (2, 1)},  # p − fl(lr·g)
    "momentum_update": {"v": (2, 1), "p": (4, 1)},  # fl(μ·v) + g; p − fl(lr·v)
    "nesterov": {"v": (2, 1), "p": (6, 1)},  # p − fl(lr·fl(g + fl(μ·v)))
    "adagrad_update": {"h": (2, 2), "p": (7, 3)},  # h + fl(g·g); p − fl(lr·fl(g / fl(fl(√h) + ε)))
    "rmsprop_update": {"s": (3, 2), "p": (8, 3)},
    "adam_update": {"m": (2, 1), "v": (3, 2), "p": (11, 3)},  # fl(p·keep) − fl(step·fl(m / fl(fl(√v·c2) + ε)))
}


def eps(dtype: Any) -> float:
    """The machine epsilon of ``dtype`` (2⁻²³ for float32, 2⁻⁵² for float64): one ulp of 1."""
    return float(np.finfo(np.dtype(dtype)).eps)


def ulps_of(roundings: float) -> float:
    """The allowance, in ulps of the terms, of a chain of k = ``roundings`` roundings: k/2 (each
    at most half an ulp of the magnitude), times 1.001 for second-order terms (exactly
    1 / (1 − k·u), below 1.001 while k·u < 10⁻³: k < 16,000 in float32)."""
    return roundings / 2 * 1.001


def chain(n: int) -> int:
    """Roundings along the longest chain of a sum of n terms, in any order."""
    return max(n - 1, 0)


class Arg(str):
    """A keyword argument that passes the case's array of this name."""


@dataclass(frozen=True)
class Case:
    op: str
    dtype: str
    label: str
    arrays: dict[str, np.ndarray]  # the inputs on the host, the positional ones first
    positional: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.dtype}-{self.label}"


def _data(
    rng: np.random.Generator, shape: Any, dtype: str, edge: bool = False, shift: int = 0, scale: float = 1.0
) -> Any:
    """Normal values; in an edge case the specials at every 8th place from ``shift``: buffers of
    one case shifted by 8 meet other specials in the same places."""
    x = rng.standard_normal(shape) * scale
    flat = x.reshape(-1)
    specials = (math.nan, math.inf, -math.inf, 0.0, -0.0, float(np.finfo(dtype).smallest_subnormal))
    for k, value in enumerate(specials if edge and flat.size else ()):
        flat[(shift + 8 * k) % flat.size] = value
    return x.astype(dtype)


def _formula(z: np.ndarray, activation: str) -> np.ndarray:
    """g(z) in float64, written out plainly."""
    with np.errstate(all="ignore"):
        if activation == "relu":
            return np.maximum(z, 0.0)
        if activation == "leaky_relu":
            return np.where(z > 0, z, ALPHA * z)
        return 1 / (1 + np.exp(-z)) if activation == "sigmoid" else np.tanh(z) if activation == "tanh" else z


def cases(dtypes: Sequence[str] = DTYPES) -> list[Case]:
    """Every case, the same list each call (fixed seeds): sizes 1, 7, 33×257 and 2²⁰ + 7 (AdamW
    only); edge values NaN, ±inf, ±0 and the smallest subnormal; zero rows where a method takes
    them; each update plain, with L2, and with L2, L1 and clipping. Outputs start as NaN (written,
    never accumulated into); the 33×257 cases pass out= (the input itself where a method allows)."""
    out: list[Case] = []
    for dtype in dtypes:
        rng = np.random.default_rng(17)
        for shape in (*SHAPES, EDGE_SHAPE):
            out += _layer_cases(rng, dtype, shape)
        for n in (*SIZES, EDGE_SIZE):
            out += _update_cases(rng, dtype, n)
        out += _update_cases(rng, dtype, LARGE_SIZE, ("adam_update",), only="adamw")  # split between threads
    return out


def _layer_cases(rng: np.random.Generator, dtype: str, shape: tuple[int, int]) -> list[Case]:
    (n, c), edge = shape, shape == EDGE_SHAPE
    label, nans, big = "edge" if edge else f"{n}x{c}", np.full(c, np.nan, dtype), n > 7
    a, b = _data(rng, (n, 4 + c % 5), dtype, edge), _data(rng, (4 + c % 5, c), dtype, edge, 8)
    arrays = {"a": a, "b": b, "out": np.full((n, c), np.nan, dtype)}
    out = [Case("matmul", dtype, label, arrays, 2, {"out": Arg("out")} if big else {})]
    out.append(Case("column_sums", dtype, label, {"x": _data(rng, shape, dtype, edge), "out": nans}, 2))
    if n:
        z = {"z": _data(rng, shape, dtype, edge, scale=5.0), "t": rng.integers(0, c, n)}
        out.append(Case("softmax_cross_entropy", dtype, label, z, 2))
    for act in ACTIVATIONS:
        z, dy = _data(rng, shape, dtype, edge), _data(rng, shape, dtype, edge, 8)
        kw, name = {"activation": act, "alpha": ALPHA}, f"{act}-{label}"
        out.append(Case("bias_activation", dtype, name, {"y": z.copy(), "b": _data(rng, c, dtype)}, 2, kw))
        out.append(Case("activation", dtype, name, {"x": z.copy()}, 1, {**kw, "out": Arg("x")} if big else kw))
        backward = {"dy": dy, "a": _formula(z.astype(np.float64), act).astype(dtype), "db": nans}
        kw = {**kw, **({"db": Arg("db")} if n != 1 else {}), **({"out": Arg("dy")} if big else {})}  # 1x1: no db
        out.append(Case("activation_backward", dtype, name, backward, 2, kw))
    return out


def _update_cases(
    rng: np.random.Generator, dtype: str, n: int, rules: Sequence[str] = UPDATE_OPS[1:], only: str | None = None
) -> list[Case]:
    """sum_of_squares and each rule's variants (``only``: that one, with L2) on n elements."""
    edge, label = n == EDGE_SIZE, "edge" if n == EDGE_SIZE else f"n{n}"
    out = [Case("sum_of_squares", dtype, label, {"x": _data(rng, n, dtype, edge), "out": np.full(1, np.nan)}, 2)]
    for op in rules:
        for variant, extra in {"": {}, **VARIANTS.get(op, {})}.items():
            for penalties in ("", "l2", "l2-l1-clip") if only is None else ("l2",) if variant == only else ():
                arrays = {"p": _data(rng, n, dtype, edge), "g": _data(rng, n, dtype, edge, 8)}
                for i, name in enumerate(STATE[op]):  # second moments are >= 0
                    arrays[name] = _data(rng, n, dtype, edge, 16 + 8 * i)
                    arrays[name] = np.abs(arrays[name]) if name in "hsv" else arrays[name]
                kw = {**HYPER[op], **extra, **({"n_decay": (2 * n + 2) // 3} if variant or penalties else {})}
                kw.update({"l2": 0.1} if penalties else {})
                if penalties == "l2-l1-clip":  # clipped at half the gradient's expected norm
                    arrays["sq_norm"] = np.array([np.sum(arrays["g"].astype(np.float64) ** 2)])
                    kw.update(l1=0.01, clip=(0.5 * math.sqrt(n), Arg("sq_norm")))
                name = "-".join(p for p in (variant, penalties, label) if p)
                out.append(Case(op, dtype, name, arrays, 2 + len(STATE[op]), kw))
    return out


# bounds (GPU)
def bounds(case: Case) -> dict[str, tuple[Any, float]]:
    """Per output of ``case``: (terms, roundings k of both sides); outputs not named: exact."""
    x = {k: v.astype(np.float64) for k, v in case.arrays.items()}
    kw, op = case.kwargs, case.op
    with np.errstate(all="ignore"):
        if op == "matmul":
            return dict.fromkeys(("out", "result"), (np.abs(x["a"]) @ np.abs(x["b"]), 2 * x["a"].shape[1]))
        if op in ("column_sums", "sum_of_squares"):
            a = x["x"]
            terms, k = (np.abs(a).sum(axis=0), chain(len(a))) if op == "column_sums" else (np.sum(a**2), a.size)
            return dict.fromkeys(("out", "result"), (terms, 2 * k))
        if op == "softmax_cross_entropy":
            return _softmax_bounds(x["z"], case.arrays["t"])
        if op in ("bias_activation", "activation"):
            s = (case.arrays["y"] + case.arrays["b"]).astype(np.float64) if op == "bias_activation" else x["x"]
            a = np.abs(_formula(s, kw["activation"]))
            if kw["activation"] == "sigmoid":  # the reference takes exp(−log(1 + e^−s)): |ln a| more
                a = a * (1 + np.abs(np.log(np.maximum(a, np.finfo(np.float64).tiny))))
            return dict.fromkeys(("y", "x", "result"), (a, FORWARD_ROUNDINGS[kw["activation"]]))
        if op == "activation_backward":  # |dy|·|g'|: σ' = a(1 − a) and tanh' = 1 − a² cancel
            a, k = x["a"], BACKWARD_ROUNDINGS[kw["activation"]]
            factor = {"relu": a > 0, "leaky_relu": np.where(a > 0, 1.0, ALPHA), "sigmoid": np.abs(a) * (1 + np.abs(a))}
            terms = np.abs(x["dy"]) * factor.get(kw["activation"], 1 + a * a if kw["activation"] == "tanh" else 1.0)
            dz = dict.fromkeys(("result", "dy") if "out" in kw else ("result",), (terms, k))
            return {**dz, "db": (terms.sum(axis=0), k + 2 * chain(len(terms)) + 2)}
        return _update_bounds(case, x)


def _softmax_bounds(z: np.ndarray, t: np.ndarray) -> dict[str, tuple[Any, float]]:
    """With c the row max, p = softmax(z), A = Σ_j p_j·|z_j − c| (what an error of u·|z_j − c| in
    each shifted logit does to the row's sum): gradient terms (p·(1 + |z − c| + A) + onehot)/N,
    loss terms Σ_rows (ln s + |z_t − c| + 1 + A)/N. Counts per side: the gradient's 16 + the row
    sum's chain (shift 1, exp 3 ulps twice, the division, − onehot, × 1/N), the loss's
    max(8, 6 + chain(C)) + 4 + chain(N)."""
    (n, c), rows = z.shape, np.arange(len(z))
    shifted = np.abs(z - z.max(axis=1, keepdims=True))
    e = np.exp(-shifted)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    weighted = np.where(p > 0, p * shifted, 0.0)  # a masked logit (−inf) adds nothing
    spread = weighted.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(z)
    onehot[rows, t] = 1.0
    grad = (p * (1 + spread) + weighted + onehot) / n
    loss = np.sum(np.log(s[:, 0]) + shifted[rows, t] + 1 + spread[:, 0]) / n
    return {"grad": (grad, 2 * (16 + chain(c))), "loss": (loss, 2 * (max(8, 6 + chain(c)) + 4 + chain(n)))}


def _update_bounds(case: Case, x: dict[str, np.ndarray]) -> dict[str, tuple[Any, float]]:
    """The update's formula on absolute values, G = |g'| = |g|·s + [i < n_decay]·(l2·|p| + l1)."""
    kw, op, p = case.kwargs, case.op, np.abs(x["p"])
    decayed = np.arange(p.size) < kw.get("n_decay", 0)
    ratio = kw["clip"][0] / (math.sqrt(x["sq_norm"][0]) + 1e-6) if "clip" in kw else 1.0
    G = np.abs(x["g"]) * (ratio if ratio < 1 else 1.0)
    G += np.where(decayed, kw.get("l2", 0.0) * p, 0.0) if kw.get("l2") else 0.0  # p only where it counts
    G += decayed * kw.get("l1", 0.0)
    lr = kw["lr"]
    if op == "sgd_update":
        terms = {"p": p + lr * G}
    elif op == "momentum_update":
        v = kw["momentum"] * np.abs(x["v"]) + G
        terms = {"v": v, "p": p + lr * (G + kw["momentum"] * v if kw.get("nesterov") else v)}
    elif op in ("adagrad_update", "rmsprop_update"):
        name, keep = ("h", 1.0) if op == "adagrad_update" else ("s", kw["alpha"])
        acc = keep * np.abs(x[name]) + (1 - keep if name == "s" else 1.0) * G * G
        terms = {name: acc, "p": p + lr * G / (np.sqrt(acc) + kw["eps"])}
    else:
        b1, b2, t = kw["beta1"], kw["beta2"], kw["step"]
        m, v = b1 * np.abs(x["m"]) + (1 - b1) * G, b2 * np.abs(x["v"]) + (1 - b2) * G * G
        keep = np.where(decayed, 1 - lr * kw.get("weight_decay", 0.0), 1.0)
        step = m * (lr / (1 - b1**t)) / (np.sqrt(v) / math.sqrt(1 - b2**t) + kw["eps"])
        terms = {"m": m, "v": v, "p": p * keep + step}
    k_g = 4 if "clip" in kw or (decayed.any() and (kw.get("l2") or kw.get("l1"))) else 0
    counts = UPDATE_ROUNDINGS["nesterov" if kw.get("nesterov") else op]
    return {name: (terms[name], 2 * (b + c * k_g)) for name, (b, c) in counts.items()}


# running and comparing
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
    """The largest error over the elements: representable values apart (``bitwise``), else
    |got − want| in units of eps(dtype)·terms + the smallest subnormal; inf where a NaN, an
    infinity or infinite terms meet anything but their equal."""
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


# the report
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
