"""Matrix products that a CUDA graph can capture.

CuPy refuses every cuBLAS call while a stream captures (its wrapper re-sets the handle's stream
and raises ``NotImplementedError``), although cuBLAS supports capture. So gpunn keeps a cuBLAS
handle of its own, bound to the capture stream before capture starts, with its own workspace,
and calls ``cublasSgemm_v2`` / ``cublasDgemm_v2`` through ctypes: :func:`matmul` routes there
while a :class:`CapturableMatmul` is active, and is plain ``xp.matmul`` otherwise.

cuBLAS is column-major: a row-major (r, c) array with row stride ld is the column-major (c, r)
matrix Xᵀ with leading dimension ld, so C = A·B is computed as Cᵀ = Bᵀ·Aᵀ; :func:`gemm_plan`
finds the operations and leading dimensions from the strides, transposed views included.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..device import array_module

OP_N, OP_T = 0, 1  # cublasOperation_t
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3  # cublasMath_t
WORKSPACE_BYTES = 32 << 20  # NVIDIA's recommendation for Hopper: 32 MiB per handle


@dataclass(frozen=True)
class Operand:
    """How cuBLAS reads one row-major array: as the column-major matrix ``op(M)`` where M is
    the memory read with leading dimension ``ld``."""

    op: int
    ld: int


@dataclass(frozen=True)
class GemmPlan:
    """cublas<t>gemm(transa, transb, m, n, k, A=first, lda, B=second, ldb, C, ldc) computing
    the row-major product: ``first`` is the right factor b, ``second`` the left factor a."""

    m: int
    n: int
    k: int
    first: Operand
    second: Operand
    ldc: int


def _operand(x: Any, itemsize: int) -> Operand | None:
    """How cuBLAS reads the row-major 2-D array X as the column-major Xᵀ: its own memory when X
    is row-major (op N), the transposed read of its memory when X is a column-major view such as
    ``W.T`` (op T); None for neither. ld is at least 1 and at least the stored column length."""
    (rows, cols), strides = x.shape, x.strides
    if strides[0] % itemsize or strides[1] % itemsize:
        return None
    s0, s1 = strides[0] // itemsize, strides[1] // itemsize
    if cols == 1 or s1 == 1:  # a row's elements are adjacent: stored as the (cols, rows) Xᵀ
        ld = s0 if rows > 1 else cols
        if ld >= max(cols, 1):
            return Operand(OP_N, ld)
    if rows == 1 or s0 == 1:  # a column's elements are adjacent: stored as X itself
        ld = s1 if cols > 1 else rows
        if ld >= max(rows, 1):
            return Operand(OP_T, ld)
    return None


def gemm_plan(a: Any, b: Any, out: Any) -> GemmPlan | None:
    """The cuBLAS call computing ``out = a @ b`` for 2-D arrays, or None when an operand is
    neither row- nor column-major (the caller copies it first) or ``out`` is not row-major.

    Row-major out (M, N) is column-major outᵀ (N, M): m = N, n = M, k = K, and outᵀ = bᵀ·aᵀ.
    """
    (rows, inner), (inner_b, cols) = a.shape, b.shape
    if inner != inner_b or out.shape != (rows, cols):
        raise ValueError(f"shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)} do not match")
    itemsize = out.dtype.itemsize
    result, first, second = _operand(out, itemsize), _operand(b, itemsize), _operand(a, itemsize)
    if result is None or result.op != OP_N or first is None or second is None:
        return None
    return GemmPlan(m=cols, n=rows, k=inner, first=first, second=second, ldc=result.ld)


# ----------------------------------------------------------------------------- the cuBLAS handle


MAJOR_VERSION = 0  # libraryPropertyType


def _cublas_major(lib: ctypes.CDLL) -> int:
    """The CUDA major version a loaded cuBLAS belongs to (cublasGetProperty)."""
    value = ctypes.c_int(-1)
    status = lib.cublasGetProperty(MAJOR_VERSION, ctypes.byref(value))
    if status != 0:
        raise RuntimeError(f"cublasGetProperty failed with cuBLAS status {status}")
    return value.value


def _pathfinder_cublas() -> str | None:
    """Where NVIDIA's path finder (it comes with CuPy 14) finds cuBLAS, or None."""
    from cuda.pathfinder import load_nvidia_dynamic_lib  # noqa: PLC0415

    return load_nvidia_dynamic_lib("cublas").abs_path


def cublas_candidates(major: int, pathfinder: Any = _pathfinder_cublas) -> list[str]:
    """Where to look for the cuBLAS of CUDA ``major``, in order: first that major's by name (CuPy
    has usually loaded it, and the loader hands back that very copy), then where the path finder
    looks, which may be another major's (a torch for CUDA 12 beside a CuPy for CUDA 13): every
    candidate's major is checked once loaded."""
    names = [f"libcublas.so.{major}"]
    try:
        found = pathfinder()
    except Exception:
        found = None
    if found:
        names.append(found)
    names.append("libcublas.so")
    return names


