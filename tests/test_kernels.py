"""gpunn.backend.kernels: the NumPy twins against plain formulas, the fused CUDA kernels against their
twins (GPU only), and the CUDA source compiled with nvcc (where nvcc is installed)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import cuda_source
import numpy as np
import pytest
from cuda_source import needs_nvcc, nvcc_compile
from tolerances import assert_within_term_bound, eps, fma, ulps_of

import gpunn as gn
from gpunn.backend import kernels
from gpunn.backend.cuda import compile as raw_kernels
from gpunn.backend.cuda import update_source

SIZES = (1, 7, 1001)
DTYPES = ("float32", "float64")
RULES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")

# Each rule's hyperparameters (kernel keyword arguments), not the defaults, so a swapped
# or dropped constant shows.
ADAM_CONSTANTS = kernels.adam_constants(0.03, 0.8, 0.95, step=3, weight_decay=0.0)
ADAMW_CONSTANTS = kernels.adam_constants(0.03, 0.8, 0.95, step=3, weight_decay=0.7)
HYPER = {
    "sgd": {"lr": 0.3},
    "momentum": {"lr": 0.3, "momentum": 0.7, "nesterov": False},
    "nesterov": {"lr": 0.3, "momentum": 0.7, "nesterov": True},
    "adagrad": {"lr": 0.2, "eps": 1e-2},
    "rmsprop": {"lr": 0.2, "alpha": 0.85, "eps": 1e-2},
    "adam": {"beta1": 0.8, "beta2": 0.95, "eps": 1e-3, **ADAM_CONSTANTS},
    "adamw": {"beta1": 0.8, "beta2": 0.95, "eps": 1e-3, **ADAMW_CONSTANTS},
}
# The state buffers of each rule, in argument order, and whether they must be >= 0.
STATE = {
    "sgd": (),
    "momentum": (("v", False),),
    "nesterov": (("v", False),),
    "adagrad": (("h", True),),
    "rmsprop": (("s", True),),
    "adam": (("m", False), ("v", True)),
    "adamw": (("m", False), ("v", True)),
}
KERNEL_OF = {
    "sgd": "sgd",
    "momentum": "momentum",
    "nesterov": "momentum",
    "adagrad": "adagrad",
    "rmsprop": "rmsprop",
    "adam": "adam",
    "adamw": "adam",
}


def buffers(n: int, dtype: str, rule: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"p": rng.standard_normal(n), "g": rng.standard_normal(n)}
    if n > 3:
        out["g"][3] = 0.0  # a zero gradient with zero state: 0 / (0 + eps)
    for name, positive in STATE[rule]:
        out[name] = np.abs(rng.standard_normal(n)) if positive else rng.standard_normal(n)
        if n > 3:
            out[name][3] = 0.0
    return {k: v.astype(dtype) for k, v in out.items()}


def extra(rule: str, n: int) -> dict:
    """Keyword arguments besides the hyperparameters (AdamW decays the first n_decay elements)."""
    if rule == "adam":
        return {"n_decay": n}  # Adam's decay_factor is 1: n_decay must not matter
    if rule == "adamw":
        return {"n_decay": (2 * n) // 3}
    return {}


def textbook(rule: str, b: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The update written out of place in float64, from the formulas in kernels' docstrings
    (with NumPy or CuPy, whichever holds ``b``)."""
    xp = gn.array_module(b["p"])
    h = HYPER[rule]
    p, g = b["p"].astype(np.float64), b["g"].astype(np.float64)
    if rule == "sgd":
        return {"p": p - h["lr"] * g}
    if rule in ("momentum", "nesterov"):
        v = h["momentum"] * b["v"].astype(np.float64) + g
        step = g + h["momentum"] * v if h["nesterov"] else v
        return {"p": p - h["lr"] * step, "v": v}
    if rule == "adagrad":
        acc = b["h"].astype(np.float64) + g * g
        return {"p": p - h["lr"] * g / (xp.sqrt(acc) + h["eps"]), "h": acc}
    if rule == "rmsprop":
        s = h["alpha"] * b["s"].astype(np.float64) + (1 - h["alpha"]) * g * g
        return {"p": p - h["lr"] * g / (xp.sqrt(s) + h["eps"]), "s": s}
    m = h["beta1"] * b["m"].astype(np.float64) + (1 - h["beta1"]) * g
    v = h["beta2"] * b["v"].astype(np.float64) + (1 - h["beta2"]) * g * g
    n_decay = extra(rule, n)["n_decay"]
    decayed = xp.where(xp.arange(n) < n_decay, p * h["decay_factor"], p)
    p_new = decayed - h["step_size"] * m / (xp.sqrt(v) * h["inv_sqrt_bc2"] + h["eps"])
    return {"p": p_new, "m": m, "v": v}


def call(rule: str, fn_kind: str, b: dict, tmp) -> None:
    """Run kernels.<rule>_<fn_kind> ("reference" or "update") on the buffers in ``b``."""
    fn = getattr(kernels, f"{KERNEL_OF[rule]}_{fn_kind}")
    state = [b[name] for name, _ in STATE[rule]]
    fn(b["p"], b["g"], *state, tmp, **HYPER[rule], **extra(rule, b["p"].size))


