"""A compiled CPU training step: the layered step's NumPy calls, with the Python around them
done once.

A small network's CPU step is a few dozen NumPy calls of a few µs each, and the layers,
Sequential and their checks add Python around every one. :class:`CompiledStep` is the CPU
counterpart of :mod:`gpunn.graph`'s replay: built once for a model, it takes the decisions the
layered step takes every time — the fusion of each Linear with its activation, which layer
sums which bias gradient, where each result goes — and keeps one output buffer per layer and
batch size (the layered step allocates them anew), so that a step is the plain list of calls:

    forward   a^[l] = g(a^[l−1]·W^[l] + b^[l])           (a product into a kept buffer, bias_activation)
    loss      the model's loss, forward and backward      (its own code)
    backward  ∂W = aᵀ·dz, dz = g'(·)⊙(dy·Wᵀ), ∂b = Σ_n dz  (the twins Layer.backward calls)
    update    optimizer.step(regularizer)                  (a small Adam: :mod:`gpunn.cpu_update`)

Every call is one the layered path makes on the CPU, on the same operands, so a compiled step
gives the layered step's bits exactly (``tests/test_cpu_step.py`` checks every activation, loss
and optimizer). Trainer.fit and gpunn.sklearn train through it on the CPU; measured on the
digits fit of ``benchmarks/sklearn_digits.py`` it is 4–5 % faster than the layered step
(interleaved fits), and on a 4-4-3 network with 2 samples, where the step is all dispatch,
11 % (``benchmarks/dispatch_overhead.py``). What it cannot compile (a Dropout that draws masks,
Softmax, a subclass or a layer it does not know, a model on a GPU) it refuses with a reason
(:func:`unsupported_reason`) and the caller steps layer by layer. The logits it returns are a
kept buffer: the next step of that batch size overwrites them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend.layer_kernels import activation_backward, bias_activation, column_sums
from ..nn.activations import ElementwiseActivation, Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from ..nn.layers import Dropout, Linear, check_input
from ..nn.losses import Loss
from ..nn.parameter import pack
from ..nn.regularizers import Regularizer
from ..nn.sequential import Sequential
from ..optim import Optimizer
from ..optim.cpu_update import compile_update

Forward = Callable[[np.ndarray], np.ndarray]
Backward = Callable[[np.ndarray], np.ndarray | None]

# The layers a compiled step knows, by exact type: a subclass may override forward or backward.
_KNOWN = (Linear, Identity, ReLU, LeakyReLU, Sigmoid, Tanh)
MAX_BATCH_SIZES = 4  # programs kept per step (a fit needs two: full batches and the last one)


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot be compiled for the CPU, or None when it can."""
    if type(model) is not Sequential:
        return f"a compiled step needs a gpunn Sequential, got {type(model).__name__}"
    params = model.parameters()
    if not params:
        return "the model has no parameters"
    if params[0].device.kind != "cpu":
        return f"the model is on {params[0].device}; a compiled step runs on the CPU (graph replay runs on a GPU)"
    for layer in model.layers:
        if type(layer) is Dropout:
            if layer.training and layer.p > 0:
                return f"{layer!r} draws a mask per step"
        elif type(layer) not in _KNOWN:
            return f"a compiled step does not know {type(layer).__name__}"
    return None


def compile_step(
    model: Any, loss: Loss, optimizer: Optimizer, regularizer: Regularizer | None, previous: CompiledStep | None = None
) -> CompiledStep | None:
    """A compiled step for ``model`` (``previous`` when it was compiled for the same model,
    loss and optimizer and is still current, with ``regularizer`` set), or None when the
    model cannot be compiled (the caller then steps layer by layer)."""
    if (
        previous is not None
        and previous.model is model
        and previous.loss is loss
        and previous.optimizer is optimizer
        and previous.current()
    ):
        previous.regularizer = regularizer
        return previous
    if unsupported_reason(model) is not None or _optimizer_reason(model, optimizer) is not None:
        return None
    return CompiledStep(model, loss, optimizer, regularizer)


def _optimizer_reason(model: Any, optimizer: Optimizer) -> str | None:
    """Why ``optimizer`` cannot drive a compiled step of ``model``, or None: the step keeps
    views of the model's flat buffer, so the optimizer must update that very buffer. One
    bound to some of the parameters (the others frozen) has a buffer of its own, and packing
    the whole model for the step would move its parameters away from it."""
    flat = optimizer._flat
    if flat is not None and not flat.valid:
        flat = optimizer._current_flat()  # the model moved or was repacked: what its next step does first
    if flat is None or not flat.owns(model.parameters()):
        return "the optimizer is not bound to all of the model's parameters in their flat buffer"
    return None


