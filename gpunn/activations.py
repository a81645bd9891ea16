"""Activation layers: a = g(z), elementwise (Softmax: per row).

Without a nonlinear g, any depth of Linear layers collapses into one linear map, which is
why a hidden layer needs an activation. Each backward returns dz = da · g'(z), expressed
through the saved output where that is cheaper (σ' = a(1 − a), tanh' = 1 − a²).

When :class:`~gpunn.Sequential` owns the input array it sets ``inplace`` and the activation
overwrites it instead of allocating; ``inplace_grad`` does the same for the incoming gradient.
"""

from __future__ import annotations

from typing import Any

from .backend import array_module
from .functional import sigmoid, softmax
from .layers import Layer
from .validation import check_choice, check_float


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


class ReLU(Layer):
    """a = max(z, 0);  dz = da · [z > 0]."""

    symbol = "relu"

    def __init__(self, inplace: bool = False) -> None:
        self.inplace = bool(inplace)
        self._y: Any = None

    def forward(self, x: Any) -> Any:
        self._y = array_module(x).maximum(x, 0.0, out=x if self.inplace else None)
        return self._y

    def backward(self, dy: Any) -> Any:
        positive = self._y > 0
        if self.inplace_grad:
            dy *= positive
            return dy
        return dy * positive

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = {self.symbol}(z^[{layer}])"

    def __repr__(self) -> str:
        return "ReLU()"


class LeakyReLU(ReLU):
    """a = z for z > 0, else α·z;  dz = da · (1 if z > 0 else α)."""

    symbol = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.negative_slope = check_float("negative_slope", negative_slope, low=0.0)
        self._slope: Any = None

    def forward(self, x: Any) -> Any:
        xp = array_module(x)
        one, alpha = x.dtype.type(1.0), x.dtype.type(self.negative_slope)
        self._slope = xp.where(x > 0, one, alpha)
        if self.inplace:
            x *= self._slope
            return x
        return x * self._slope

    def backward(self, dy: Any) -> Any:
        if self.inplace_grad:
            dy *= self._slope
            return dy
        return dy * self._slope

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope:g})"


class Sigmoid(Layer):
    """a = σ(z) = 1 / (1 + e^−z);  dz = da · a(1 − a)."""

    def __init__(self, inplace: bool = False) -> None:
        self.inplace = bool(inplace)
        self._y: Any = None

    def forward(self, x: Any) -> Any:
        self._y = sigmoid(x, out=x if self.inplace else None)
        return self._y

    def backward(self, dy: Any) -> Any:
        y = self._y
        dx = dy if self.inplace_grad else dy.copy()
        dx *= y
        dx *= 1.0 - y
        return dx

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = σ(z^[{layer}])"

    def __repr__(self) -> str:
        return "Sigmoid()"


class Tanh(Layer):
    """a = tanh(z);  dz = da · (1 − a²)."""

    def __init__(self, inplace: bool = False) -> None:
        self.inplace = bool(inplace)
        self._y: Any = None

    def forward(self, x: Any) -> Any:
        self._y = array_module(x).tanh(x, out=x if self.inplace else None)
        return self._y

    def backward(self, dy: Any) -> Any:
        y = self._y
        factor = y * y
        array_module(y).subtract(1.0, factor, out=factor)
        if self.inplace_grad:
            dy *= factor
            return dy
        factor *= dy
        return factor

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = tanh(z^[{layer}])"

    def __repr__(self) -> str:
        return "Tanh()"


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
