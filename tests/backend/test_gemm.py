"""The row-major → cuBLAS column-major translation of gpunn.backend.cuda.gemm, checked on the CPU by
running each planned call through a NumPy emulation of column-major GEMM on the operands'
raw memory (the same pointers, leading dimensions and operations cuBLAS would get)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from gpunn.backend.cuda.gemm import OP_N, OP_T, GemmPlan, cublas_candidates, gemm_plan, load_cublas, matmul


def _column_major(base: np.ndarray, rows: int, cols: int, ld: int) -> np.ndarray:
    """The column-major (rows, cols) matrix with leading dimension ld starting at base[0, 0]."""
    size = base.itemsize
    return as_strided(base, shape=(rows, cols), strides=(size, ld * size), writeable=True)


def emulate(plan: GemmPlan, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """C = op(A)·op(B) in column-major terms with A = b's memory and B = a's memory."""

    def op(x: np.ndarray, operand, rows: int, cols: int) -> np.ndarray:
        if operand.op == OP_N:
            return _column_major(x, rows, cols, operand.ld)
        assert operand.op == OP_T
        return _column_major(x, cols, rows, operand.ld).T

    first = op(b, plan.first, plan.m, plan.k)  # op(A): m x k
    second = op(a, plan.second, plan.k, plan.n)  # op(B): k x n
    c = _column_major(out, plan.m, plan.n, plan.ldc)
    c[...] = first @ second


def _layouts(rng: np.random.Generator, rows: int, cols: int) -> dict[str, np.ndarray]:
    """The same matrix values in the layouts gpunn's layers hand to matmul."""
    values = rng.standard_normal((rows, cols))
    padded = np.zeros((rows, cols + 3))
    padded[:, :cols] = values
    padded_t = np.zeros((cols + 2, rows))
    padded_t[:cols] = values.T
    return {
        "C": np.ascontiguousarray(values),
        "F": np.asfortranarray(values),  # what x.T of a C-contiguous x is
        "C-padded": padded[:, :cols],  # row stride larger than the row
        "F-padded": padded_t[:cols].T,  # a transposed view of a padded block
    }


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 4, 6), (6, 1, 4), (4, 5, 1), (1, 1, 1), (33, 17, 9)])
def test_every_layout_pair_gives_the_row_major_product(shape: tuple[int, int, int]) -> None:
    rows, inner, cols = shape
    rng = np.random.default_rng(sum(shape))
    for a_name, a in _layouts(rng, rows, inner).items():
        for b_name, b in _layouts(rng, inner, cols).items():
            out = np.full((rows, cols), np.nan)
            plan = gemm_plan(a, b, out)
            assert plan is not None, (a_name, b_name)
            emulate(plan, a, b, out)
            np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12, err_msg=f"{a_name} @ {b_name}")


def test_transposed_views_are_read_with_op_t_and_no_copy() -> None:
    x = np.ones((8, 3))
    dy = np.ones((8, 4))
    plan = gemm_plan(x.T, dy, np.empty((3, 4)))  # the weight gradient xᵀ·dy
    assert plan.second.op == OP_T and plan.second.ld == 3
    assert plan.first.op == OP_N and plan.first.ld == 4
    assert (plan.m, plan.n, plan.k, plan.ldc) == (4, 3, 8, 4)


def test_unsupported_layouts_are_refused_so_the_caller_copies() -> None:
    a = np.ones((6, 6))[::2, ::2]  # neither row- nor column-major
    assert gemm_plan(a, np.ones((3, 2)), np.empty((3, 2))) is None
    assert gemm_plan(np.ones((3, 3)), np.ones((3, 2)), np.empty((2, 3)).T) is None  # out not row-major


def test_mismatched_shapes_name_them() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        gemm_plan(np.ones((2, 3)), np.ones((4, 5)), np.empty((2, 5)))


def test_matmul_on_the_cpu_is_numpy_matmul_into_out() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    out = np.empty((4, 5), dtype=np.float32)
    assert matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, a @ b)
    np.testing.assert_array_equal(matmul(a.T.T, b), a @ b)