class CompiledStep:
    """``step(x, t)`` = one training step of ``model`` on the CPU, returning the loss (a 0-d
    array); the logits of that step are in ``step.logits``.

    Equivalent, bit for bit, to::

        logits = model.forward(x); value = loss.forward(logits, t)
        model.backward(loss.backward(), input_grad=False); optimizer.step(regularizer)

    x: (N, n_in) NumPy array of the model's dtype; t: what ``loss`` takes. Per batch size N
    the step keeps one output and one gradient buffer per Linear layer (the layered step
    allocates them per step). :meth:`current` says whether the model is still the one compiled
    (its parameters not moved or repacked, its layers and modes unchanged).
    """

    def __init__(self, model: Sequential, loss: Loss, optimizer: Optimizer, regularizer: Regularizer | None) -> None:
        reason = unsupported_reason(model) or _optimizer_reason(model, optimizer)
        if reason is not None:
            raise ValueError(reason)
        self.model, self.loss, self.optimizer, self.regularizer = model, loss, optimizer, regularizer
        self._layers = tuple(model.layers)
        self._signature = _signature(self._layers)
        params = model.parameters()
        self._flat = pack(params)
        self._bound = tuple(p.data for p in params)
        # activations keep the width, so x must have the first Linear layer's n_in features
        self._first = next(layer for layer in self._layers if isinstance(layer, Linear))
        self._n_in = self._first.n_in
        self._dtype = params[0].data.dtype
        self._programs: dict[int, tuple[list[Forward], list[Backward]]] = {}
        self._update = compile_update(optimizer)  # optimizer.step, with its Python done once where it can be
        self.logits: np.ndarray | None = None

    def current(self) -> bool:
        """True while the model is the one compiled: the same layers with the same settings
        (mode, dropout rate, activation slope, fusion and in-place plan), its parameters still
        views of the same flat buffer, the one the optimizer updates."""
        model = self.model
        return (
            self._flat.valid
            and self.optimizer._flat is self._flat
            and len(model.layers) == len(self._layers)
            and all(a is b for a, b in zip(model.layers, self._layers, strict=True))
            and _signature(self._layers) == self._signature
            # the layers still hold the parameters compiled, in their places (two layers may
            # have swapped theirs: the same buffer, other weights for each closure)
            and self._flat.owns(model.parameters())
            and all(p.data is d for p, d in zip(self._flat.params, self._bound, strict=True))
        )

    def __call__(self, x: np.ndarray, t: Any) -> Any:
        if type(x) is not np.ndarray or x.ndim != 2 or x.dtype != self._dtype or x.shape[1] != self._n_in:
            self._check_x(x)
        program = self._programs.get(x.shape[0])
        if program is None:
            if len(self._programs) >= MAX_BATCH_SIZES:
                del self._programs[next(iter(self._programs))]  # the oldest, and its buffers
            program = self._programs[x.shape[0]] = self._compile(x.shape[0])
        forward, backward = program
        a = x
        for f in forward:
            a = f(a)
        self.logits = a
        loss = self.loss
        value = loss.forward(a, t)
        dy = loss.backward()
        for b in backward:
            dy = b(dy)
        self._update(self.regularizer)
        return value

    def _check_x(self, x: Any) -> None:
        like = self._flat.params[0].data
        check_input(x, like, "x", f"the model ({self._flat.device}, {self._dtype})")
        if x.shape[1] != self._n_in:
            raise ValueError(
                f"x has {x.shape[1]} features but the first Linear layer, {self._first!r}, expects {self._n_in}"
            )

    # ------------------------------------------------------------------ compiling

    def _compile(self, n: int) -> tuple[list[Forward], list[Backward]]:
        """The forward and backward closures for batches of ``n`` rows (Sequential.forward and
        .backward with their decisions taken: the layers that act are kept, in order)."""
        layers = [layer for layer in self._layers if isinstance(layer, (Linear, ElementwiseActivation))]
        forward: list[Forward] = []
        saved: list[list[Any]] = []  # per kept layer, a cell holding its forward input (Linear) or output
        for layer in layers:
            cell: list[Any] = [None]
            saved.append(cell)
            if isinstance(layer, Linear):
                forward.append(_linear_forward(layer, np.empty((n, layer.n_out), self._dtype), cell))
            elif not layer.fused:
                forward.append(_activation_forward(layer, cell))
            else:
                forward.append(_record(cell))  # the Linear before it applied g: its output is a
        # Layer by layer, in reverse. Sequential hands an output layer's bias sum to the fused
        # activation before it, to save a GPU launch; on the CPU that kernel's twin makes the
        # same separate sums, so each Linear sums its own bias here unless a fused activation
        # after it already did, and the bits are the same.
        backward: list[Backward] = []
        for k in range(len(layers) - 1, -1, -1):
            layer, cell = layers[k], saved[k]
            if isinstance(layer, Linear):
                after = layers[k + 1] if k + 1 < len(layers) else None
                summed = isinstance(after, ElementwiseActivation) and after.fused  # its backward sums our bias
                grad = np.empty((n, layer.n_in), self._dtype) if k > 0 else None
                backward.append(_linear_backward(layer, cell, grad, sum_bias=not summed))
            else:
                linear = layer.bias_grad_of if layer.fused else None
                backward.append(_activation_backward(layer, cell, linear))
        return forward, backward


