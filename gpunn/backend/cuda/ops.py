"""CupyOps: fused CUDA kernels overriding the reference Ops on a GPU.

Each override is one kernel launch (or a few) where the reference takes several CuPy calls of
15–20 µs of host time each. NVRTC compiles them with its default contraction (see
:mod:`.compile`); tests/backend/test_ops_conformance.py holds them to the reference within a bound
stated per kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..device import device_of
from ..ops import NumpyOps
from . import gemm, update_source
from .compile import NULL, THREADS_PER_BLOCK, check_flat, device_pointer, grid, is_capturing, kernel, stream_id
from .layer_source import ACTIVATION_CODES, BIAS_COLUMNS, BIAS_ROW_THREADS, KERNEL_NAMES, LAYER_SOURCE, MAX_LOSS_BLOCKS


class CupyOps(NumpyOps):
    """NumpyOps with fused kernels on CuPy arrays."""

    name = "cuda"

    # ------------------------------------------------------------------ layers and losses
    # Kernels from .layer_source; a layout a kernel does not take (strided, mixed dtypes,
    # empty) goes to the reference, which handles any.

    # (device, dtype, stream) → the loss kernel's scratch (partials: MAX_LOSS_BLOCKS float64,
    # counter: one uint32, 0 between launches). One pair per stream: launches on two streams may
    # overlap and would mix their partial sums and tickets. Kept until release_loss_scratch(stream):
    # a captured CUDA graph holds their addresses.
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
        args = (y, b, np.int64(y.size), np.int64(y.shape[1]), np.int32(code), np.float64(alpha))
        self._layer_kernel(y, "bias_activation_forward")(grid(y.size), (THREADS_PER_BLOCK,), args)
        return y

    def activation_backward(
        self, dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None, db: Any = None
    ) -> Any:
        """dz = dy · g'(z), and with ``db`` the column sums of dz in the same pass: one kernel
        (the sums deterministic: a fixed order per column, no atomics)."""
        code = self._code(activation)

        def fits(x: Any, shape: tuple[int, ...]) -> bool:  # absent, or C-contiguous of dy's dtype and this shape
            return x is None or (x.shape == shape and x.dtype == dy.dtype and x.flags.c_contiguous)

        takes = dy.ndim == 2 and dy.size > 0 and dy.flags.c_contiguous and fits(a, dy.shape) and fits(out, dy.shape)
        if not (takes and fits(db, dy.shape[1:])):
            return super().activation_backward(dy, a, activation, alpha, out, db)
        if out is None:
            out = self.xp.empty_like(dy)
        if db is None:
            args = (out, dy, a, np.int64(dy.size), np.int32(code), np.float64(alpha))
            self._layer_kernel(dy, "activation_backward")(grid(dy.size), (THREADS_PER_BLOCK,), args)
            return out
        rows, cols = dy.shape
        args = (out, dy, a, db, np.int64(rows), np.int64(cols), np.int32(code), np.float64(alpha))
        block = (BIAS_COLUMNS, BIAS_ROW_THREADS)  # a tile of columns × threads down the rows
        self._layer_kernel(dy, "activation_bias_backward")(grid(cols, BIAS_COLUMNS), block, args)
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
        args = (z, labels, grad, loss, partials, counter, np.int64(rows), np.int64(cols), np.float64(1.0 / rows))
        blocks = (min(rows, MAX_LOSS_BLOCKS),)
        self._layer_kernel(z, "softmax_cross_entropy_rows")(blocks, (threads,), args, shared_mem=threads * 8)
        return loss, grad

    @classmethod
    def release_loss_scratch(cls, stream: int) -> None:
        """Forget the loss kernel's buffers of a stream that is done (its graph is gone)."""
        for key in [k for k in cls._loss_scratch if k[2] == stream]:
            del cls._loss_scratch[key]

    def _scratch_for(self, z: Any) -> tuple[Any, Any]:
        """The loss kernel's partial sums and block counter for z's device, dtype and the current
        stream: made at the first call there, reused by every later one (graph replays included).
        That first call must not be captured: the counter's zeroing would only be recorded, and a
        graph's temporary memory must not back a buffer kept for ever."""
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
    # ``penalties``: NumpyOps' keywords n_decay, l2, l1 and clip.

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

    def sgd_update(self, p: Any, g: Any, *, lr: float, **penalties: Any) -> None:
        """p ← p − lr·g': one kernel."""
        self._launch_update("sgd_update", p, (g,), (lr,), **penalties)

    def momentum_update(
        self, p: Any, g: Any, v: Any, *,
        lr: float, momentum: float, nesterov: bool = False, dampening: float = 0.0, **penalties: Any,
    ) -> None:  # fmt: skip
        """v ← μ·v + g';  p ← p − lr·v (Nesterov: − lr·(g' + μ·v)): one kernel. With dampening
        (SGD's, rarely used): the reference's passes, which a CUDA graph cannot capture."""
        if dampening != 0.0:
            kw = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "dampening": dampening}
            super().momentum_update(p, g, v, **kw, **penalties)
            return
        self._launch_update("momentum_update", p, (g, v), (lr, momentum, np.int32(1 if nesterov else 0)), **penalties)

    def adagrad_update(self, p: Any, g: Any, h: Any, *, lr: float, eps: float, **penalties: Any) -> None:
        """h ← h + g'²;  p ← p − lr·g' / (√h + ε): one kernel."""
        self._launch_update("adagrad_update", p, (g, h), (lr, eps), **penalties)

    def rmsprop_update(self, p: Any, g: Any, s: Any, *, lr: float, alpha: float, eps: float, **penalties: Any) -> None:
        """s ← α·s + (1−α)·g'²;  p ← p − lr·g' / (√s + ε): one kernel."""
        self._launch_update("rmsprop_update", p, (g, s), (lr, alpha, eps), **penalties)

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, *,
        lr: float, beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0, **penalties: Any,
    ) -> None:  # fmt: skip
        """Adam / AdamW: one kernel (with step_scalars set it computes the constants from them)."""
        step_size, inv_sqrt_bc2, decay_factor = self.adam_constants(lr, beta1, beta2, step, weight_decay)
        hyper = (step_size, beta1, beta2, eps, inv_sqrt_bc2, decay_factor, weight_decay)
        self._launch_update("adam_update", p, (g, m, v), hyper, **penalties)

    def _launch_update(
        self, name: str, p: Any, buffers: tuple[Any, ...], hyper: tuple[Any, ...], *,
        n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        check_flat(p, *buffers)
        max_norm, sq_norm = (0.0, None) if clip is None else clip
        scalars = device_pointer(self.step_scalars.get(), 2, "step_scalars")
        doubles = tuple(h if isinstance(h, np.int32) else np.float64(h) for h in hyper)
        fused = (np.float64(l2), np.float64(l1), np.float64(max_norm), device_pointer(sq_norm, 1, "sq_norm"), scalars)
        args = (p, *buffers, np.int64(p.size), np.int64(n_decay), *doubles, *fused)  # the C signature's order
        if scalars is not NULL:
            self._update_kernel("advance_step", None, (1,), (1,), (scalars,))
        self._update_kernel(name, p.dtype, grid(p.size), (THREADS_PER_BLOCK,), args)

    def _update_kernel(self, name: str, dtype: Any, blocks: tuple[int], threads: tuple[int], args: tuple) -> None:
        """Launch ``name`` of the update source for ``dtype`` (None: a plain extern "C" kernel)."""
        kernel(self.xp, update_source.CUDA_SOURCE, update_source.KERNEL_NAMES, name, dtype)(blocks, threads, args)
