"""A small model's optimizer step on the CPU, with its Python done once.

``optimizer.step(regularizer)`` walks a chain of a dozen Python calls (the penalty's
coefficients, the kernels' dispatch, the piece runner, the effective gradient, the twin) and
hands NumPy its scalars as Python floats, which NumPy 2 converts on every call (~1 µs more
per call than a 0-d array of the buffer's dtype). For a model of a few thousand parameters
that Python is most of the update: on the digits network (7 510 parameters, Adam + L2) the
chain costs ~60 µs and the same NumPy calls made directly on 0-d operands ~40 µs.

:class:`SmallUpdate` makes those calls directly: it keeps views of the flat buffers and the
optimizer's own scratch, and one 0-d array per scalar operand, rewritten each step from the
optimizer's current hyperparameters (a write costs ~0.06 µs). Its passes are the twins' own
(``<rule>_passes`` in :mod:`gpunn.update_twins`) on the same operands in the same order, and
a 0-d operand holds the value NumPy would round the Python float to, so the bits equal
``optimizer.step(regularizer)``'s (``tests/test_cpu_update.py``). When a step needs what it
does not do — clipping, live scalars, an L1 or unfoldable regularizer, a rebound or moved
optimizer — it calls ``optimizer.step(regularizer)`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import cpu_fused
from ..backend.effective_gradient import add_l2
from ..backend.kernels import CHUNK
from ..backend.update_twins import (
    adagrad_passes,
    adam_constants,
    adam_passes,
    momentum_passes,
    rmsprop_passes,
    sgd_passes,
)
from ..nn.regularizers import Regularizer
from . import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, Optimizer, RMSprop

Update = Callable[[Regularizer | None], None]


def _adam_operands(opt: Adam) -> tuple[float, ...]:
    beta1, beta2 = opt.betas
    c = adam_constants(opt.lr, beta1, beta2, opt.step_count, opt.weight_decay)
    return (
        beta1,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        c["inv_sqrt_bc2"],
        opt.eps,
        c["step_size"],
        c["decay_factor"],
    )


@dataclass(frozen=True)
class _Rule:
    """How a rule's passes are called: its state buffers, in order; its scalar operands,
    as Python floats from the optimizer, in the passes' order; its other keyword arguments,
    read from the optimizer each step as ``_update`` reads them; and whether the last operand
    is a decay factor for the weights prefix (AdamW)."""

    state: tuple[str, ...]
    passes: Callable[..., None]
    operands: Callable[[Any], tuple[float, ...]]
    keywords: Callable[[Any], dict[str, Any]] = lambda _: {}
    decays: bool = False


# by exact type: a subclass may override _update
_RULES: dict[type, _Rule] = {
    SGD: _Rule((), sgd_passes, lambda o: (o.lr,)),
    Momentum: _Rule(("velocity",), momentum_passes, lambda o: (o.momentum, o.lr), lambda o: {"nesterov": o.nesterov}),
    Nesterov: _Rule(("velocity",), momentum_passes, lambda o: (o.momentum, o.lr), lambda o: {"nesterov": o.nesterov}),
    AdaGrad: _Rule(("sum_sq",), adagrad_passes, lambda o: (o.eps, o.lr)),
    RMSprop: _Rule(("square_avg",), rmsprop_passes, lambda o: (1.0 - o.alpha, o.alpha, o.eps, o.lr)),
    Adam: _Rule(("exp_avg", "exp_avg_sq"), adam_passes, _adam_operands, decays=True),
    AdamW: _Rule(("exp_avg", "exp_avg_sq"), adam_passes, _adam_operands, decays=True),
}


def compile_update(optimizer: Optimizer) -> Update:
    """``update(regularizer)`` ≡ ``optimizer.step(regularizer)``: a :class:`SmallUpdate` for
    one of gpunn's rules over one piece of CPU buffer (≤ CHUNK parameters: beyond that the
    passes' arithmetic dwarfs the Python), else the optimizer's own step."""
    flat = optimizer._flat
    if (
        type(optimizer) in _RULES
        and flat is not None
        and flat.valid
        and flat.device.kind == "cpu"
        and flat.size <= CHUNK
        and optimizer._scratch is not None
        and optimizer._scratch.shape == (1, flat.size)
    ):
        return SmallUpdate(optimizer)
    return optimizer.step


class SmallUpdate:
    """``update(regularizer)``: one step of ``optimizer`` (one of gpunn's rules, bound to a CPU
    flat buffer of one piece), with ``regularizer`` None or an L2 folded in as
    ``optimizer.step`` folds it: the rule sees ĝ = g + λ·W on the weights, g on the biases."""

    def __init__(self, optimizer: Optimizer) -> None:
        flat = optimizer._flat
        self.optimizer, self._flat, self._state = optimizer, flat, optimizer._state
        self._rule = rule = _RULES[type(optimizer)]
        n, k = flat.size, flat.n_decay
        self._p, self._g = flat.data, flat.grad
        self._buffers = tuple(self._state[name] for name in rule.state)
        self._plain_tmp = optimizer._scratch[0, :n]
        self._k, self._n = k, n
        self._decayed = self._p[:k]
        self._lanes: tuple[Any, ...] | None = None  # the penalty's views, made on first use
        self._operands: tuple[np.ndarray, ...] = ()  # one 0-d operand per scalar, made at the first step
        self._l2 = np.zeros((), flat.dtype)
        # Adam's constants for its one-pass loop, when Numba is there to compile it
        fused = (
            rule.passes is adam_passes and cpu_fused.installed() and cpu_fused.fits(self._p, self._g, *self._buffers)
        )
        self._fused = np.zeros(len(cpu_fused.ADAM_CONSTANTS), flat.dtype) if fused else None
        self._written = (self._p, *self._buffers)

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
        opt.step_count += 1  # before the operands: Adam's bias corrections read it
        try:
            done = self._run(opt, l2)
        except BaseException:
            opt.step_count -= 1
            raise
        if not done:  # a hyperparameter that is not a Python number: the rule's own arithmetic
            opt.step_count -= 1
            opt.step(regularizer)

    def _run(self, opt: Optimizer, l2: float) -> bool:
        """The step; False (nothing done) when an operand is not a Python number (an array
        set as lr, say), whose arithmetic a 0-d operand of the buffer's dtype would not mirror."""
        rule = self._rule
        values = rule.operands(opt)  # (Adam's need step_count ≥ 1: not before the first step)
        if not all(type(v) is float or type(v) is int for v in values):
            return False
        if self._fused is not None and cpu_fused.ready() and all(b.flags.writeable for b in self._written):
            # Adam's one compiled pass, penalty included (gpunn.cpu_fused); a buffer made
            # read-only since goes to the twin, which raises NumPy's error. One piece
            # (≤ CHUNK elements): no thread split. The flags come from the Python floats, as
            # the twin decides on them (an L2 too small for the dtype still adds fl(0·W)).
            constants, k = self._fused, self._k
            constants[0] = l2
            constants[1:] = values
            if cpu_fused.adam_small(
                self._p, self._g, *self._buffers, constants, k, l2 != 0.0 and k > 0, values[-1] != 1.0 and k > 0
            ):
                return True
        if len(self._operands) != len(values):
            self._operands = tuple(np.zeros((), self._flat.dtype) for _ in values)
        operands = self._operands
        for operand, value in zip(operands, values, strict=True):
            operand[()] = value
        g, tmp = self._g, self._plain_tmp
        if l2 != 0.0 and self._k:
            # effective_gradient's L2 case: ĝ_k = fl(g_k + fl(λ·W_k)), the biases' ĝ = g
            g, tmp, w_k, g_k, e_k, g_rest, e_rest = self._penalty_lanes()
            self._l2[()] = l2
            if e_rest.size:
                np.copyto(e_rest, g_rest)
            add_l2(w_k, g_k, e_k, self._l2)
        if rule.decays:  # the last operand is the weights' decay factor (AdamW; 1 for Adam)
            decayed = self._decayed if values[-1] != 1.0 and self._k else None
            rule.passes(self._p, g, *self._buffers, tmp, *operands[:-1], decayed, operands[-1])
        else:
            rule.passes(self._p, g, *self._buffers, tmp, *operands, **rule.keywords(opt))
        return True