def test_a_capturable_matmul_routes_only_its_own_threads_products() -> None:
    # A capture on one thread must not pull another thread's products onto its handle (and
    # stream). A stand-in handle records what it was asked; an ndarray subclass stands in for a
    # GPU array (anything that is not exactly np.ndarray takes the routed path).
    import threading  # noqa: PLC0415

    from gpunn.backend.cuda.gemm import CapturableMatmul  # noqa: PLC0415

    class Handle:
        def __init__(self) -> None:
            self.calls = 0

        def gemm(self, a, b, out):
            self.calls += 1
            return out

    class Device(np.ndarray):
        pass

    a = np.ones((2, 3)).view(Device)
    b = np.ones((3, 2)).view(Device)
    out = np.empty((2, 2)).view(Device)
    mine, other = Handle(), Handle()
    entered, done = threading.Event(), threading.Event()

    def capture_on_another_thread() -> None:
        with CapturableMatmul(other):
            entered.set()
            done.wait(10)

    thread = threading.Thread(target=capture_on_another_thread)
    thread.start()
    try:
        assert entered.wait(10)
        matmul(a, b, out)  # no capture on this thread: the plain product
        assert np.array_equal(out, np.full((2, 2), 3.0))
        with CapturableMatmul(mine):
            matmul(a, b, out)
            with CapturableMatmul(Handle()):  # nested: the inner handle, then back to mine
                pass
            matmul(a, b, out)
    finally:
        done.set()
        thread.join()
    assert (mine.calls, other.calls) == (2, 0)


class FakeCublas:
    """A loaded cuBLAS as ctypes shows it: cublasGetProperty(MAJOR_VERSION, int*) -> status."""

    def __init__(self, name: str, major: int) -> None:
        self.name, self.major = name, major

    def cublasGetProperty(self, prop, value):  # noqa: N802 — cuBLAS's own name
        assert prop == 0  # MAJOR_VERSION
        ctypes.cast(value, ctypes.POINTER(ctypes.c_int)).contents.value = self.major
        return 0


def _opener(available: dict[str, int], opened: list[str]):
    def open_library(name: str) -> FakeCublas:
        opened.append(name)
        if name not in available:
            raise OSError(f"{name}: cannot open shared object file")
        return FakeCublas(name, available[name])

    return open_library


def test_cupys_own_cublas_major_is_loaded_before_what_the_path_finder_finds():
    """torch's CUDA 12 wheels beside cupy-cuda13x: the path finder may find libcublas.so.12
    first. The cuBLAS of CuPy's own major, by name, comes first and is the one used."""
    torch_cublas = "/site-packages/nvidia/cublas/lib/libcublas.so.12"
    opened: list[str] = []
    lib = load_cublas(13, _opener({torch_cublas: 12, "libcublas.so.13": 13}, opened), lambda: torch_cublas)
    assert lib.name == "libcublas.so.13" and opened == ["libcublas.so.13"]


def test_a_cublas_of_another_major_is_refused_even_when_found_by_its_path():
    opened: list[str] = []
    wrong = "/x/libcublas.so.12"
    with pytest.raises(RuntimeError, match=r"cuBLAS of CUDA 13.*libcublas.so.12 is cuBLAS of CUDA 12"):
        load_cublas(13, _opener({wrong: 12, "libcublas.so": 12}, opened), lambda: wrong)
    assert opened == ["libcublas.so.13", wrong, "libcublas.so"]
    # the path finder's own find, when it is the right major, is taken
    right = "/x/nvidia/cu13/lib/libcublas.so.13"
    assert load_cublas(13, _opener({right: 13}, []), lambda: right).name == right


def test_a_failing_path_finder_leaves_the_names():
    def broken():
        raise RuntimeError("no site-packages")

    assert cublas_candidates(13, broken) == ["libcublas.so.13", "libcublas.so"]
