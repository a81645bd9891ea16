"""The update rules as plain array-module code: the twins of the fused CUDA kernels.

Each rule comes twice, working in place on flat buffers (NumPy on the CPU; CuPy arrays work too,
which is how the tests check each kernel against its twin on a GPU):

- ``<rule>_plain(p, g, *state, tmp, **hyper)``: the formula on g as given, a short sequence of
  in-place operations through the scratch ``tmp`` (as long as p), so a step allocates nothing;
- ``<rule>_reference(p, g, *state, tmp, **hyper, n_decay, scale, l2, l1)``: the same on the
  effective gradient ĝ (:func:`gpunn.effective_gradient.effective_gradient`), with ``tmp``
  twice as long when ĝ is not g.

The kernels get hyperparameters as float64 and round them once to the buffer's dtype, exactly
as a Python float is when it meets a float32 array here, so both paths compute with the same
constants. :mod:`gpunn.kernels` runs these in pieces (:mod:`gpunn.cpu_runner`) on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

from .device import array_module
from .effective_gradient import effective_gradient

# ----------------------------------------------------------------------------- SGD


def sgd_plain(p: Any, g: Any, tmp: Any, *, lr: float) -> None:
    """p ← p − lr·g"""
    sgd_passes(p, g, tmp, lr)


def sgd_passes(p: Any, g: Any, tmp: Any, lr: Any) -> None:
    """The in-place passes of :func:`sgd_plain`, its scalar operand given (see :func:`adam_passes`)."""
    xp = array_module(p)
    xp.multiply(g, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


def sgd_reference(
    p: Any, g: Any, tmp: Any, *, lr: float, n_decay: int = 0, scale: float = 1.0, l2: float = 0.0, l1: float = 0.0
) -> None:
    """p ← p − lr·ĝ  (ĝ: :func:`effective_gradient`; ĝ = g without penalty or clipping)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    sgd_plain(p, g, tmp, lr=lr)


# ----------------------------------------------------------------------------- Momentum / Nesterov


def momentum_plain(p: Any, g: Any, v: Any, tmp: Any, *, lr: float, momentum: float, nesterov: bool) -> None:
    """v ← μ·v + g;  p ← p − lr·v  (Nesterov: p ← p − lr·(g + μ·v))"""
    momentum_passes(p, g, v, tmp, momentum, lr, nesterov=nesterov)


