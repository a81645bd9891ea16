"""NumpyOps: the reference numeric primitives, written with the array module only.

Every layer, loss, regularizer and optimizer computes through the Ops of its arrays' device
(:func:`gpunn.backend.selection.ops_of`), never branching on the device. This class is the
reference: plain ``xp`` code, the formula on the page, for NumPy and CuPy arrays alike.
:class:`~gpunn.backend.numba_ops.NumbaOps` (CPU) and :class:`~gpunn.backend.cuda.ops.CupyOps`
(GPU) override what they make faster; ``gpunn check`` and tests/backend/test_ops_conformance.py hold
them to it. Arrays are batch-major, x (N, features); methods work in place where they say so
and allocate nothing they do not return; hyperparameters are Python floats, rounded once to
the buffer's dtype as NumPy rounds a Python float.
"""

from __future__ import annotations

import math
import threading
from contextvars import ContextVar
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from .device import refuse_host_read


class NumpyOps:
    """The reference primitives on the array module ``xp`` (numpy or cupy)."""

    name = "reference"

    def __init__(self, xp: ModuleType) -> None:
        self.xp = xp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.xp.__name__})"

    # ------------------------------------------------------------------ layers and losses
    # Activations by name (LeakyReLU's slope is ``alpha``); the derivatives are taken from the
    # saved output a = g(z): relu' = [a > 0], leaky' = 1 or alpha, σ' = a(1 − a), tanh' = 1 − a².
    # A few NumPy-only paths below are BLAS or layout tricks for speed; each says what it
    # changes (nothing, or the order of a sum), and NumbaOps reproduces their bits.

    ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
    _host_constants: ClassVar[dict[tuple[float, Any], Any]] = {}  # read-only NumPy zeros and ones, per dtype

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """a @ b for a (N, K) and b (K, M), into ``out`` (N, M) when given (a view is fine)."""
        return self.xp.matmul(a, b, out=out)

    def activation(self, x: Any, activation: str, alpha: float = 0.0, out: Any = None) -> Any:
        """a = g(x) elementwise; ``out`` may be x itself (identity without out returns x).

        relu max(x, 0); leaky_relu x if x > 0 else alpha·x; sigmoid 1/(1 + e^−x), computed as
        exp(−log(1 + e^−x)) (no overflow, full relative precision in both tails); tanh.
        """
        xp = self.xp
        if activation == "relu":
            # NumPy: against a zero row the vectorized loop runs; against the scalar 0 a strided
            # one, 2–3× slower on a 200×100 batch (the same values)
            zero = self._host_constant(0.0, x.shape[-1], x.dtype) if type(x) is np.ndarray else 0.0
            return xp.maximum(x, zero, out=out)
        if activation == "leaky_relu":
            return xp.multiply(x, xp.where(x > 0, x.dtype.type(1.0), x.dtype.type(alpha)), out=out)
        if activation == "sigmoid":
            y = xp.negative(x, out=out)
            xp.logaddexp(0.0, y, out=y)
            xp.negative(y, out=y)
            return xp.exp(y, out=y)
        if activation == "tanh":
            return xp.tanh(x, out=out)
        self._check_activation(activation)
        if out is None or out is x:
            return x
        out[...] = x
        return out

    def bias_activation(self, y: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
        """y ← g(y + b) in place, y (N, C), b (C,); returns y."""
        self._check_activation(activation)
        y += b
        return self.activation(y, activation, alpha, out=y)

    def activation_backward(
        self, dy: Any, a: Any, activation: str, alpha: float = 0.0, out: Any = None, db: Any = None
    ) -> Any:
        """dz = dy · g'(z) (N, C) from the saved output a = g(z); ``out`` may be dy itself.
        With ``db`` (C,) also db ← Σ_rows dz: the bias gradient of the Linear layer that made z."""
        xp = self.xp
        if activation == "relu":
            dz = xp.multiply(dy, a > 0, out=out)
        elif activation == "leaky_relu":
            dz = xp.multiply(dy, xp.where(a > 0, a.dtype.type(1.0), a.dtype.type(alpha)), out=out)
        elif activation == "sigmoid":
            factor = 1.0 - a
            factor *= a
            dz = xp.multiply(dy, factor, out=out)
        elif activation == "tanh":
            factor = a * a
            xp.subtract(1.0, factor, out=factor)
            dz = xp.multiply(dy, factor, out=out)
        else:
            self._check_activation(activation)
            dz = dy.copy() if out is None else out
            if out is not None and out is not dy:
                out[...] = dy
        if db is not None:
            self.column_sums(dz, db)
        return dz

    def column_sums(self, x: Any, out: Any) -> Any:
        """out ← Σ_rows x for x (N, C) and out (C,): a bias gradient; returns out.

        NumPy: the product 1ᵀ·x (a BLAS matrix-vector product), 1.5–3× faster than NumPy's
        row-by-row sum from 32×100 to 512×4096; it rounds as BLAS sums, differently from
        NumPy's pairwise sum by float rounding. Other layouts, and CuPy: x.sum(axis=0).
        """
        fits = out.dtype == x.dtype and out.shape == x.shape[1:] and out.flags.c_contiguous
        if type(x) is np.ndarray and x.ndim == 2 and x.dtype in (np.float32, np.float64) and fits:
            return np.matmul(self._host_constant(1.0, x.shape[0], x.dtype), x, out=out)
        return x.sum(axis=0, out=out)

    def softmax_cross_entropy(self, z: Any, t: Any) -> tuple[Any, Any]:
        """Softmax-with-loss, forward and backward together: (loss, grad).

        z (N, C) logits; t (N,) integer labels in [0, C) (not range-checked here), or (N, C)
        target probabilities. With c the row max and lse = log Σ_j exp(z_j − c):
        loss = −(1/N) Σ_n log softmax(z_n)[t_n] = (1/N) Σ_n (lse_n − (z_n,t_n − c_n)), a 0-d
        array of z's dtype (for targets: (1/N) Σ_n Σ_k t_nk (lse_n − (z_nk − c_n)));
        grad = (softmax(z) − onehot(t)) / N, softmax = exp(z − c) / Σ exp(z − c).
        """
        xp = self.xp
        if not z.flags.c_contiguous:  # the label gather below indexes grad's rows as one flat run
            z = xp.ascontiguousarray(z)
        n, n_classes = z.shape
        shifted = z - self._row_max(z)
        exp = xp.exp(shifted)
        sums = self._row_sums(exp)
        lse = xp.log(sums)
        grad = exp / sums
        if t.ndim == 1:
            # z[n, t_n] gathered at the flat index n·C + t_n: the elements of z[arange(N), t]
            # in the same order, 3× faster for a small NumPy batch
            at = xp.arange(0, n * n_classes, n_classes, dtype=np.int64) + t
            loss = (lse.sum() - shifted.ravel().take(at).sum()) * (1.0 / n)
            grad.ravel()[at] -= 1.0  # grad is a fresh contiguous array: ravel is a view
        else:
            t = t.astype(z.dtype, copy=False)
            loss = ((t.sum(axis=1, keepdims=True) * lse).sum() - (t * shifted).sum()) * (1.0 / n)
            grad -= t
        grad *= 1.0 / n
        return xp.asarray(loss), grad

    def _check_activation(self, activation: str) -> None:
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(self.ACTIVATIONS)}")

    def _host_constant(self, value: float, n: int, dtype: Any) -> Any:
        """n copies of ``value`` (NumPy, read only): a view of one vector kept per value and dtype."""
        vector = self._host_constants.get((value, dtype))
        if vector is None or vector.shape[0] < n:
            vector = np.full(max(n, 256), value, dtype=dtype)
            vector.flags.writeable = False  # shared by every caller
            self._host_constants[(value, dtype)] = vector
        return vector[:n]

    def _row_max(self, z: Any) -> Any:
        """max over each row of z (N, C), shaped (N, 1). NumPy reduces a short last axis row by
        row; for few classes the transposed copy's maxima come out of one vectorized pass,
        2–3× faster for 200×10 (a maximum does not depend on the order: the same values)."""
        n, n_classes = z.shape
        if type(z) is np.ndarray and n_classes <= 32 and n >= 32:
            return z.T.copy().max(axis=0)[:, None]
        return z.max(axis=1, keepdims=True)

    def _row_sums(self, x: Any) -> Any:
        """Σ over each row of x (N, C), shaped (N, 1). NumPy, few columns: the BLAS product x·1,
        2–3× faster for 200×10; it rounds as BLAS sums (a sample's last bit may depend on where
        it sits in the batch), the same bits for the same batch."""
        n_classes = x.shape[1]
        if type(x) is np.ndarray and n_classes <= 32 and x.dtype in (np.float32, np.float64):
            return np.matmul(x, self._host_constant(1.0, n_classes, x.dtype))[:, None]
        return x.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ optimizer updates
    # p, g and every state buffer are flat, contiguous and of one float dtype; the first n_decay
    # elements are weights (L2, L1 and AdamW's decay act on them only), the rest biases. Every
    # rule sees the effective gradient
    #     g' = g·s + [i < n_decay]·(l2·p + l1·sign(p)),
    #     s = min(1, max_norm / (√sq_norm + 1e-6)) with clip = (max_norm, sq_norm), else 1:
    # the loss gradient clipped, then the penalty added (PyTorch's order); g itself is only read.
    # Each rule is a short sequence of in-place passes through a scratch vector kept per thread
    # (:meth:`_scratch`), so a step allocates nothing after the first.

    # While set (by gpunn.train.graph, around the steps a CUDA graph captures and replays): a
    # float64 array [lr, t] on the device; each update adds 1 to t there, then takes lr and the
    # step number from it instead of the Python values given. None: the values given.
    step_scalars: ClassVar[ContextVar[Any]] = ContextVar("gpunn_step_scalars", default=None)

    def sum_of_squares(self, x: Any, out: Any) -> None:
        """out[0] ← Σ x² for a flat x; ``out``: a 1-element float64 array on x's device. One dot
        product in x's dtype; nothing is read back to the host."""
        out[...] = x @ x

    def sgd_update(
        self, p: Any, g: Any, *, lr: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None
    ) -> None:
        """p ← p − lr·g'"""
        xp = self.xp
        lr, _ = self._lr_and_step(lr, 0)
        g, tmp = self._effective_gradient(p, g, n_decay, l2, l1, clip)
        xp.multiply(g, lr, out=tmp)
        xp.subtract(p, tmp, out=p)

    def momentum_update(
        self, p: Any, g: Any, v: Any, *,
        lr: float, momentum: float, nesterov: bool = False, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0,
        clip: Any = None, dampening: float = 0.0,
    ) -> None:  # fmt: skip
        """v ← μ·v + (1 − dampening)·g';  p ← p − lr·v  (Nesterov: p ← p − lr·(g' + μ·v));
        with dampening 0 the term is g' itself, unscaled."""
        xp = self.xp
        lr, _ = self._lr_and_step(lr, 0)
        g, tmp = self._effective_gradient(p, g, n_decay, l2, l1, clip)
        xp.multiply(v, momentum, out=v)
        if dampening != 0.0:
            xp.multiply(g, 1.0 - dampening, out=tmp)
            xp.add(v, tmp, out=v)
        else:
            xp.add(v, g, out=v)
        if nesterov:
            xp.multiply(v, momentum, out=tmp)
            xp.add(tmp, g, out=tmp)
            xp.multiply(tmp, lr, out=tmp)
        else:
            xp.multiply(v, lr, out=tmp)
        xp.subtract(p, tmp, out=p)

    def adagrad_update(
        self, p: Any, g: Any, h: Any, *,
        lr: float, eps: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """h ← h + g'²;  p ← p − lr·g' / (√h + ε)"""
        xp = self.xp
        lr, _ = self._lr_and_step(lr, 0)
        g, tmp = self._effective_gradient(p, g, n_decay, l2, l1, clip)
        xp.multiply(g, g, out=tmp)
        xp.add(h, tmp, out=h)
        self._rms_step(p, g, h, tmp, lr, eps)

    def rmsprop_update(
        self, p: Any, g: Any, s: Any, *,
        lr: float, alpha: float, eps: float, n_decay: int = 0, l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """s ← α·s + (1−α)·g'²;  p ← p − lr·g' / (√s + ε)"""
        xp = self.xp
        lr, _ = self._lr_and_step(lr, 0)
        g, tmp = self._effective_gradient(p, g, n_decay, l2, l1, clip)
        xp.multiply(g, g, out=tmp)
        xp.multiply(tmp, 1.0 - alpha, out=tmp)
        xp.multiply(s, alpha, out=s)
        xp.add(s, tmp, out=s)
        self._rms_step(p, g, s, tmp, lr, eps)

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, *,
        lr: float, beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0, n_decay: int = 0,
        l2: float = 0.0, l1: float = 0.0, clip: Any = None,
    ) -> None:  # fmt: skip
        """m ← β1·m + (1−β1)·g';  v ← β2·v + (1−β2)·g'²;  p[:n_decay] ← p[:n_decay]·(1 − lr·wd);
        p ← p − step_size·m / (√v·inv_sqrt_bc2 + ε), step_size = lr / (1 − β1^t),
        inv_sqrt_bc2 = 1 / √(1 − β2^t)  (PyTorch's Adam / AdamW arithmetic, t = ``step`` ≥ 1;
        ``weight_decay``: AdamW's decoupled decay; g' from the parameters before the decay)."""
        xp = self.xp
        lr, step = self._lr_and_step(lr, step)
        step_size, inv_sqrt_bc2, decay_factor = self.adam_constants(lr, beta1, beta2, step, weight_decay)
        g, tmp = self._effective_gradient(p, g, n_decay, l2, l1, clip)
        xp.multiply(m, beta1, out=m)
        xp.multiply(g, 1.0 - beta1, out=tmp)
        xp.add(m, tmp, out=m)
        xp.multiply(v, beta2, out=v)
        xp.multiply(g, g, out=tmp)
        xp.multiply(tmp, 1.0 - beta2, out=tmp)
        xp.add(v, tmp, out=v)
        if decay_factor != 1.0 and n_decay > 0:
            decayed = p[:n_decay]
            xp.multiply(decayed, decay_factor, out=decayed)
        self._rms_step(p, m, v, tmp, step_size, eps, inv_sqrt_bc2)

    def _rms_step(self, p: Any, u: Any, s: Any, tmp: Any, lr: float, eps: float, s_scale: Any = None) -> None:
        """p ← p − lr·u / (√s·s_scale + ε) (without s_scale: √s + ε), through the scratch tmp."""
        xp = self.xp
        xp.sqrt(s, out=tmp)
        if s_scale is not None:
            xp.multiply(tmp, s_scale, out=tmp)
        xp.add(tmp, eps, out=tmp)
        xp.divide(u, tmp, out=tmp)
        xp.multiply(tmp, lr, out=tmp)
        xp.subtract(p, tmp, out=p)

    @staticmethod
    def adam_constants(lr: float, beta1: float, beta2: float, step: int, weight_decay: float) -> tuple[float, ...]:
        """(step_size, inv_sqrt_bc2, decay_factor) of Adam's update number ``step``, in double:
        lr / (1 − β1^t), 1 / √(1 − β2^t), 1 − lr·wd."""
        return lr / (1.0 - beta1**step), 1.0 / math.sqrt(1.0 - beta2**step), 1.0 - lr * weight_decay

    def _lr_and_step(self, lr: float, step: int) -> tuple[float, int]:
        """(lr, step) as given, or, while :attr:`step_scalars` is set, from that array after
        advancing its t by one."""
        scalars = self.step_scalars.get()
        if scalars is None:
            return lr, step
        if type(scalars) is not np.ndarray:  # a device array: reading it is a copy to the host
            refuse_host_read("the reference Ops read the step's learning rate and number back to the host")
        scalars[1:] += 1.0
        return float(scalars[0]), int(scalars[1])

    def _effective_gradient(self, p: Any, g: Any, n_decay: int, l2: float, l1: float, clip: Any) -> tuple[Any, Any]:
        """(g', a scratch vector as long as p for the rule). Without clipping or penalty g' is g
        itself; otherwise it is formed in a second scratch vector, each term rounded to the
        dtype: fl(g·s) (s rounded once), then + fl(l2·p), then + fl(l1·sign(p)) on the weights."""
        n = p.size
        k = min(max(n_decay, 0), n)
        if clip is None and (k == 0 or (l2 == 0.0 and l1 == 0.0)):
            return g, self._scratch(p, n)
        xp = self.xp
        tmp = self._scratch(p, 2 * n)
        rest, e = tmp[:n], tmp[n:]
        if clip is None:
            e[...] = g
        else:
            max_norm, sq_norm = clip  # s in double on the device (fmin: a NaN norm gives 1)
            xp.multiply(g, xp.fmin(1.0, max_norm / (xp.sqrt(sq_norm[0]) + 1e-6)).astype(p.dtype), out=e)
        pk, ek, rk = p[:k], e[:k], rest[:k]
        if l2 != 0.0:
            xp.multiply(pk, l2, out=rk)
            ek += rk
        if l1 != 0.0:
            xp.sign(pk, out=rk)
            rk *= l1
            ek += rk
        return e, rest

    def _scratch(self, like: Any, size: int) -> Any:
        """``size`` elements of like's dtype on this Ops' device: one vector per thread and
        dtype, kept and grown to the largest size asked (threads never share one)."""
        local = self.__dict__.get("_scratch_local") or self.__dict__.setdefault("_scratch_local", threading.local())
        kept = local.__dict__  # this thread's own
        buffer = kept.get(like.dtype)
        if buffer is None or buffer.size < size:
            buffer = kept[like.dtype] = self.xp.empty(size, dtype=like.dtype)
        return buffer[:size]
