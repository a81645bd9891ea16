"""The optimizer updates' CUDA side (CupyOps and gpunn/backend/cuda/update_source.py) without a GPU:
the launch arguments against the kernels' C signatures (launches recorded on NumPy arrays), and
the CUDA source compiled with nvcc (where nvcc is installed). What the kernels compute is held to
the reference by tests/backend/test_ops_conformance.py on a GPU; tests/tolerances.py's bound is checked here.
"""

from __future__ import annotations

import re
from fractions import Fraction

import cuda_source
import numpy as np
import pytest
from cuda_source import needs_nvcc, nvcc_compile
from tolerances import assert_within_term_bound, eps, fma

from gpunn.backend.cuda import compile as raw_kernels
from gpunn.backend.cuda import update_source
from gpunn.backend.cuda.ops import CupyOps
from gpunn.backend.ops import NumpyOps

DTYPES = ("float32", "float64")
# each rule's Ops method, hyperparameters and state buffers
RULES = {
    "sgd": ("sgd_update", {"lr": 0.3}, 0),
    "momentum": ("momentum_update", {"lr": 0.3, "momentum": 0.7}, 1),
    "nesterov": ("momentum_update", {"lr": 0.3, "momentum": 0.7, "nesterov": True}, 1),
    "adagrad": ("adagrad_update", {"lr": 0.2, "eps": 1e-2}, 1),
    "rmsprop": ("rmsprop_update", {"lr": 0.2, "alpha": 0.85, "eps": 1e-2}, 1),
    "adam": ("adam_update", {"lr": 0.03, "beta1": 0.8, "beta2": 0.95, "eps": 1e-3, "step": 3}, 2),
    "adamw": ("adam_update", {"lr": 0.03, "beta1": 0.8, "beta2": 0.95, "eps": 1e-3, "step": 3, "weight_decay": 0.7}, 2),
}

# Each kernel's parameter list, written from the arguments CupyOps passes at launch: device
# pointers of the buffer's type T, then np.int64 (long long), np.float64 (double), np.int32
# (int); the optional device scalars (sq_norm, step_scalars) are float64 arrays or NULL
# (np.uint64(0)). Explicit instantiations with these types fail to compile if the source disagrees.
FUSED = ("const double", "const double", "const double", "const double*", "const double*")  # l2 l1 max_norm sq t
HEAD = ("const long long", "const long long")  # n, n_decay
SIGNATURES = {
    "sgd_update": ("T*", "const T*", *HEAD, "const double", *FUSED),
    "momentum_update": ("T*", "const T*", "T*", *HEAD, "const double", "const double", "const int", *FUSED),
    "adagrad_update": ("T*", "const T*", "T*", *HEAD, "const double", "const double", *FUSED),
    "rmsprop_update": ("T*", "const T*", "T*", *HEAD, "const double", "const double", "const double", *FUSED),
    # step_size, beta1, beta2, eps, inv_sqrt_bc2, decay_factor, weight_decay
    "adam_update": ("T*", "const T*", "T*", "T*", *HEAD, *["const double"] * 7, *FUSED),
    "sum_of_squares": ("const T*", "const long long", "double*"),
}
# extern "C" kernels (not templates): a redeclaration with other parameter types fails to compile
PLAIN_SIGNATURES = {"zero_sum": ("double*",), "advance_step": ("double*",)}
SCALAR_TYPES = {"const long long": np.int64, "const double": np.float64, "const int": np.int32}


