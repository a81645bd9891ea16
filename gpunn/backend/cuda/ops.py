"""CupyOps: fused CUDA kernels overriding the reference Ops on a GPU.

Each override is one kernel launch (or a few) where the reference takes several CuPy calls,
each of which costs 15–20 µs of host time. The kernels are compiled by NVRTC with its default
contraction (see :mod:`.compile`); tests/test_ops_conformance.py holds them to the reference
within a bound stated per kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..device import device_of
from ..ops import NumpyOps
from . import gemm, update_source
from .compile import (
    MAX_BLOCKS,
    NULL,
    THREADS_PER_BLOCK,
    check_flat,
    compiled,
    device_pointer,
    grid,
    is_capturing,
    kernel,
    stream_id,
)
from .layer_source import (
    ACTIVATION_CODES,
    BIAS_COLUMNS,
    BIAS_ROW_THREADS,
    KERNEL_NAMES,
    LAYER_SOURCE,
    MAX_LOSS_BLOCKS,
)


class CupyOps(NumpyOps):
    """NumpyOps with fused kernels on CuPy arrays."""

    name = "cuda"

    # ------------------------------------------------------------------ layers and losses
    # Kernels from .layer_source; a layout a kernel does not take (strided, mixed dtypes,
    # empty) goes to the reference, which handles any.

    # (device, dtype, stream) → (partials: MAX_LOSS_BLOCKS float64, counter: one uint32, 0
    # between launches): the loss kernel's scratch. One pair per stream: launches on one stream
    # run in order and never share it at the same time; launches on two streams may overlap
    # and would mix their partial sums and tickets. Kept until release_loss_scratch(stream): a
    # captured CUDA graph holds their addresses.
    _loss_scratch: ClassVar[dict[tuple[Any, Any, int], tuple[Any, Any]]] = {}

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """a @ b through :func:`.gemm.matmul`: ``xp.matmul``, or gpunn's own cuBLAS handle
        while a step graph captures (CuPy refuses cuBLAS calls then)."""
        return gemm.matmul(a, b, out)

    def bias_activation(self, y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
        """y ← g(y + b) in place: one kernel."""
        code = self._code(activation)
        takes = y.ndim == 2 and y.flags.c_contiguous and b.flags.c_contiguous
        if not (takes and b.dtype == y.dtype and b.shape == (y.shape[1],)):
            return super().bias_activation(y, b, activation, alpha)
        self._layer_kernel(y, "bias_activation_forward")(
            grid(y.size),
            (THREADS_PER_BLOCK,),
            (y, b, np.int64(y.size), np.int64(y.shape[1]), np.int32(code), np.float64(alpha)),
        )
        return y

    def activation_backward(
        self, dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None, db: Any = None
    ) -> Any:
        """dz = dy · g'(z), and with ``db`` the column sums of dz in the same pass: one kernel
        (the sums deterministic: a fixed order per column, no atomics)."""
        code = self._code(activation)
        takes = (
            dy.ndim == 2
            and dy.size > 0
            and dy.shape == a.shape
            and dy.dtype == a.dtype
            and dy.flags.c_contiguous
            and a.flags.c_contiguous
            and (out is None or (out.shape == dy.shape and out.dtype == dy.dtype and out.flags.c_contiguous))
            and (db is None or (db.shape == dy.shape[1:] and db.dtype == dy.dtype and db.flags.c_contiguous))
        )
        if not takes:
            return super().activation_backward(dy, a, activation, alpha, out, db)
        if out is None:
            out = self.xp.empty_like(dy)
        if db is None:
            self._layer_kernel(dy, "activation_backward")(
                grid(dy.size),
                (THREADS_PER_BLOCK,),
                (out, dy, a, np.int64(dy.size), np.int32(code), np.float64(alpha)),
            )
            return out
        rows, cols = dy.shape
        self._layer_kernel(dy, "activation_bias_backward")(
            (min(-(-cols // BIAS_COLUMNS), MAX_BLOCKS),),
            (BIAS_COLUMNS, BIAS_ROW_THREADS),
            (out, dy, a, db, np.int64(rows), np.int64(cols), np.int32(code), np.float64(alpha)),
        )
        return out

    def softmax_cross_entropy(self, z: Any, t: Any) -> tuple[Any, Any]:
        """Every row's gradient and the loss in one kernel, the loss summed deterministically
        inside it (see .layer_source); labels only (targets go to the reference)."""
        if not (t.ndim == 1 and t.dtype.kind in "iu" and z.ndim == 2 and z.shape[0] > 0 and z.shape[1] > 0):
            return super().softmax_cross_entropy(z, t)
        xp = self.xp
        if not z.flags.c_contiguous:
            z = xp.ascontiguousarray(z)
        labels = t if (t.dtype == np.int64 and t.flags.c_contiguous) else xp.ascontiguousarray(t, dtype=np.int64)
        rows, cols = z.shape
        partials, counter = self._scratch_for(z)
        grad = xp.empty_like(z)
        loss = xp.empty((), dtype=z.dtype)
        threads = 32
        while threads < min(cols, THREADS_PER_BLOCK):
            threads *= 2  # a power of two for the tree reduction
        self._layer_kernel(z, "softmax_cross_entropy_rows")(
            (min(rows, MAX_LOSS_BLOCKS),),
            (threads,),
            (z, labels, grad, loss, partials, counter, np.int64(rows), np.int64(cols), np.float64(1.0 / rows)),
            shared_mem=threads * 8,
        )
        return loss, grad

    @classmethod
    def release_loss_scratch(cls, stream: int) -> None:
        """Forget the loss kernel's buffers of a stream that is done (its graph is gone)."""
        for key in [k for k in cls._loss_scratch if k[2] == stream]:
            del cls._loss_scratch[key]

    def _scratch_for(self, z: Any) -> tuple[Any, Any]:
        """The loss kernel's partial sums and block counter for z's device, dtype and the
        current stream: made at the first call there (sized for the largest grid), reused by
        every later one, including calls a CUDA graph recorded. The first call must not itself
        be captured: the counter's zeroing would only be recorded, not run, and a graph's
        temporary memory must not back a buffer kept for ever."""
        key = (device_of(z), z.dtype, stream_id(z))
        scratch = self._loss_scratch.get(key)
        if scratch is None:
            if is_capturing(z):
                raise RuntimeError(
                    "softmax_cross_entropy's first call on a stream is being captured into a CUDA graph; "
                    "run one step eagerly first, so that its scratch buffers exist before capture"
                )
            with key[0]:
                scratch = (self.xp.zeros(MAX_LOSS_BLOCKS, dtype=np.float64), self.xp.zeros(1, dtype=np.uint32))
            self._loss_scratch[key] = scratch
        return scratch

    def _code(self, activation: str) -> int:
        self._check_activation(activation)
        return ACTIVATION_CODES[activation]

    def _layer_kernel(self, x: Any, name: str) -> Any:
        return kernel(self.xp, LAYER_SOURCE, KERNEL_NAMES, name, x.dtype)

    # ------------------------------------------------------------------ optimizer updates
    # One launch of .update_source per update (two for sum_of_squares), the effective gradient
    # formed inside; hyperparameters go as float64 and each kernel rounds them once to the
    # buffer's dtype. While step_scalars is set, one more one-thread launch advances t first.

    REDUCE_BLOCKS = 1_024  # blocks of the sum-of-squares reduction: one atomicAdd each

    def sum_of_squares(self, x: Any, out: Any) -> None:
        """out[0] ← Σ x²: zero_sum, then a block reduction in double with one atomicAdd per block
        (no cuBLAS, no host read: a CUDA graph captures it; the order of the atomic additions
        varies, so the last bits may differ between runs)."""
        check_flat(x)
        out = device_pointer(out, 1, "out")
        self._update_kernel("zero_sum", None, (1,), (1,), (out,))
        blocks = (min(grid(x.size)[0], self.REDUCE_BLOCKS),)
        self._update_kernel("sum_of_squares", x.dtype, blocks, (THREADS_PER_BLOCK,), (x, np.int64(x.size), out))

    def sgd_update(
        self, p: Any, g: Any, *, lr: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None
    ) -> None:
        """p ← p − lr·g': one kernel."""
        self._launch_update("sgd_update", p, (g,), n_decay, (lr,), l2, l1, clip)

    def momentum_update(
        self, p: Any, g: Any, v: Any, *,
        lr: float, momentum: float, nesterov: bool = False, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0,
        clip: Any = None,
    ) -> None:  # fmt: skip
        """v ← μ·v + g';  p ← p − lr·v (Nesterov: − lr·(g' + μ·v)): one kernel."""
        hyper = (lr, momentum, np.int32(1 if nesterov else 0))
        self._launch_update("momentum_update", p, (g, v), n_decay, hyper, l2, l1, clip)

    def adagrad_update(
        self, p: Any, g: Any, h: Any, *,
        lr: float, eps: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """h ← h + g'²;  p ← p − lr·g' / (√h + ε): one kernel."""
        self._launch_update("adagrad_update", p, (g, h), n_decay, (lr, eps), l2, l1, clip)

    def rmsprop_update(
        self, p: Any, g: Any, s: Any, *,
        lr: float, alpha: float, eps: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """s ← α·s + (1−α)·g'²;  p ← p − lr·g' / (√s + ε): one kernel."""
        self._launch_update("rmsprop_update", p, (g, s), n_decay, (lr, alpha, eps), l2, l1, clip)

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, *,
        lr: float, beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0, n_decay: int = 0,
        l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """Adam / AdamW: one kernel (with step_scalars set it computes the constants from them)."""
        step_size, inv_sqrt_bc2, decay_factor = self.adam_constants(lr, beta1, beta2, step, weight_decay)
        hyper = (step_size, beta1, beta2, eps, inv_sqrt_bc2, decay_factor, weight_decay)
        self._launch_update("adam_update", p, (g, m, v), n_decay, hyper, l2, l1, clip)

    def _launch_update(
        self, name: str, p: Any, buffers: tuple[Any, ...], n_decay: int, hyper: tuple[Any, ...], l2: float, l1: float,
        clip: Any,
    ) -> None:  # fmt: skip
        check_flat(p, *buffers)
        max_norm, sq_norm = (0.0, None) if clip is None else clip
        scalars = device_pointer(self.step_scalars.get(), 2, "step_scalars")
        args = (
            p,
            *buffers,
            np.int64(p.size),
            np.int64(n_decay),
            *(h if isinstance(h, np.int32) else np.float64(h) for h in hyper),
            np.float64(l2),
            np.float64(l1),
            np.float64(max_norm),
            device_pointer(sq_norm, 1, "sq_norm"),
            scalars,
        )
        if scalars is not NULL:
            self._update_kernel("advance_step", None, (1,), (1,), (scalars,))
        self._update_kernel(name, p.dtype, grid(p.size), (THREADS_PER_BLOCK,), args)

    def _update_kernel(self, name: str, dtype: Any, blocks: tuple[int], threads: tuple[int], args: tuple) -> None:
        """Launch ``name`` of the update source: its instance for ``dtype``, or the plain
        extern "C" kernel when ``dtype`` is None."""
        source, names = update_source.CUDA_SOURCE, update_source.KERNEL_NAMES
        if dtype is None:
            function = compiled(self.xp, source, names).get_function(name)
        else:
            function = kernel(self.xp, source, names, name, dtype)
        function(blocks, threads, args)
