"""Matrix products that a CUDA graph can capture.

CuPy refuses every cuBLAS call while a stream is capturing (its wrapper re-sets the handle's
stream first and raises ``NotImplementedError`` when that stream captures), although cuBLAS
itself supports capture. So gpunn keeps a cuBLAS handle of its own, bound to the capture
stream *before* capture starts, with a workspace of its own, and calls the library's C API
(``cublasSgemm_v2`` / ``cublasDgemm_v2``) through ctypes. ``CupyOps.matmul`` calls
:func:`matmul`, which routes to that handle while a :class:`CapturableMatmul` is active and is
plain ``xp.matmul`` otherwise.

cuBLAS is column-major and gpunn row-major. A row-major (r, c) array with row stride ld is
the column-major (c, r) matrix Xᵀ with leading dimension ld, so C = A·B is computed as
Cᵀ = Bᵀ·Aᵀ: :func:`gemm_plan` works out the operations and leading dimensions from the
strides, which covers transposed views (``x.T``, ``W.T``) without a copy.
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


def _layout(shape: tuple[int, int], strides: tuple[int, int], itemsize: int) -> tuple[str, int] | None:
    """("C", ld) for row-major memory, ("F", ld) for column-major, None for neither; ld is
    the leading dimension cuBLAS needs (at least 1 and at least the stored column length)."""
    rows, cols = shape
    if strides[0] % itemsize or strides[1] % itemsize:
        return None
    s0, s1 = strides[0] // itemsize, strides[1] // itemsize
    if cols == 1 or s1 == 1:  # a row's elements are adjacent: stored as the (cols, rows) Xᵀ
        ld = s0 if rows > 1 else cols
        if ld >= max(cols, 1):
            return "C", ld
    if rows == 1 or s0 == 1:  # a column's elements are adjacent: stored as X itself
        ld = s1 if cols > 1 else rows
        if ld >= max(rows, 1):
            return "F", ld
    return None


def _operand(shape: tuple[int, int], strides: tuple[int, int], itemsize: int) -> Operand | None:
    """The row-major array X read as column-major Xᵀ: its own memory when row-major (op N),
    the transposed read of its memory when it is a column-major view such as ``W.T`` (op T)."""
    layout = _layout(shape, strides, itemsize)
    if layout is None:
        return None
    kind, ld = layout
    return Operand(OP_N if kind == "C" else OP_T, ld)


def gemm_plan(a: Any, b: Any, out: Any) -> GemmPlan | None:
    """The cuBLAS call computing ``out = a @ b`` for 2-D arrays, or None when an operand is
    neither row- nor column-major (the caller copies it first) or ``out`` is not row-major.

    Row-major out (M, N) is column-major outᵀ (N, M): m = N, n = M, k = K, and outᵀ = bᵀ·aᵀ.
    """
    (rows, inner), (inner_b, cols) = a.shape, b.shape
    if inner != inner_b or out.shape != (rows, cols):
        raise ValueError(f"shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)} do not match")
    itemsize = out.dtype.itemsize
    layout = _layout(out.shape, out.strides, itemsize)
    first = _operand(b.shape, b.strides, itemsize)
    second = _operand(a.shape, a.strides, itemsize)
    if layout is None or layout[0] != "C" or first is None or second is None:
        return None
    return GemmPlan(m=cols, n=rows, k=inner, first=first, second=second, ldc=layout[1])


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
    """Where to look for the cuBLAS of CUDA ``major``, in order.

    First the library of that major by name: CuPy has usually loaded it already, and the
    loader then hands back that very copy. Then where the path finder looks, which may be
    another major's (a torch built for CUDA 12 beside a CuPy built for CUDA 13), so every
    candidate's major is checked once loaded.
    """
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


def _cupy_cuda_major(xp: Any) -> int:
    """The CUDA major version CuPy runs on (13 for cupy-cuda13x)."""
    return int(xp.cuda.runtime.runtimeGetVersion()) // 1000


class CublasHandle:
    """A cuBLAS handle bound to one stream, with its own workspace, for capturable products.

    ``stream``: a CuPy Stream (the one that will capture); ``xp``: CuPy; ``tf32``: allow TF32
    tensor cores for float32 products (gpunn's matmul precision).
    """

    _lib: ctypes.CDLL | None = None

    def __init__(self, xp: Any, stream: Any, tf32: bool = False) -> None:
        if CublasHandle._lib is None:
            CublasHandle._lib = load_cublas(_cupy_cuda_major(xp))
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
    """While active (on this thread), :func:`matmul` on GPU arrays goes through ``handle``
    (capturable)."""

    def __init__(self, handle: CublasHandle) -> None:
        self.handle = handle
        self._previous: CublasHandle | None = None

    def __enter__(self) -> CublasHandle:
        self._previous, _routing.handle = _routing.handle, self.handle
        return self.handle

    def __exit__(self, *exc: object) -> None:
        _routing.handle = self._previous


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """a @ b for 2-D arrays, written into ``out`` when given.

    NumPy arrays, and CuPy arrays outside a :class:`CapturableMatmul`, use ``xp.matmul``;
    inside one, CuPy products go through its cuBLAS handle so that a stream capture records
    them.
    """
    if type(a) is np.ndarray:
        return a @ b if out is None else np.matmul(a, b, out=out)
    handle = _routing.handle
    if handle is None:
        return a @ b if out is None else array_module(a).matmul(a, b, out=out)
    if out is None:
        out = array_module(a).empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return handle.gemm(a, b, out)