def load_cublas(major: int, open_library: Any = ctypes.CDLL, pathfinder: Any = _pathfinder_cublas) -> ctypes.CDLL:
    """The cuBLAS of CUDA ``major`` (CuPy's own), never another major's."""
    errors = []
    for name in cublas_candidates(major, pathfinder):
        try:
            lib = open_library(name)
            found = _cublas_major(lib)
        except (OSError, AttributeError, RuntimeError) as exc:
            errors.append(f"{name}: {exc}")
            continue
        if found == major:
            return lib
        errors.append(f"{name} is cuBLAS of CUDA {found}")
    raise RuntimeError(f"the cuBLAS of CUDA {major}, which CuPy uses, could not be loaded: " + "; ".join(errors))


class CublasHandle:
    """A cuBLAS handle bound to ``stream`` (the CuPy Stream that will capture), with its own
    workspace, for capturable products; ``tf32`` allows TF32 tensor cores for float32 products."""

    _lib: ctypes.CDLL | None = None

    def __init__(self, xp: Any, stream: Any, tf32: bool = False) -> None:
        if CublasHandle._lib is None:
            CublasHandle._lib = load_cublas(int(xp.cuda.runtime.runtimeGetVersion()) // 1000)  # CuPy's CUDA major
        lib = self._lib
        handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self.stream = stream
        # the stream first: cublasSetStream resets a user workspace to the default one
        self._check(lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        self.workspace = xp.empty(WORKSPACE_BYTES, dtype=np.uint8)  # kept alive with the handle
        pointer, size = ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(WORKSPACE_BYTES)
        self._check(lib.cublasSetWorkspace_v2(handle, pointer, size), "cublasSetWorkspace")
        self._check(lib.cublasSetMathMode(handle, TF32_TENSOR_OP_MATH if tf32 else DEFAULT_MATH), "cublasSetMathMode")
        self._scalars = {
            np.dtype("float32"): (ctypes.c_float(1.0), ctypes.c_float(0.0), lib.cublasSgemm_v2),
            np.dtype("float64"): (ctypes.c_double(1.0), ctypes.c_double(0.0), lib.cublasDgemm_v2),
        }

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"{call} failed with cuBLAS status {status}")

    def gemm(self, a: Any, b: Any, out: Any) -> Any:
        """out = a @ b (2-D, same float dtype) on this handle's stream; returns out."""
        if out.size == 0:
            return out
        if a.shape[1] == 0:  # an empty sum
            out.fill(0)
            return out
        plan = gemm_plan(a, b, out)
        if plan is None:
            xp = array_module(a)
            a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
            plan = gemm_plan(a, b, out)
            if plan is None:
                raise ValueError("out must be a row-major (C-contiguous) matrix")
        one, zero, call = self._scalars[out.dtype]
        self._check(
            call(
                self.handle,
                plan.first.op,
                plan.second.op,
                plan.m,
                plan.n,
                plan.k,
                ctypes.byref(one),
                ctypes.c_void_p(b.data.ptr),
                plan.first.ld,
                ctypes.c_void_p(a.data.ptr),
                plan.second.ld,
                ctypes.byref(zero),
                ctypes.c_void_p(out.data.ptr),
                plan.ldc,
            ),
            "cublasGemm",
        )
        return out

    def close(self) -> None:
        if self.handle is not None and self._lib is not None:
            self._lib.cublasDestroy_v2(self.handle)
            self.handle = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to free
            self.close()


# ----------------------------------------------------------------------------- routing


class _Routing(threading.local):
    """The handle :func:`matmul` routes GPU products through, per thread: a capture on one
    thread must not pull another thread's products onto its stream."""

    handle: CublasHandle | None = None


_routing = _Routing()


class CapturableMatmul:
    """While active (on this thread), :func:`matmul` on GPU arrays goes through ``handle``."""

    def __init__(self, handle: CublasHandle) -> None:
        self.handle = handle
        self._previous: CublasHandle | None = None

    def __enter__(self) -> CublasHandle:
        self._previous, _routing.handle = _routing.handle, self.handle
        return self.handle

    def __exit__(self, *exc: object) -> None:
        _routing.handle = self._previous


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 2-D arrays, into ``out`` when given: ``xp.matmul``, except for CuPy arrays inside
    a :class:`CapturableMatmul`, which go through its cuBLAS handle (a stream capture records them)."""
    if type(a) is np.ndarray:
        return a @ b if out is None else np.matmul(a, b, out=out)
    handle = _routing.handle
    if handle is None:
        return a @ b if out is None else array_module(a).matmul(a, b, out=out)
    if out is None:
        out = array_module(a).empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return handle.gemm(a, b, out)