def momentum_passes(p: Any, g: Any, v: Any, tmp: Any, momentum: Any, lr: Any, *, nesterov: bool) -> None:
    """The in-place passes of :func:`momentum_plain`, its scalar operands given (see :func:`adam_passes`)."""
    xp = array_module(p)
    xp.multiply(v, momentum, out=v)
    xp.add(v, g, out=v)
    if nesterov:
        xp.multiply(v, momentum, out=tmp)
        xp.add(tmp, g, out=tmp)
        xp.multiply(tmp, lr, out=tmp)
    else:
        xp.multiply(v, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


def momentum_reference(
    p: Any,
    g: Any,
    v: Any,
    tmp: Any,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """v ← μ·v + ĝ;  p ← p − lr·v  (Nesterov: p ← p − lr·(ĝ + μ·v))"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    momentum_plain(p, g, v, tmp, lr=lr, momentum=momentum, nesterov=nesterov)


# ----------------------------------------------------------------------------- AdaGrad


def adagrad_plain(p: Any, g: Any, h: Any, tmp: Any, *, lr: float, eps: float) -> None:
    """h ← h + g²;  p ← p − lr·g / (√h + ε)"""
    adagrad_passes(p, g, h, tmp, eps, lr)


def adagrad_passes(p: Any, g: Any, h: Any, tmp: Any, eps: Any, lr: Any) -> None:
    """The in-place passes of :func:`adagrad_plain`, its scalar operands given (see :func:`adam_passes`)."""
    xp = array_module(p)
    xp.multiply(g, g, out=tmp)
    xp.add(h, tmp, out=h)
    xp.sqrt(h, out=tmp)
    xp.add(tmp, eps, out=tmp)
    xp.divide(g, tmp, out=tmp)
    xp.multiply(tmp, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


def adagrad_reference(
    p: Any,
    g: Any,
    h: Any,
    tmp: Any,
    *,
    lr: float,
    eps: float,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """h ← h + ĝ²;  p ← p − lr·ĝ / (√h + ε)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    adagrad_plain(p, g, h, tmp, lr=lr, eps=eps)


# ----------------------------------------------------------------------------- RMSprop


def rmsprop_plain(p: Any, g: Any, s: Any, tmp: Any, *, lr: float, alpha: float, eps: float) -> None:
    """s ← α·s + (1−α)·g²;  p ← p − lr·g / (√s + ε)"""
    rmsprop_passes(p, g, s, tmp, 1.0 - alpha, alpha, eps, lr)


def rmsprop_passes(p: Any, g: Any, s: Any, tmp: Any, one_minus_alpha: Any, alpha: Any, eps: Any, lr: Any) -> None:
    """The in-place passes of :func:`rmsprop_plain`, its scalar operands given (see :func:`adam_passes`)."""
    xp = array_module(p)
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, one_minus_alpha, out=tmp)
    xp.multiply(s, alpha, out=s)
    xp.add(s, tmp, out=s)
    xp.sqrt(s, out=tmp)
    xp.add(tmp, eps, out=tmp)
    xp.divide(g, tmp, out=tmp)
    xp.multiply(tmp, lr, out=tmp)
    xp.subtract(p, tmp, out=p)


def rmsprop_reference(
    p: Any,
    g: Any,
    s: Any,
    tmp: Any,
    *,
    lr: float,
    alpha: float,
    eps: float,
    n_decay: int = 0,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """s ← α·s + (1−α)·ĝ²;  p ← p − lr·ĝ / (√s + ε)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    rmsprop_plain(p, g, s, tmp, lr=lr, alpha=alpha, eps=eps)


# ----------------------------------------------------------------------------- y += a·x


def axpy_reference(y: Any, x: Any, tmp: Any, *, a: float) -> None:
    """y ← y + a·x"""
    array_module(y).multiply(x, a, out=tmp)
    y += tmp


# ----------------------------------------------------------------------------- Adam / AdamW


def adam_constants(lr: float, beta1: float, beta2: float, step: int, weight_decay: float) -> dict[str, float]:
    """Step size, bias correction and decay factor of Adam's update number ``step`` (1-based).

    step_size = lr / (1 − β1^t);  inv_sqrt_bc2 = 1 / √(1 − β2^t);  decay_factor = 1 − lr·wd
    """
    return {
        "step_size": lr / (1.0 - beta1**step),
        "inv_sqrt_bc2": 1.0 / math.sqrt(1.0 - beta2**step),
        "decay_factor": 1.0 - lr * weight_decay,
    }


def adam_plain(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    *,
    n_decay: int,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    inv_sqrt_bc2: float,
    decay_factor: float,
) -> None:
    """:func:`adam_reference` on g itself (ĝ = g)"""
    decayed = p[:n_decay] if decay_factor != 1.0 and n_decay else None
    adam_passes(
        p, g, m, v, tmp, beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_sqrt_bc2, eps, step_size, decayed, decay_factor
    )


def adam_passes(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    beta1: Any,
    one_minus_beta1: Any,
    beta2: Any,
    one_minus_beta2: Any,
    inv_sqrt_bc2: Any,
    eps: Any,
    step_size: Any,
    decayed: Any = None,
    decay_factor: Any = 1.0,
) -> None:
    """The in-place passes of :func:`adam_plain`, every scalar operand given: Python floats, or
    0-d arrays of p's dtype holding them (rounded to that dtype, which is what NumPy does with
    a Python float operand, so the bits are the same; a 0-d operand costs ~1 µs less per call,
    which is what :mod:`gpunn.cpu_update` holds them for). ``decayed``: the weights prefix
    AdamW scales by ``decay_factor`` (None: no decay)."""
    xp = array_module(p)
    xp.multiply(m, beta1, out=m)
    xp.multiply(g, one_minus_beta1, out=tmp)
    xp.add(m, tmp, out=m)
    xp.multiply(v, beta2, out=v)
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, one_minus_beta2, out=tmp)
    xp.add(v, tmp, out=v)
    if decayed is not None:
        xp.multiply(decayed, decay_factor, out=decayed)
    xp.sqrt(v, out=tmp)
    xp.multiply(tmp, inv_sqrt_bc2, out=tmp)
    xp.add(tmp, eps, out=tmp)
    xp.divide(m, tmp, out=tmp)
    xp.multiply(tmp, step_size, out=tmp)
    xp.subtract(p, tmp, out=p)


def adam_reference(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    tmp: Any,
    *,
    n_decay: int,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    inv_sqrt_bc2: float,
    decay_factor: float,
    scale: float = 1.0,
    l2: float = 0.0,
    l1: float = 0.0,
) -> None:
    """m ← β1·m + (1−β1)·ĝ;  v ← β2·v + (1−β2)·ĝ²;  p[:n_decay] ← p[:n_decay]·decay_factor;
    p ← p − step_size·m / (√v·inv_sqrt_bc2 + ε)   (PyTorch's Adam/AdamW arithmetic; ĝ from the
    parameters before the decay)"""
    g, tmp = effective_gradient(p, g, tmp, n_decay=n_decay, scale=scale, l2=l2, l1=l1)
    adam_plain(
        p,
        g,
        m,
        v,
        tmp,
        n_decay=n_decay,
        step_size=step_size,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        inv_sqrt_bc2=inv_sqrt_bc2,
        decay_factor=decay_factor,
    )
