"""gpunn.kernels: the NumPy twins against plain formulas, the fused CUDA kernels against their
twins (GPU only), and the CUDA source compiled with nvcc (where nvcc is installed)."""

from __future__ import annotations

import math
import re

import cuda_source
import numpy as np
import pytest
from cuda_source import needs_nvcc, nvcc_compile

import gpunn as gn
from gpunn import kernels, raw_kernels, update_source

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


# Rounding allowance relative to the magnitudes above: ~16 ulps in float32, far more in
# float64 (every formula here has fewer than ten roundings per element).
RTOL = {"float32": 1e-6, "float64": 1e-13}


def assert_within_rounding(got, want, scale, dtype: str, what: str) -> None:
    """|got − want| <= RTOL·scale elementwise (NumPy or CuPy arrays, checked where they live)."""
    xp = gn.array_module(got)
    got, want = got.astype(xp.float64), want.astype(xp.float64)
    err = xp.abs(got - want)
    bound = RTOL[dtype] * scale
    bad = ~(err <= bound)  # NaN counts as bad
    n_bad = int(bad.sum())
    if n_bad:
        i = int(xp.argmax(bad))
        raise AssertionError(
            f"{what}: {n_bad} of {bad.size} elements differ beyond rounding; first at {i}: "
            f"got {float(got[i])!r}, want {float(want[i])!r}, |error| {float(err[i]):.3g} > bound {float(bound[i]):.3g}"
        )


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
        assert_within_rounding(b[name], want, scale[name], dtype, f"{rule} {name}")


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
            # fused kernel and twin round differently (FMA, operation order): twice the allowance
            assert_within_rounding(fused[name], twin[name], 2 * scale[name], dtype, f"{rule} {name}: fused vs twin")
            assert_within_rounding(fused[name], expected[name], scale[name], dtype, f"{rule} {name}: vs textbook")


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
    """Make every launch of gpunn.kernels (on NumPy arrays taken for device arrays) a record
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


@pytest.mark.parametrize("size", [1, 7, kernels.CHUNK + 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy_twin_is_the_formula(size: int, dtype: str) -> None:
    rng = np.random.default_rng(size)
    y, x = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    expected = y.astype(np.float64) + 0.3 * x.astype(np.float64)
    kernels.axpy_update(y, x, kernels.scratch(size, dtype), a=0.3)
    # absolute: y + 0.3·x cancels, so the error is relative to |y| + 0.3·|x|, not to the result
    np.testing.assert_allclose(y, expected, rtol=0, atol=4e-7 if dtype == "float32" else 1e-15)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_axpy_equals_twin(gpu, dtype: str) -> None:
    rng = np.random.default_rng(5)
    y, x = rng.standard_normal(1001).astype(dtype), rng.standard_normal(1001).astype(dtype)
    expected = y.copy()
    kernels.axpy_reference(expected, x, np.empty_like(x), a=0.3)
    y_gpu = gpu.send(y)
    kernels.axpy_update(y_gpu, gpu.send(x), None, a=0.3)
    np.testing.assert_allclose(gn.to_numpy(y_gpu), expected, rtol=1e-6 if dtype == "float32" else 1e-14)


@needs_nvcc
def test_spin_kernel_compiles_for_sm90(tmp_path):
    result, cubin = nvcc_compile(raw_kernels.SPIN_SOURCE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"gpunn_spin\0" in cubin  # extern "C": the name RawKernel looks up