def test_signature_table_covers_every_kernel():
    assert set(SIGNATURES) == set(update_source.KERNEL_NAMES)
    assert set(PLAIN_SIGNATURES) == set(update_source.PLAIN_KERNEL_NAMES)
    source = update_source.CUDA_SOURCE
    for name in update_source.KERNEL_NAMES:
        assert re.search(rf"template <typename T>\s+__global__\s+void\s+{name}\s*\(", source), name
    for name in update_source.PLAIN_KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__\s+void\s+{name}\s*\(', source), name


def recording_ops(monkeypatch) -> tuple[CupyOps, list[tuple[str, object, tuple, tuple, tuple]]]:
    """CupyOps on NumPy arrays taken for device arrays, whose launches are recorded as
    (name, dtype, blocks, threads, args) instead of run."""
    launches: list = []
    monkeypatch.setattr(raw_kernels, "is_gpu", lambda x: True)
    ops = CupyOps(np)
    monkeypatch.setattr(ops, "_update_kernel", lambda *launch: launches.append(launch))
    return ops, launches


def check_argument_types(name: str, args: tuple, dtype: str) -> None:
    signature = SIGNATURES[name]
    assert len(args) == len(signature), (name, len(args), len(signature))
    for i, (arg, ctype) in enumerate(zip(args, signature, strict=True)):
        if ctype.endswith("T*"):
            assert isinstance(arg, np.ndarray) and arg.dtype == np.dtype(dtype) and arg.ndim == 1, (name, i)
        elif ctype.endswith("double*"):  # an optional device scalar: a float64 array or NULL
            if isinstance(arg, np.ndarray):
                assert arg.dtype == np.float64, (name, i)
            else:
                assert type(arg) is np.uint64 and arg == 0, (name, i, type(arg))
        else:
            assert type(arg) is SCALAR_TYPES[ctype], (name, i, type(arg), ctype)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_launch_arguments_match_kernel_signatures(monkeypatch, rule, dtype, fused):
    """What CupyOps passes to each kernel has exactly the C parameter types (a CuPy RawKernel
    passes NumPy scalars by their own type, so a mismatch would read garbage), with and without
    the penalty, the clipping and the device-resident lr and t; one launch per update (and
    one before it that advances t)."""
    ops, launches = recording_ops(monkeypatch)
    method, hyper, n_state = RULES[rule]
    n = 7
    rng = np.random.default_rng(0)
    p, g, *state = (rng.standard_normal(n).astype(dtype) for _ in range(2 + n_state))
    sq_norm, scalars = np.array([4.0]), np.array([0.01, 3.0])
    options = {"l2": 0.25, "l1": 0.125, "clip": (1.5, sq_norm)} if fused else {}
    token = NumpyOps.step_scalars.set(scalars if fused else None)
    try:
        getattr(ops, method)(p, g, *state, **hyper, n_decay=5, **options)
    finally:
        NumpyOps.step_scalars.reset(token)
    if fused:
        assert launches.pop(0) == ("advance_step", None, (1,), (1,), (scalars,))
    assert len(launches) == 1  # one launch per update, whatever is fused into it
    name, dtype_arg, blocks, threads, args = launches[0]
    assert name == method and np.dtype(dtype_arg) == np.dtype(dtype)
    assert blocks == raw_kernels.grid(n) and threads == (raw_kernels.THREADS_PER_BLOCK,)
    check_argument_types(name, args, dtype)
    first_int = SIGNATURES[name].index("const long long")
    assert (args[first_int], args[first_int + 1]) == (n, 5)
    if rule == "nesterov":
        assert args[SIGNATURES[name].index("const int")] == 1
    if rule.startswith("adam"):  # the host's constants, and weight_decay for the kernel's own with t on the device
        step_size, inv_sqrt_bc2, decay_factor = NumpyOps.adam_constants(
            0.03, 0.8, 0.95, 3, hyper.get("weight_decay", 0)
        )
        assert args[6:13] == (step_size, 0.8, 0.95, 1e-3, inv_sqrt_bc2, decay_factor, hyper.get("weight_decay", 0.0))
    l2, l1, max_norm, sq_arg, scalars_arg = args[-5:]
    if fused:
        assert (l2, l1, max_norm) == (0.25, 0.125, 1.5)
        assert sq_arg is sq_norm and scalars_arg is scalars
    else:
        assert (l2, l1, max_norm) == (0.0, 0.0, 0.0)
        assert sq_arg is raw_kernels.NULL and scalars_arg is raw_kernels.NULL
    assert args[0] is p and args[1] is g  # the caller's own buffers (updated in place), in order
    assert all(a is b for a, b in zip(args[2 : 2 + n_state], state, strict=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_launches(monkeypatch, dtype):
    """Clipping's reduction is two launches (zero the output, then add every block's sum),
    their arguments matching the signatures."""
    ops, launches = recording_ops(monkeypatch)
    n = 3 * ops.REDUCE_BLOCKS * raw_kernels.THREADS_PER_BLOCK  # more blocks than the reduction uses
    x, out = np.ones(n, dtype=dtype), np.zeros(1)
    ops.sum_of_squares(x, out)
    assert [launch[0] for launch in launches] == ["zero_sum", "sum_of_squares"]
    assert launches[0] == ("zero_sum", None, (1,), (1,), (out,))
    _, sum_dtype, blocks, threads, args = launches[1]
    assert np.dtype(sum_dtype) == np.dtype(dtype)
    assert blocks == (ops.REDUCE_BLOCKS,) and threads == (raw_kernels.THREADS_PER_BLOCK,)
    assert raw_kernels.THREADS_PER_BLOCK % 32 == 0  # the block reduction works in whole warps
    check_argument_types("sum_of_squares", args, dtype)
    assert args[0] is x and args[1] == n and args[2] is out


def test_device_scalars_and_layouts_are_checked_before_any_launch(monkeypatch):
    """A wrongly typed sq_norm, step_scalars or out would be read as garbage by a kernel, and a
    strided buffer indexed as a plain one: refused before anything launches (t not advanced)."""
    ops, launches = recording_ops(monkeypatch)
    p, g = np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="sq_norm"):
        ops.sgd_update(p, g, lr=0.1, clip=(1.0, np.zeros(1, dtype=np.float32)))
    token = NumpyOps.step_scalars.set(np.zeros(1))  # [lr, t] needs two elements
    try:
        with pytest.raises(ValueError, match="step_scalars"):
            ops.sgd_update(p, g, lr=0.1)
    finally:
        NumpyOps.step_scalars.reset(token)
    with pytest.raises(ValueError, match="out"):
        ops.sum_of_squares(g, np.zeros(1, dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        ops.sgd_update(np.zeros(10)[::2], np.zeros(5), lr=0.1)
    with pytest.raises(ValueError, match="contiguous"):
        ops.sum_of_squares(np.zeros(10)[::2], np.zeros(1))
    assert launches == []


# ----------------------------------------------------------------------------- CUDA source (nvcc)


def instantiations() -> str:
    plain = "".join(
        f'extern "C" __global__ void {name}({", ".join(params)});\n' for name, params in PLAIN_SIGNATURES.items()
    )
    return cuda_source.instantiations({name: SIGNATURES[name] for name in update_source.KERNEL_NAMES}) + plain


@needs_nvcc
def test_cuda_source_compiles_for_sm90(tmp_path):
    result, cubin = nvcc_compile(update_source.CUDA_SOURCE + "\n" + instantiations(), tmp_path)
    assert result.returncode == 0, result.stderr
    # every kernel was emitted for both element types (Itanium-mangled names: _Z<len><name>I<f|d>E)
    for name in update_source.KERNEL_NAMES:
        for code in "fd":
            assert cuda_source.mangled(name, code) in cubin, (name, code)
    for name in update_source.PLAIN_KERNEL_NAMES:  # extern "C": the plain name, which get_function looks up
        assert name.encode() + b"\0" in cubin, name


@needs_nvcc
def test_nvcc_check_catches_broken_source(tmp_path):
    """The compile check above is not vacuous: a syntax error and a type mismatch both fail."""
    source = update_source.CUDA_SOURCE
    statement = "p[i] = pi - lr_ * grad(i, g[i], pi);"
    assert statement in source
    result, _ = nvcc_compile(source.replace(statement, statement[:-1]) + "\n" + instantiations(), tmp_path)
    assert result.returncode != 0
    assert "error" in result.stderr + result.stdout
    wrong_type = source + "\ntemplate __global__ void sgd_update<float>(float*, const float*, int, int);\n"
    result, _ = nvcc_compile(wrong_type, tmp_path)
    assert result.returncode != 0
    # the step scalars' pointer declared as float* instead of const double*: the fused tail is checked too
    tail = ", ".join(["float*", "const float*", "long long", "long long", "double", "double", "double", "double"])
    result, _ = nvcc_compile(
        source + f"\ntemplate __global__ void sgd_update<float>({tail}, const double*, float*);\n", tmp_path
    )
    assert result.returncode != 0
    result, _ = nvcc_compile(source + '\nextern "C" __global__ void advance_step(float*);\n', tmp_path)
    assert result.returncode != 0


# ----------------------------------------------------------------------------- the GPU tests' bound


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


@needs_nvcc
def test_spin_kernel_compiles_for_sm90(tmp_path):
    result, cubin = nvcc_compile(raw_kernels.SPIN_SOURCE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"gpunn_spin\0" in cubin  # extern "C": the name RawKernel looks up


def test_each_thread_on_the_per_thread_default_stream_has_its_own_stream_id(monkeypatch):
    """cudaStreamPerThread is one handle for every thread's own stream: the loss kernel's
    scratch, kept per stream, must not be shared between two threads."""
    import threading  # noqa: PLC0415
    import types  # noqa: PLC0415

    from gpunn.backend.cuda import compile as raw  # noqa: PLC0415

    handle = {"ptr": 2}
    fake_cuda = types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=handle["ptr"]),
        runtime=types.SimpleNamespace(streamPerThread=2),
    )
    monkeypatch.setattr(raw, "is_gpu", lambda x: True)
    monkeypatch.setattr(raw, "array_module", lambda x: types.SimpleNamespace(cuda=fake_cuda))
    ids: list[int] = []
    both = threading.Barrier(2)  # both threads alive together: a finished thread's ident is reused

    def record() -> None:
        ids.append(raw.stream_id(None))
        both.wait()

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 2 and all(i < 0 for i in ids)
    handle["ptr"] = 0x7F00
    assert raw.stream_id(None) == 0x7F00  # an ordinary stream: its handle
