"""A small model's Adam step on the CPU, with its Python done once.

``optimizer.step(regularizer)`` walks a chain of a dozen Python calls (the penalty's
coefficients, the kernels' dispatch, the piece runner, the effective gradient, the twin) and
hands NumPy its scalars as Python floats, which NumPy 2 converts on every call (~1 µs more
per call than a 0-d array of the buffer's dtype). For a model of a few thousand parameters
that Python is most of the update: on the digits network (7 510 parameters, Adam + L2) the
chain costs ~60 µs and the same NumPy calls made directly on 0-d operands ~40 µs.

:class:`SmallAdamUpdate` makes those calls directly: it keeps views of the flat buffers and
the optimizer's own scratch, and one 0-d array per scalar operand, rewritten each step from
the optimizer's current hyperparameters (a write costs ~0.06 µs). Its passes are the twin's
own (:func:`gpunn.update_twins.adam_passes`) on the same operands in the same order, and a
0-d operand holds the value NumPy would round the Python float to, so the bits equal
``optimizer.step(regularizer)``'s (``tests/test_cpu_update.py``). When a step needs what it
does not do — clipping, live scalars, an L1 or unfoldable regularizer, a rebound or moved
optimizer — it calls ``optimizer.step(regularizer)`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .kernels import CHUNK
from .optim import Adam, AdamW, Optimizer
from .regularizers import Regularizer
from .update_twins import adam_constants, adam_passes

Update = Callable[[Regularizer | None], None]


def compile_update(optimizer: Optimizer) -> Update:
    """``update(regularizer)`` ≡ ``optimizer.step(regularizer)``: a :class:`SmallAdamUpdate`
    for an Adam or AdamW over one piece of CPU buffer (≤ CHUNK parameters: beyond that the
    passes' arithmetic dwarfs the Python), else the optimizer's own step."""
    flat = optimizer._flat
    if (
        type(optimizer) in (Adam, AdamW)
        and flat is not None
        and flat.valid
        and flat.device.kind == "cpu"
        and flat.size <= CHUNK
        and optimizer._scratch is not None
        and optimizer._scratch.shape == (1, flat.size)
    ):
        return SmallAdamUpdate(optimizer)
    return optimizer.step


class SmallAdamUpdate:
    """``update(regularizer)``: one Adam / AdamW step of ``optimizer`` (bound to a CPU flat
    buffer of one piece), with ``regularizer`` None or an L2 folded in as
    ``optimizer.step`` folds it:

        ĝ = g + λ·W (weights only);  m ← β1·m + (1 − β1)·ĝ;  v ← β2·v + (1 − β2)·ĝ²;
        W ← W·(1 − lr·wd) (AdamW);   p ← p − step_size·m / (√v·inv_sqrt_bc2 + ε)
    """

    def __init__(self, optimizer: Adam) -> None:
        flat = optimizer._flat
        self.optimizer, self._flat, self._state = optimizer, flat, optimizer._state
        n, k = flat.size, flat.n_decay
        dtype = flat.dtype
        self._p, self._g = flat.data, flat.grad
        self._m, self._v = self._state["exp_avg"], self._state["exp_avg_sq"]
        self._plain_tmp = optimizer._scratch[0, :n]
        self._k, self._n = k, n
        self._decayed = self._p[:k]
        self._lanes: tuple[Any, ...] | None = None  # the penalty's views, made on first use
        # the 0-d operands, in adam_passes' order after the buffers
        self._scalars = tuple(np.zeros((), dtype) for _ in range(7))
        self._l2 = np.zeros((), dtype)
        self._decay_factor = np.zeros((), dtype)
        self._betas: tuple[float, float] | None = None

    def _still_bound(self) -> bool:
        opt = self.optimizer
        return opt._flat is self._flat and self._flat.valid and opt._state is self._state

    def _penalty_lanes(self) -> tuple[Any, ...]:
        """(ĝ, the rule's scratch, W_k, g_k, ĝ_k, g of the biases, ĝ of the biases): views of
        the optimizer's two-lane scratch, laid out as effective_gradient lays them."""
        if self._lanes is None:
            tmp = self.optimizer._penalty_scratch(self._flat)[0]
            n, k = self._n, self._k
            e, rest = tmp[n : 2 * n], tmp[:n]
            self._lanes = (e, rest, self._p[:k], self._g[:k], e[:k], self._g[k:], e[k:])
        return self._lanes

    def __call__(self, regularizer: Regularizer | None = None) -> None:
        opt = self.optimizer
        if opt.max_grad_norm is not None or opt._live_on or not self._still_bound():
            opt.step(regularizer)
            return
        l2 = 0.0
        if regularizer is not None:
            coefficients = regularizer.fused_coefficients() if isinstance(regularizer, Regularizer) else None
            if coefficients is None or coefficients[1] != 0.0:
                opt.step(regularizer)  # L1, a regularizer of another form, or a wrong argument
                return
            l2 = coefficients[0]
        opt.step_count += 1
        try:
            self._run(opt, l2)
        except BaseException:
            opt.step_count -= 1
            raise

    def _run(self, opt: Adam, l2: float) -> None:
        betas = opt.betas
        b1, c1, b2, c2, inv_sqrt_bc2, eps, step_size = self._scalars
        if betas != self._betas:
            beta1, beta2 = betas
            b1[()], c1[()], b2[()], c2[()] = beta1, 1.0 - beta1, beta2, 1.0 - beta2
            self._betas = betas
        constants = adam_constants(opt.lr, betas[0], betas[1], opt.step_count, opt.weight_decay)
        inv_sqrt_bc2[()] = constants["inv_sqrt_bc2"]
        eps[()] = opt.eps
        step_size[()] = constants["step_size"]
        decayed = None
        if constants["decay_factor"] != 1.0 and self._k:
            self._decay_factor[()] = constants["decay_factor"]
            decayed = self._decayed
        g, tmp = self._g, self._plain_tmp
        if l2 != 0.0 and self._k:
            # effective_gradient's L2 case: ĝ_k = fl(g_k + fl(λ·W_k)), the biases' ĝ = g
            g, tmp, w_k, g_k, e_k, g_rest, e_rest = self._penalty_lanes()
            self._l2[()] = l2
            if e_rest.size:
                np.copyto(e_rest, g_rest)
            np.multiply(w_k, self._l2, out=e_k)
            np.add(e_k, g_k, out=e_k)
        adam_passes(self._p, g, self._m, self._v, tmp, *self._scalars, decayed, self._decay_factor)
