"""The cases ``gpunn check`` runs (:func:`cases`), and the bounds a GPU's results are held to.

:func:`bounds` gives per output of a case its terms (the formula on absolute values, in float64;
for y + a·x: |y| + |a·x|) and k, the roundings of both sides together (the tables below, counted
as tests/tolerances.py explains): an element passes when |got − want| <= ulps_of(k)·(eps·terms +
the smallest subnormal). Outputs not named, such as arrays a method only reads, must be exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend.ops import NumpyOps

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
