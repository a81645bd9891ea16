"""Activation layers: a = g(z), elementwise (Softmax: per row).

Without a nonlinear g, any depth of Linear layers collapses into one linear map. A Linear layer
can apply the same g with its bias (``gn.Linear(n_in, n_out, activation="relu")``).
"""

from __future__ import annotations

from typing import Any

from ..backend.selection import ops_of
from ..validation import FLOAT_DTYPES, check_array, check_float
from .functional import softmax
from .layers import SYMBOLS, Layer, check_dy, check_x


class Activation(Layer):
    """Base of the elementwise activations a = g(z); backward is dz = da · g'(z), computed from
    the saved output a. ``name`` is g's name for the Ops, ``alpha`` the slope for z < 0
    (LeakyReLU only). z: float32 or float64 of shape (N, features); da: the shape and dtype of a."""

    name = "identity"
    alpha = 0.0

    def __init__(self) -> None:
        self._a: Any = None
        self._ops: Any = None

    def forward(self, x: Any) -> Any:
        check_x(self, x)
        ops = self._ops = ops_of(x)
        self._a = ops.activation(x, self.name, self.alpha)
        return self._a

    def backward(self, dy: Any) -> Any:
        a = self._a
        check_dy(self, dy, a)
        return self._ops.activation_backward(dy, a, self.name, self.alpha)

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = {SYMBOLS.get(self.name, self.name)}(z^[{layer}])"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Activation):
    """a = z (a linear activation; backward passes the gradient through)."""

    def forward(self, x: Any) -> Any:
        check_x(self, x)
        self._a = x
        return x

    def backward(self, dy: Any) -> Any:
        a = self._a
        check_dy(self, dy, a)
        return dy

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = z^[{layer}]"


class ReLU(Activation):
    """a = max(z, 0);  dz = da · [z > 0]."""

    name = "relu"


class LeakyReLU(Activation):
    """a = z for z > 0, else α·z;  dz = da · (1 if z > 0 else α)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = check_float("negative_slope", negative_slope, low=0.0)

    @property
    def alpha(self) -> float:
        return self.negative_slope

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope:g})"


class Sigmoid(Activation):
    """a = σ(z) = 1 / (1 + e^−z);  dz = da · a(1 − a)."""

    name = "sigmoid"


class Tanh(Activation):
    """a = tanh(z);  dz = da · (1 − a²)."""

    name = "tanh"


class Softmax(Layer):
    """a = softmax(z) per row (N, C);  dz = a ⊙ (da − Σ_k da_k·a_k).

    For training a classifier use :class:`~gpunn.SoftmaxWithLoss` on the logits instead:
    its backward, (a − t)/N, is both cheaper and more accurate. z: float32 or float64, C ≥ 1.
    """

    def __init__(self) -> None:
        self._a: Any = None

    def forward(self, x: Any) -> Any:
        if getattr(x, "ndim", None) != 2 or x.dtype not in FLOAT_DTYPES or x.shape[1] == 0:
            check_array("x", x, repr(self))
            if x.shape[1] == 0:
                raise ValueError(f"x must have at least one column (class) for softmax, got shape {tuple(x.shape)}")
        self._a = softmax(x, axis=1)
        return self._a

    def backward(self, dy: Any) -> Any:
        a = self._a
        check_dy(self, dy, a)
        dx = dy - (dy * a).sum(axis=1, keepdims=True)
        dx *= a
        return dx

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = softmax(z^[{layer}])"

    def __repr__(self) -> str:
        return "Softmax()"