def _signature(layers: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a compiled program depends on besides the layers' identity and parameters: each
    layer's mode and the settings its closures took when they were made."""
    return tuple(
        (
            layer.training,
            getattr(layer, "p", None),  # Dropout's rate
            getattr(layer, "alpha", None),  # an activation's slope (LeakyReLU)
            getattr(layer, "activation", None),  # a Linear's fused activation layer
            getattr(layer, "fused", None),
            getattr(layer, "bias_grad_of", None),
            layer.inplace,
            layer.inplace_grad,
        )
        for layer in layers
    )


# ---------------------------------------------------------------------- the closures
# Each mirrors one layer's forward or backward on the CPU with its checks and branches taken.


def _record(cell: list[Any]) -> Forward:
    def forward(a: np.ndarray) -> np.ndarray:
        cell[0] = a
        return a

    return forward


def _linear_forward(layer: Linear, out: np.ndarray, cell: list[Any]) -> Forward:
    """y = x·W + b, or g(x·W + b) when fused with the activation after it (Linear.forward)."""
    W, b = layer.W.data, layer.b.data
    activation = layer.activation  # the fused activation layer; its slope is in the signature

    if activation is None:

        def forward(x: np.ndarray) -> np.ndarray:
            cell[0] = x
            np.matmul(x, W, out=out)
            return np.add(out, b, out=out)

    else:
        name, alpha = activation.name, activation.alpha

        def forward(x: np.ndarray) -> np.ndarray:
            cell[0] = x
            np.matmul(x, W, out=out)
            return bias_activation(out, b, name, alpha)

    return forward


def _activation_forward(layer: ElementwiseActivation, cell: list[Any]) -> Forward:
    """a = g(z) of an activation with no Linear right before it (written in place when the
    model owns z, as the layered path does)."""

    def forward(z: np.ndarray) -> np.ndarray:
        a = layer._apply(z, z if layer.inplace else None)
        cell[0] = a
        return a

    return forward


def _linear_backward(layer: Linear, cell: list[Any], grad: np.ndarray | None, sum_bias: bool) -> Backward:
    """∂W = xᵀ·dy; ∂b = Σ_n dy unless the fused activation after it summed it; dx = dy·Wᵀ
    into ``grad`` (None for the first layer, whose input gradient is never used)."""
    W, gW, gb = layer.W.data, layer.W.grad, layer.b.grad

    def backward(dy: np.ndarray) -> np.ndarray | None:
        np.matmul(cell[0].T, dy, out=gW)
        if sum_bias:
            column_sums(dy, gb)
        return None if grad is None else np.matmul(dy, W.T, out=grad)

    return backward


def _activation_backward(layer: ElementwiseActivation, cell: list[Any], linear: Linear | None) -> Backward:
    """dz = dy·g'(z) (in place where the layered path writes in place: not into the loss's
    gradient), and, fused, its Linear's ∂b = Σ_n dz."""
    name, alpha = layer.name, layer.alpha
    gb = None if linear is None else linear.b.grad
    inplace = layer.inplace_grad

    def backward(dy: np.ndarray) -> np.ndarray:
        dz = activation_backward(dy, cell[0], name, alpha, out=dy if inplace else None)
        if gb is not None:
            column_sums(dz, gb)
        return dz

    return backward
