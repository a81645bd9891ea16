"""Activation layers: a = g(z), elementwise (Softmax: per row).

Without a nonlinear g, any depth of Linear layers collapses into one linear map, which is
why a hidden layer needs an activation. Each backward returns dz = da · g'(z), expressed
through the saved output where that is cheaper (σ' = a(1 − a), tanh' = 1 − a²).

When :class:`~gpunn.Sequential` owns the input array it sets ``inplace`` and the activation
overwrites it instead of allocating; ``inplace_grad`` does the same for the incoming gradient.
When it fuses a Linear layer with the activation after it, the activation's backward also
writes that layer's bias gradient (``bias_grad_of``), in the same kernel on a GPU, and, handed
over by Sequential, that of an unfused Linear layer right after it (``also_sum``).
"""

from __future__ import annotations

from typing import Any

from ..backend.device import array_module
from ..backend.layer_kernels import activation_backward, activation_bias_backward, column_sums
from ..validation import check_choice, check_float
from .functional import sigmoid, softmax
from .layers import Layer


class Identity(Layer):
    """a = z (a linear activation; backward passes the gradient through)."""

    def forward(self, x: Any) -> Any:
        return x

    def backward(self, dy: Any) -> Any:
        return dy

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = z^[{layer}]"

    def __repr__(self) -> str:
        return "Identity()"


class ElementwiseActivation(Layer):
    """Base of the elementwise activations a = g(z); backward is dz = da · g'(z), computed
    from the saved output a (one fused kernel on a GPU, see :mod:`gpunn.layer_kernels`).

    ``fused`` is set by :class:`~gpunn.Sequential` when the Linear layer before this one
    already applied g together with its bias (one kernel instead of two); forward then only
    records its input as the output. ``bias_grad_of`` is that Linear layer: backward then
    also writes its bias gradient ∂L/∂b = Σ_n dz_n (C,) from the dz (N, C) it returns, and
    hands dz to the layer as ``bias_grad_from`` so that its backward skips the same sum.
    """

    name = "identity"  # the activation's code in gpunn.layer_kernels.ACTIVATIONS
    symbol = "g"
    fused = False
    bias_grad_of: Any = None  # the Linear layer whose b.grad backward writes (Sequential sets it)

    def __init__(self, inplace: bool = False) -> None:
        self.inplace = bool(inplace)
        self._y: Any = None

    @property
    def alpha(self) -> float:
        """The slope for z < 0 (LeakyReLU only)."""
        return 0.0

    def forward(self, x: Any) -> Any:
        if self.fused:
            self._y = x
        else:
            self._y = self._apply(x, x if self.inplace else None)
        return self._y

    def _apply(self, x: Any, out: Any) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any, also_sum: tuple[Any, Any] | None = None) -> Any:
        """dz = dy · g'(z), shape (N, C); with ``bias_grad_of`` set, also db = Σ_n dz_n.

        ``also_sum`` = (dy2, db2) also writes db2 ← Σ_n dy2_n: the bias gradient of the Linear
        layer after this activation, which :class:`~gpunn.Sequential` hands over so that
        it comes out of the same kernel on a GPU instead of a launch of its own.
        """
        out = dy if self.inplace_grad else None
        linear = self.bias_grad_of
        db = None if linear is None else linear.b.grad  # read now: packing rebinds the view
        if db is None or getattr(dy, "ndim", 0) != 2 or db.shape != dy.shape[1:] or db.dtype != dy.dtype:
            dz = activation_backward(dy, self._y, self.name, self.alpha, out=out)
            if also_sum is not None:
                column_sums(*also_sum)
            return dz
        dz = activation_bias_backward(dy, self._y, db, self.name, self.alpha, out=out, also_sum=also_sum)
        linear.bias_grad_from = dz
        return dz

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = {self.symbol}(z^[{layer}])"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(ElementwiseActivation):
    """a = max(z, 0);  dz = da · [z > 0]."""

    name = symbol = "relu"

    def _apply(self, x: Any, out: Any) -> Any:
        return array_module(x).maximum(x, 0.0, out=out)


class LeakyReLU(ElementwiseActivation):
    """a = z for z > 0, else α·z;  dz = da · (1 if z > 0 else α)."""

    name = symbol = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.negative_slope = check_float("negative_slope", negative_slope, low=0.0)

    @property
    def alpha(self) -> float:
        return self.negative_slope

    def _apply(self, x: Any, out: Any) -> Any:
        slope = array_module(x).where(x > 0, x.dtype.type(1.0), x.dtype.type(self.negative_slope))
        return array_module(x).multiply(x, slope, out=out)

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope:g})"


class Sigmoid(ElementwiseActivation):
    """a = σ(z) = 1 / (1 + e^−z);  dz = da · a(1 − a)."""

    name = "sigmoid"
    symbol = "σ"

    def _apply(self, x: Any, out: Any) -> Any:
        return sigmoid(x, out=out)


class Tanh(ElementwiseActivation):
    """a = tanh(z);  dz = da · (1 − a²)."""

    name = symbol = "tanh"

    def _apply(self, x: Any, out: Any) -> Any:
        return array_module(x).tanh(x, out=out)


class Softmax(Layer):
    """a = softmax(z) per row (N, C);  dz = a ⊙ (da − Σ_k da_k·a_k).

    For training a classifier use :class:`~gpunn.SoftmaxWithLoss` on the logits instead:
    its backward, (a − t)/N, is both cheaper and more accurate.
    """

    def __init__(self) -> None:
        self._y: Any = None

    def forward(self, x: Any) -> Any:
        self._y = softmax(x, axis=1)
        return self._y

    def backward(self, dy: Any) -> Any:
        y = self._y
        dx = dy - (dy * y).sum(axis=1, keepdims=True)
        dx *= y
        return dx

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = softmax(z^[{layer}])"

    def __repr__(self) -> str:
        return "Softmax()"


ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "sigmoid": Sigmoid,
    "logistic": Sigmoid,
    "tanh": Tanh,
    "identity": Identity,
    "linear": Identity,
}


def activation(name: str) -> Layer:
    """A new activation layer by name: relu, leaky_relu, sigmoid (logistic), tanh, identity."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]()