def magnitudes(rule: str, b: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The textbook formula evaluated on absolute values: the scale of every term that is
    added, so that rounding error (and cancellation) is bounded by a few ulps of it."""
    xp = gn.array_module(b["p"])
    h = HYPER[rule]
    p, g = xp.abs(b["p"].astype(np.float64)), xp.abs(b["g"].astype(np.float64))
    if rule == "sgd":
        return {"p": p + h["lr"] * g}
    if rule in ("momentum", "nesterov"):
        v = h["momentum"] * xp.abs(b["v"].astype(np.float64)) + g
        step = g + h["momentum"] * v if h["nesterov"] else v
        return {"p": p + h["lr"] * step, "v": v}
    if rule == "adagrad":
        acc = b["h"].astype(np.float64) + g * g
        return {"p": p + h["lr"] * g / (xp.sqrt(acc) + h["eps"]), "h": acc}
    if rule == "rmsprop":
        s = h["alpha"] * b["s"].astype(np.float64) + (1 - h["alpha"]) * g * g
        return {"p": p + h["lr"] * g / (xp.sqrt(s) + h["eps"]), "s": s}
    m = h["beta1"] * xp.abs(b["m"].astype(np.float64)) + (1 - h["beta1"]) * g
    v = h["beta2"] * b["v"].astype(np.float64) + (1 - h["beta2"]) * g * g
    n_decay = extra(rule, n)["n_decay"]
    decayed = xp.where(xp.arange(n) < n_decay, p * h["decay_factor"], p)
    return {"p": decayed + h["step_size"] * m / (xp.sqrt(v) * h["inv_sqrt_bc2"] + h["eps"]), "m": m, "v": v}


# The roundings along the longest chain from an input to each output, counted as
# tests/tolerances.py says, for the twin (update_twins: one rounding per NumPy operation):
# (1) with the hyperparameters rounded to the buffer's dtype, as twin and kernel both use them;
# (2) with each rounded hyperparameter counted as one rounding more, against the float64
# textbook. The kernel does the same operations (some in another association, with the same
# counts), except that a fused multiply-add drops one rounding: its counts are at most these
# whatever the compiler contracts, so fused vs twin allows twice count (1).
ROUNDINGS = {  # (rule, buffer): (count with the dtype's constants, count against the textbook)
    ("sgd", "p"): (2, 3),  # p − fl(lr·g)
    ("momentum", "v"): (2, 3),  # fl(μ·v) + g
    ("momentum", "p"): (4, 6),  # p − fl(lr·v)
    ("nesterov", "v"): (2, 3),
    ("nesterov", "p"): (6, 9),  # p − fl(lr·fl(g + fl(μ·v)))
    ("adagrad", "h"): (2, 2),  # h + fl(g·g)
    ("adagrad", "p"): (7, 8),  # p − fl(lr·fl(g / fl(fl(√h) + ε))), h counting 2
    ("rmsprop", "s"): (3, 4),  # fl(α·s) + fl((1−α)·fl(g·g))
    ("rmsprop", "p"): (8, 10),  # as AdaGrad's, s counting 3
    ("adam", "m"): (2, 3),  # fl(β1·m) + fl((1−β1)·g)
    ("adam", "v"): (3, 4),  # fl(β2·v) + fl((1−β2)·fl(g·g))
    ("adam", "p"): (11, 15),  # fl(p·keep) − fl(step·fl(m / fl(fl(fl(√v)·c2) + ε))), m 2 and v 3
    ("axpy", "y"): (2, 3),  # y + fl(a·x)
    ("sgd_l2", "p"): (4, 6),  # p − fl(lr·fl(g + fl(l2·p)))
}


def ulps(rule: str, name: str, against: str) -> float:
    """The allowance of ``rule``'s output ``name`` against "twin" (kernel vs twin, or an emulated
    kernel vs twin) or "textbook" (either of them vs the float64 formula)."""
    same_constants, textbook = ROUNDINGS[("adam" if rule == "adamw" else rule, name)]
    return ulps_of(2 * same_constants if against == "twin" else textbook)


# ----------------------------------------------------------------------------- NumPy twins


def test_adam_constants_closed_form():
    c = kernels.adam_constants(0.01, 0.9, 0.999, step=4, weight_decay=0.05)
    assert c["step_size"] == pytest.approx(0.01 / (1 - 0.9**4), rel=1e-15)
    assert c["inv_sqrt_bc2"] == pytest.approx(1 / math.sqrt(1 - 0.999**4), rel=1e-15)
    assert c["decay_factor"] == pytest.approx(1 - 0.01 * 0.05, rel=1e-15)
    assert all(type(v) is float for v in c.values())
    assert kernels.adam_constants(0.01, 0.9, 0.999, step=1, weight_decay=0.0)["decay_factor"] == 1.0


@pytest.mark.parametrize("fn_kind", ["reference", "update"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rule", RULES)
def test_numpy_twin_matches_textbook(rule, n, dtype, fn_kind):
    """Each *_reference (and *_update, which runs it on NumPy arrays) computes the formula in
    place, whatever the scratch buffer held before."""
    b = buffers(n, dtype, rule)
    expected = textbook(rule, b, n)
    tmp = np.full(n, np.nan, dtype=dtype)  # garbage in the scratch buffer must not leak out
    g_before = b["g"].copy()
    call(rule, fn_kind, b, tmp)
    np.testing.assert_array_equal(b["g"], g_before)  # the gradient is read only
    scale = magnitudes(rule, buffers(n, dtype, rule), n)
    assert set(expected) == set(scale)
    for name, want in expected.items():
        assert b[name].dtype == np.dtype(dtype)
        bound = ulps(rule, name, "textbook")
        assert_within_term_bound(b[name], want, scale[name], dtype, bound, what=f"{rule} {name}")


def test_adam_reference_decays_only_the_prefix():
    n = 10
    p = np.ones(n)
    kernels.adam_reference(
        p,
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
        np.empty(n),
        n_decay=4,
        step_size=0.1,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        inv_sqrt_bc2=1.0,
        decay_factor=0.5,
    )
    np.testing.assert_array_equal(p, [0.5] * 4 + [1.0] * 6)


# ----------------------------------------------------------------------------- fused kernels (GPU)


def _gpu_buffers(cp, n: int, dtype: str, rule: str) -> dict:
    if n <= 10_000:
        return {k: cp.asarray(v) for k, v in buffers(n, dtype, rule).items()}
    gen = cp.random.default_rng(0)
    out = {"p": gen.standard_normal(n, dtype=dtype), "g": gen.standard_normal(n, dtype=dtype)}
    for name, positive in STATE[rule]:
        x = gen.standard_normal(n, dtype=dtype)
        out[name] = cp.abs(x) if positive else x
    return out


# 65_535 blocks × 256 threads + 3: the grid-stride loop must go round a second time.
BIG = kernels.MAX_BLOCKS * kernels.THREADS_PER_BLOCK + 3


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "dtype"), [(n, d) for n in SIZES for d in DTYPES] + [(BIG, "float32")])
@pytest.mark.parametrize("rule", RULES)
def test_fused_kernel_matches_its_twin(gpu, monkeypatch, rule, n, dtype):
    """kernels.<rule>_update on CuPy arrays launches the fused RawModule kernel; its result
    equals the *_reference twin run on copies, and the float64 textbook, within rounding."""
    cp = gpu.xp
    with gpu:
        fused = _gpu_buffers(cp, n, dtype, rule)
        original = {k: v.copy() for k, v in fused.items()}
        twin = {k: v.copy() for k, v in fused.items()}

        def not_the_twin(*args, **kwargs):
            raise AssertionError("the CuPy path ran the NumPy twin instead of the fused kernel")

        monkeypatch.setattr(kernels, f"{KERNEL_OF[rule]}_reference", not_the_twin)
        call(rule, "update", fused, None)  # the fused kernel needs no scratch buffer
        monkeypatch.undo()
        call(rule, "reference", twin, cp.empty(n, dtype=dtype))
        scale = magnitudes(rule, original, n)
        expected = textbook(rule, original, n)
        assert set(scale) == set(expected) == set(fused) - {"g"}
        assert bool((fused["g"] == original["g"]).all())
        for name in scale:
            assert fused[name].dtype == np.dtype(dtype)
            # the kernel's fused multiply-adds round differently from the twin: a bound in the terms
            what = f"{rule} {name}"
            bound = ulps(rule, name, "twin")
            assert_within_term_bound(fused[name], twin[name], scale[name], dtype, bound, what=f"{what}: fused vs twin")
            bound = ulps(rule, name, "textbook")
            assert_within_term_bound(fused[name], expected[name], scale[name], dtype, bound, what=f"{what}: textbook")


# ----------------------------------------------------------------------------- CUDA source (nvcc)

# Each kernel's parameter list, written from the arguments kernels.py passes at launch:
# device pointers of the buffer's type T, then np.int64 (long long), np.float64 (double),
# np.int32 (int); the optional device scalars (sq_norm, live) are float64 arrays or kernels.NULL
# (np.uint64(0)). Explicit instantiations with these types fail to compile if the source
# disagrees.
FUSED = ("const double", "const double", "const double", "const double*", "const double*")  # l2 l1 max_norm sq live
SIGNATURES = {
    "sgd_update": ("T*", "const T*", "const long long", "const long long", "const double", *FUSED),
    "momentum_update": (
        "T*",
        "const T*",
        "T*",
        "const long long",
        "const long long",
        "const double",
        "const double",
        "const int",
        *FUSED,
    ),
    "adagrad_update": (
        "T*",
        "const T*",
        "T*",
        "const long long",
        "const long long",
        "const double",
        "const double",
        *FUSED,
    ),
    "rmsprop_update": (
        "T*",
        "const T*",
        "T*",
        "const long long",
        "const long long",
        "const double",
        "const double",
        "const double",
        *FUSED,
    ),
    "adam_update": (
        "T*",
        "const T*",
        "T*",
        "T*",
        "const long long",
        "const long long",
        "const double",  # step_size
        "const double",  # beta1
        "const double",  # beta2
        "const double",  # eps
        "const double",  # inv_sqrt_bc2
        "const double",  # decay_factor
        "const double",  # weight_decay
        *FUSED,
    ),
    "axpy_update": ("T*", "const T*", "const long long", "const double"),
    "sum_of_squares": ("const T*", "const long long", "double*"),
}
# extern "C" kernels (not templates): a redeclaration with other parameter types fails to compile
PLAIN_SIGNATURES = {"zero_sum": ("double*",), "advance_step": ("double*",)}
SCALAR_TYPES = {"const long long": np.int64, "const double": np.float64, "const int": np.int32}


def test_signature_table_covers_every_kernel():
    assert set(SIGNATURES) == set(kernels.KERNEL_NAMES)
    assert set(PLAIN_SIGNATURES) == set(kernels.PLAIN_KERNEL_NAMES)
    for name in kernels.KERNEL_NAMES:
        assert re.search(rf"template <typename T>\s+__global__\s+void\s+{name}\s*\(", kernels.CUDA_SOURCE), name
    for name in kernels.PLAIN_KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__\s+void\s+{name}\s*\(', kernels.CUDA_SOURCE), name


def record_launches(monkeypatch) -> list[tuple[str, object, tuple, tuple, tuple]]:
    """Make every launch of gpunn.backend.kernels (on NumPy arrays taken for device arrays) a record
    (name, dtype, blocks, threads, args) instead. The update and device-scalar functions look
    both seams up on their modules, so patching these two covers every launch."""
    launches: list = []
    monkeypatch.setattr(raw_kernels, "is_gpu", lambda x: True)
    monkeypatch.setattr(
        update_source,
        "launch",
        lambda xp, name, dtype, blocks, threads, args: launches.append((name, dtype, blocks, threads, args)),
    )
    return launches


def check_argument_types(name: str, args: tuple, dtype: str) -> None:
    signature = SIGNATURES[name]
    assert len(args) == len(signature), (name, len(args), len(signature))
    for i, (arg, ctype) in enumerate(zip(args, signature, strict=True)):
        if ctype.endswith("T*"):
            assert isinstance(arg, np.ndarray), (name, i)
            assert arg.dtype == np.dtype(dtype)
            assert arg.ndim == 1
        elif ctype.endswith("double*"):  # an optional device scalar: a float64 array or NULL
            if isinstance(arg, np.ndarray):
                assert arg.dtype == np.float64, (name, i)
            else:
                assert type(arg) is np.uint64, (name, i, type(arg))
                assert arg == 0
        else:
            assert type(arg) is SCALAR_TYPES[ctype], (name, i, type(arg), ctype)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_launch_arguments_match_kernel_signatures(monkeypatch, rule, dtype, fused):
    """What the Python side passes to each kernel has exactly the C parameter types (a CuPy
    RawKernel passes NumPy scalars by their own type, so a mismatch would read garbage), with
    and without the penalty / clipping / live-scalar arguments."""
    launches = record_launches(monkeypatch)
    n = 7
    b = buffers(n, dtype, rule)
    sq_norm, live = np.array([4.0]), np.array([0.01, 3.0])
    options = {"l2": 0.25, "l1": 0.125, "max_norm": 1.5, "sq_norm": sq_norm, "live": live} if fused else {}
    fn = getattr(kernels, f"{KERNEL_OF[rule]}_update")
    hyper = {**HYPER[rule], **extra(rule, n)}
    if rule not in ("adam", "adamw"):
        hyper["n_decay"] = 5
    if rule == "adamw":
        hyper["weight_decay"] = 0.7
    fn(b["p"], b["g"], *[b[name] for name, _ in STATE[rule]], None, **hyper, **options)
    assert len(launches) == 1  # one launch per update, whatever is fused into it
    name, dtype_arg, blocks, threads, args = launches[0]
    assert name == f"{KERNEL_OF[rule]}_update"
    assert np.dtype(dtype_arg) == np.dtype(dtype)
    assert blocks == kernels.grid(n) and threads == (kernels.THREADS_PER_BLOCK,)
    check_argument_types(name, args, dtype)
    signature = SIGNATURES[name]
    first_int = signature.index("const long long")
    assert args[first_int] == n
    assert args[first_int + 1] == hyper["n_decay"]
    if rule == "nesterov":
        assert args[signature.index("const int")] == 1
    if rule == "adamw":
        assert args[-6] == 0.7  # weight_decay, for the kernel's own decay factor in live mode
    l2, l1, max_norm, sq_arg, live_arg = args[-5:]
    if fused:
        assert (l2, l1, max_norm) == (0.25, 0.125, 1.5)
        assert sq_arg is sq_norm
        assert live_arg is live
    else:
        assert (l2, l1) == (0.0, 0.0)
        assert sq_arg is kernels.NULL and live_arg is kernels.NULL
    # the buffers passed are the caller's own (updated in place), in order p, g, state...
    assert args[0] is b["p"]
    assert args[1] is b["g"]
    for k, (state_name, _) in enumerate(STATE[rule]):
        assert args[2 + k] is b[state_name]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_and_advance_step_launches(monkeypatch, dtype):
    """Clipping's reduction is two launches (zero the output, then add every block's sum);
    the step counter one single-thread launch; their arguments match the signatures."""
    launches = record_launches(monkeypatch)
    n = 3 * kernels.REDUCE_BLOCKS * kernels.THREADS_PER_BLOCK  # more blocks than the reduction uses
    x, out, live = np.ones(n, dtype=dtype), np.zeros(1), np.zeros(2)
    kernels.sum_of_squares(x, out)
    kernels.advance_step(live)
    assert [launch[0] for launch in launches] == ["zero_sum", "sum_of_squares", "advance_step"]
    (_, zero_dtype, zero_blocks, zero_threads, zero_args) = launches[0]
    assert zero_dtype is None and zero_blocks == (1,) and zero_threads == (1,)
    assert len(zero_args) == 1 and zero_args[0] is out
    _, sum_dtype, blocks, threads, args = launches[1]
    assert np.dtype(sum_dtype) == np.dtype(dtype)
    assert blocks == (kernels.REDUCE_BLOCKS,) and threads == (kernels.THREADS_PER_BLOCK,)
    assert kernels.THREADS_PER_BLOCK % 32 == 0  # the block reduction works in whole warps
    check_argument_types("sum_of_squares", args, dtype)
    assert args[0] is x and args[1] == n and args[2] is out
    _, step_dtype, step_blocks, step_threads, step_args = launches[2]
    assert step_dtype is None and step_blocks == (1,) and step_threads == (1,)
    assert len(step_args) == 1 and step_args[0] is live


def test_device_scalars_are_checked_before_launch(monkeypatch):
    """A wrongly typed sq_norm / live / out would be read as garbage by the kernel: refused."""
    launches = record_launches(monkeypatch)
    p, g = np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="sq_norm"):
        kernels.sgd_update(p, g, None, lr=0.1, max_norm=1.0, sq_norm=np.zeros(1, dtype=np.float32))
    with pytest.raises(ValueError, match="live"):
        kernels.sgd_update(p, g, None, lr=0.1, live=np.zeros(1))  # [lr, t] needs two elements
    with pytest.raises(ValueError, match="max_norm"):
        kernels.sgd_update(p, g, None, lr=0.1, sq_norm=np.zeros(1))
    with pytest.raises(ValueError, match="out"):
        kernels.sum_of_squares(g, np.zeros(1, dtype=np.float32))
    assert launches == []


def test_fused_path_refuses_non_contiguous_buffers(monkeypatch):
    monkeypatch.setattr(raw_kernels, "is_gpu", lambda x: True)
    monkeypatch.setattr(update_source, "launch", lambda *a: pytest.fail("launched on a strided buffer"))
    p = np.zeros(10)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.sgd_update(p[::2], np.zeros(5), None, lr=0.1)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.sum_of_squares(p[::2], np.zeros(1))


def instantiations() -> str:
    plain = "".join(
        f'extern "C" __global__ void {name}({", ".join(params)});\n' for name, params in PLAIN_SIGNATURES.items()
    )
    return cuda_source.instantiations({name: SIGNATURES[name] for name in kernels.KERNEL_NAMES}) + plain


@needs_nvcc
def test_cuda_source_compiles_for_sm90(tmp_path):
    result, cubin = nvcc_compile(kernels.CUDA_SOURCE + "\n" + instantiations(), tmp_path)
    assert result.returncode == 0, result.stderr
    # every kernel was emitted for both element types (Itanium-mangled names: _Z<len><name>I<f|d>E)
    for name in kernels.KERNEL_NAMES:
        for code in "fd":
            assert cuda_source.mangled(name, code) in cubin, (name, code)
    for name in kernels.PLAIN_KERNEL_NAMES:  # extern "C": the plain name, which get_function looks up
        assert name.encode() + b"\0" in cubin, name


@needs_nvcc
def test_nvcc_check_catches_broken_source(tmp_path):
    """The compile check above is not vacuous: a syntax error and a type mismatch both fail."""
    statement = "p[i] = pi - lr_ * grad(i, g[i], pi);"
    assert statement in kernels.CUDA_SOURCE
    broken = kernels.CUDA_SOURCE.replace(statement, statement[:-1]) + "\n" + instantiations()
    result, _ = nvcc_compile(broken, tmp_path)
    assert result.returncode != 0
    assert "error" in result.stderr + result.stdout
    wrong_type = kernels.CUDA_SOURCE + "\ntemplate __global__ void sgd_update<float>(float*, const float*, int, int);\n"
    result, _ = nvcc_compile(wrong_type, tmp_path)
    assert result.returncode != 0
    # a live pointer declared as float* instead of const double*: the fused tail is checked too
    tail = ", ".join(["float*", "const float*", "long long", "long long", "double", "double", "double", "double"])
    wrong_pointer = (
        kernels.CUDA_SOURCE + f"\ntemplate __global__ void sgd_update<float>({tail}, const double*, float*);\n"
    )
    result, _ = nvcc_compile(wrong_pointer, tmp_path)
    assert result.returncode != 0
    wrong_plain = kernels.CUDA_SOURCE + '\nextern "C" __global__ void advance_step(float*);\n'
    result, _ = nvcc_compile(wrong_plain, tmp_path)
    assert result.returncode != 0


# ----------------------------------------------------------------------------- the CPU runner


@pytest.mark.parametrize("size", [1, kernels.CHUNK - 1, 3 * kernels.CHUNK + 5, kernels.PARALLEL_MIN + 12_345])
def test_cpu_runner_in_pieces_and_threads_equals_one_pass(size: int) -> None:
    """Cutting an update into cache-sized pieces (and threads) must not change one bit."""
    rng = np.random.default_rng(size)
    p, g = rng.standard_normal(size, dtype=np.float32), rng.standard_normal(size, dtype=np.float32)
    m, v = rng.standard_normal(size, dtype=np.float32), rng.random(size, dtype=np.float32)
    n_decay = (2 * size) // 3 + 1  # a prefix that ends inside some piece
    hyper = {
        "n_decay": min(n_decay, size),
        "step_size": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "inv_sqrt_bc2": 1.3,
        "decay_factor": 0.99,
    }
    expected = [a.copy() for a in (p, m, v)]
    kernels.adam_reference(*expected[:1], g, *expected[1:], np.empty(size, np.float32), **hyper)
    rows = kernels.scratch(size, np.float32)
    assert rows.shape[1] <= kernels.CHUNK
    kernels.adam_update(p, g, m, v, rows, **hyper)
    for got, want in zip((p, m, v), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_cpu_scratch_does_not_grow_with_the_model() -> None:
    assert kernels.scratch(100, np.float32).shape == (1, 100)
    big = kernels.scratch(50_000_000, np.float32)
    assert big.shape == (kernels.cpu_workers(), kernels.CHUNK)


# ----------------------------------------------------------------------------- y ← y + a·x

AXPY_A = 0.3


def axpy_data(dtype: str, n: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """y and x for y ← y + a·x: n normal values (under a tolerance relative to the result about
    3 in 1,000 of them fail when the product is fused), then n more with y ≈ −a·x (cancelling)."""
    rng = np.random.default_rng(5)
    y, x = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    x2 = rng.standard_normal(n).astype(dtype)
    y2 = (-AXPY_A * x2.astype(np.float64) * (1 + 1e-6 * rng.standard_normal(n))).astype(dtype)
    return np.concatenate([y, y2]), np.concatenate([x, x2])


def axpy_terms(y, x, dtype: str, a: float = AXPY_A) -> np.ndarray:
    """|y| + |a·x| in float64 (a as rounded to ``dtype``, which kernel and twin both use)."""
    a = float(np.dtype(dtype).type(a))
    return np.abs(y.astype(np.float64)) + np.abs(a * x.astype(np.float64))


@pytest.mark.parametrize("size", [1, 7, kernels.CHUNK + 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy_twin_is_the_formula(size: int, dtype: str) -> None:
    rng = np.random.default_rng(size)
    y, x = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    expected = y.astype(np.float64) + 0.3 * x.astype(np.float64)
    terms = np.abs(y.astype(np.float64)) + 0.3 * np.abs(x.astype(np.float64))
    kernels.axpy_update(y, x, kernels.scratch(size, dtype), a=0.3)
    # y + 0.3·x cancels, so the error is relative to |y| + 0.3·|x|, not to the result
    assert_within_term_bound(y, expected, terms, dtype, ulps("axpy", "y", "textbook"), what="axpy twin")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_axpy_equals_twin(gpu, dtype: str) -> None:
    """The kernel's y += a*x is one fused multiply-add, the twin rounds a·x first: within
    2 ulps of |y| + |a·x| of each other (1.5 of the float64 formula), cancellation or not."""
    y, x = axpy_data(dtype)
    expected = y.copy()
    kernels.axpy_reference(expected, x, np.empty_like(x), a=AXPY_A)
    exact, terms = y.astype(np.float64) + AXPY_A * x.astype(np.float64), axpy_terms(y, x, dtype)
    y_gpu = gpu.send(y)
    kernels.axpy_update(y_gpu, gpu.send(x), None, a=AXPY_A)
    got = gn.to_numpy(y_gpu)
    assert_within_term_bound(got, expected, terms, dtype, ulps("axpy", "y", "twin"), what="axpy: fused vs twin")
    bound = ulps("axpy", "y", "textbook")
    assert_within_term_bound(got, exact, axpy_terms(y, x, "float64"), dtype, bound, what="axpy: fused vs formula")


# ----------------------------------------------------------------------------- contraction, emulated on the CPU

# What NVRTC and ptxas make of the kernels (their SASS for sm_90, compiled with gpunn's options):
# y += a*x is one FFMA; sgd_update's ĝ = g + l2·p and p − lr·ĝ are two (FFMA e, l2, p, g and
# FFMA p, lr, -e, p); momentum's v = μ·v + g and p − lr·v (Nesterov: g + μ·v too) likewise.
# The twins round every product. fma() below computes what one FFMA does, exactly, so these
# tests show on the CPU that the term bounds the GPU tests use hold where relative ones fail.
SGD_L2 = {"lr": 0.3, "l2": 0.1}


def cancelling_update(rule: str, n: int = 2000, dtype: str = "float32") -> tuple[dict, int]:
    """Buffers for ``rule`` ("sgd_l2", "momentum" or "nesterov"), and n_decay (sgd_l2 adds the
    L2 term on the first 3/4): normal values, then the gradient chosen so that the new p
    nearly cancels (p ≈ lr·step), where a fused multiply-add and the twin differ most."""
    b = {k: v.astype(np.float64) for k, v in buffers(n, "float64", "sgd" if rule == "sgd_l2" else rule).items()}
    rng = np.random.default_rng(11)
    n_decay = (3 * n) // 4 if rule == "sgd_l2" else 0
    half, p = slice(n // 2, n), b["p"][n // 2 :]
    lr = SGD_L2["lr"] if rule == "sgd_l2" else HYPER[rule]["lr"]
    if rule == "sgd_l2":
        decayed = np.arange(n // 2, n) < n_decay
        g = p / lr - SGD_L2["l2"] * p * decayed  # p − lr·(g + l2·p) ≈ 0
    elif rule == "momentum":
        g = p / lr - HYPER[rule]["momentum"] * b["v"][half]  # p − lr·(μ·v + g) ≈ 0
    else:
        mu = HYPER[rule]["momentum"]
        g = (p / lr - mu * mu * b["v"][half]) / (1 + mu)  # p − lr·(g + μ·(μ·v + g)) ≈ 0
    b["g"][half] = g * (1 + 1e-6 * rng.standard_normal(g.size))
    return {k: v.astype(dtype) for k, v in b.items()}, n_decay


def sgd_l2_terms(b: dict, n_decay: int, dtype: str) -> np.ndarray:
    """|p| + lr·(|g| + l2·|p|) (the L2 term on the first n_decay elements), in float64."""
    lr, l2 = (float(np.dtype(dtype).type(SGD_L2[k])) for k in ("lr", "l2"))
    p, g = np.abs(b["p"].astype(np.float64)), np.abs(b["g"].astype(np.float64))
    return p + lr * (g + l2 * p * (np.arange(p.size) < n_decay))


def twin_update(rule: str, b: dict, n_decay: int) -> dict:
    """The NumPy twin of ``rule`` on copies of the buffers."""
    out = {k: v.copy() for k, v in b.items()}
    n = out["p"].size
    if rule == "sgd_l2":
        kernels.sgd_reference(out["p"], out["g"], np.empty(2 * n, out["p"].dtype), n_decay=n_decay, **SGD_L2)
    else:
        call(rule, "reference", out, np.empty(n, out["p"].dtype))
    return out


def contracted_update(rule: str, b: dict, n_decay: int) -> dict:
    """The float32 kernel of ``rule`` as its SASS computes it: every product that feeds a sum
    fused with it (one rounding), through :func:`tolerances.fma`."""
    f = np.float32
    p, g = b["p"], b["g"]
    if rule == "sgd_l2":
        e = np.where(np.arange(p.size) < n_decay, fma(f(SGD_L2["l2"]), p, g), g)
        return {"p": fma(-f(SGD_L2["lr"]), e, p), "g": g}
    mu, lr = f(HYPER[rule]["momentum"]), f(HYPER[rule]["lr"])
    v = fma(mu, b["v"], g)
    step = fma(mu, v, g) if rule == "nesterov" else v
    return {"p": fma(-lr, step, p), "g": g, "v": v}


def test_fma_emulation_rounds_once() -> None:
    """tolerances.fma is a correctly rounded float32 fused multiply-add: exact against rational
    arithmetic, also where plain float64 arithmetic rounds twice to the wrong neighbour."""
    a, b, c = np.float32((1 + 2**-15) * 2**-24), np.float32(1 - 2**-15), np.float32(1 + 2**-23)
    # a·b + c = 1 + 3·2⁻²⁴ − 2⁻⁵⁴: just below the midpoint of two float32 neighbours
    assert fma(a, b, c) == np.float32(1 + 2**-23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1 + 2**-22)  # rounded twice
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300).astype(np.float32)
    y = (rng.standard_normal(300) * np.exp2(rng.integers(-30, 30, 300))).astype(np.float32)
    z = (-(x.astype(np.float64) * y) * (1 + 1e-7 * rng.standard_normal(300))).astype(np.float32)
    z[::3] = rng.standard_normal(100).astype(np.float32)
    for xi, yi, zi, got in zip(x, y, z, fma(x, y, z), strict=True):
        exact = Fraction(float(xi)) * Fraction(float(yi)) + Fraction(float(zi))
        near = np.float32(float(exact))
        candidates = (near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf)))
        want = min(candidates, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.int32)) & 1))
        assert got == want, (xi, yi, zi, got, want)


def test_term_bound_check() -> None:
    """assert_within_term_bound: the bound scales with the terms, not the values; 0 ulps means
    equal; equal infinities pass, a NaN fails; the message names the count and the worst."""
    terms = np.array([1.0, 1.0, 1e6, 2.0])
    want = np.array([1e-9, 0.0, 1.0, np.inf])
    got = want + np.array([1.5, 0.0, 1.6e6, 0.0]) * eps("float32")
    assert_within_term_bound(got, want, terms, "float32", 1.6)
    assert_within_term_bound(want, want, terms, "float32", 0)
    with pytest.raises(AssertionError, match=r"^x: 2 of 4 element\(s\) .* 1\.4 ulps .*index \(2,\)"):
        assert_within_term_bound(got, want, terms, "float32", 1.4, what="x")
    got[1] = np.nan
    with pytest.raises(AssertionError, match=r"1 of 4 .*index \(1,\): got nan"):
        assert_within_term_bound(got, want, terms, "float32", 2)
    assert_within_term_bound(np.float32(1.0), 1.0 + 2e-7, 1.0, "float32", 2)  # scalars too


def test_contracted_axpy_needs_the_term_bound() -> None:
    """The fused kernel's fl(a·x + y) against the twin's fl(y + fl(a·x)) in float32: a tolerance
    relative to the result (the old GPU test's rtol=1e-6) fails, on normal values (elements
    466, 477 and 959 of the old test's data) and nearly everywhere y ≈ −a·x; the bound of
    2 ulps of |y| + |a·x| holds for every element, and fails for a kernel off by a little more."""
    y, x = axpy_data("float32")
    n = y.size // 2
    twin = y.copy()
    kernels.axpy_update(twin, x, kernels.scratch(y.size, "float32"), a=AXPY_A)
    contracted = fma(np.float32(AXPY_A), x, y)
    assert (contracted != twin).sum() > n // 10  # the contraction does change bits
    relative_fails = ~np.isclose(contracted, twin, rtol=1e-6, atol=0)
    assert list(np.flatnonzero(relative_fails[:n])) == [466, 477, 959]
    assert relative_fails[n:].sum() > 0.9 * n
    terms, bound = axpy_terms(y, x, "float32"), ulps("axpy", "y", "twin")
    assert_within_term_bound(contracted, twin, terms, "float32", bound, what="emulated axpy kernel vs twin")
    exact = y.astype(np.float64) + AXPY_A * x.astype(np.float64)
    textbook = ulps("axpy", "y", "textbook")
    assert_within_term_bound(contracted, exact, axpy_terms(y, x, "float64"), "float32", textbook, what="vs formula")
    # the check can fail: a result off by 3 ulps of its terms in one element
    off = contracted.astype(np.float64)
    off[7] += 3 * eps("float32") * terms[7]
    with pytest.raises(AssertionError, match=r"1 of 2002 element\(s\) differ by more than 2\.002 ulps .*index \(7,\)"):
        assert_within_term_bound(off, twin, terms, "float32", bound)


@pytest.mark.parametrize("rule", ["sgd_l2", "momentum", "nesterov"])
def test_contracted_update_needs_the_term_bound(rule: str) -> None:
    """The same for the optimizer updates whose kernels fuse their products (p ← p − lr·ĝ with
    ĝ = g + l2·p; momentum; Nesterov): relative to the new p the twin and the emulated kernel
    differ by far more than rtol=1e-6 where p nearly cancels, within the terms' bound everywhere."""
    b, n_decay = cancelling_update(rule)
    twin, contracted = twin_update(rule, b, n_decay), contracted_update(rule, b, n_decay)
    n = b["p"].size
    terms = {"p": sgd_l2_terms(b, n_decay, "float32")} if rule == "sgd_l2" else magnitudes(rule, b, n)
    assert (contracted["p"] != twin["p"]).sum() > n // 10
    assert (~np.isclose(contracted["p"][n // 2 :], twin["p"][n // 2 :], rtol=1e-6, atol=0)).sum() > n // 4
    for name, scale in terms.items():
        bound = ulps(rule, name, "twin")
        assert_within_term_bound(contracted[name], twin[name], scale, "float32", bound, what=f"emulated {rule} {name}")
    if rule == "sgd_l2":  # the twin itself against the float64 formula (its count with the constants)
        p, g = b["p"].astype(np.float64), b["g"].astype(np.float64)
        exact = p - SGD_L2["lr"] * (g + SGD_L2["l2"] * p * (np.arange(n) < n_decay))
        bound = ulps(rule, "p", "textbook")
        assert_within_term_bound(twin["p"], exact, sgd_l2_terms(b, n_decay, "float64"), "float32", bound)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["sgd_l2", "momentum", "nesterov"])
def test_fused_update_on_cancelling_data(gpu, rule: str, dtype: str) -> None:
    """The real kernels on the data above (L2 through EffectiveGrad for sgd_l2): within the
    terms' bound of the twin, where p nearly cancels too."""
    b, n_decay = cancelling_update(rule, dtype=dtype)
    twin = twin_update(rule, b, n_decay)
    fused = {k: gpu.send(v) for k, v in b.items()}
    if rule == "sgd_l2":
        kernels.sgd_update(fused["p"], fused["g"], None, n_decay=n_decay, **SGD_L2)
    else:
        call(rule, "update", fused, None)
    n = b["p"].size
    terms = {"p": sgd_l2_terms(b, n_decay, dtype)} if rule == "sgd_l2" else magnitudes(rule, b, n)
    for name, scale in terms.items():
        bound = ulps(rule, name, "twin")
        got = gn.to_numpy(fused[name])
        assert_within_term_bound(got, twin[name], scale, dtype, bound, what=f"{rule} {name}: fused vs twin")


@needs_nvcc
def test_spin_kernel_compiles_for_sm90(tmp_path):
    result, cubin = nvcc_compile(raw_kernels.SPIN_SOURCE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"gpunn_spin\0" in cubin  # extern "C": the name RawKernel looks up
