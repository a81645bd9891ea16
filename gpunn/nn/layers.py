"""The Layer protocol, the fully connected layer (with its activation) and inverted dropout.

``forward(x)`` computes the layer's output and remembers what ``backward`` needs;
``backward(dy)`` receives ∂L/∂y, *writes* the gradients of the layer's parameters into
``param.grad`` (no zero_grad needed) and returns ∂L/∂x. x is (N, features).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.device import CPU, Device, device, device_of
from ..backend.selection import ops_of
from ..validation import FLOAT_DTYPES, check_array, check_choice, check_dtype, check_float, check_int
from .init import INITS, init_weight, make_rng
from .parameter import Parameter, pack

# the activations a Linear layer applies with its bias, by name (and their other names)
ACTIVATION_NAMES = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "sigmoid": "sigmoid",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "identity": "identity",
    "linear": "identity",
}
SYMBOLS = {"sigmoid": "σ"}  # how a formula writes g, where not by its name


class Layer:
    """Base class of every layer (train/eval mode, parameters, device moves); subclasses
    implement ``forward(x)`` and ``backward(dy)``."""

    training: bool = True

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def __getstate__(self) -> dict[str, Any]:
        # a layer keeps the Ops of its last forward pass for backward; they hold the array
        # module, which does not pickle (the next forward pass looks them up again)
        return {name: None if name == "_ops" else value for name, value in self.__dict__.items()}

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(name, parameter) pairs; names are local to the layer ("W", "b")."""
        return []

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True) -> Layer:
        """Training mode (dropout active); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> Layer:
        """Evaluation mode (dropout is the identity); returns self."""
        return self.train(False)

    def to(self, dev: str | Device) -> Layer:
        """Move the parameters to ``dev`` (a spec such as "cuda:0" or a Device); returns self."""
        params = self.parameters()
        if params:
            pack(params, device(dev))
        return self

    @property
    def device(self) -> Device:
        params = self.parameters()
        return params[0].device if params else CPU

    def formula(self, layer: int) -> str:
        """This layer's computation in the seed's a^[l], z^[l], W^[l] notation."""
        return type(self).__name__

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (JSON-ready; no weights)."""
        return {"type": type(self).__name__}


def check_x(layer: Layer, x: Any) -> None:
    """Raise a clear error unless ``x`` is a 2-D float32/float64 array (the cheap comparisons
    first: every step passes them)."""
    if getattr(x, "ndim", None) != 2 or x.dtype not in FLOAT_DTYPES:
        check_array("x", x, repr(layer))


def check_dy(layer: Layer, dy: Any, y: Any) -> None:
    """Raise a clear error unless ``dy`` matches the layer's last output ``y`` (device, shape,
    dtype); a RuntimeError when there is none yet. The cheap comparisons first: every step passes them."""
    if y is not None and type(dy) is type(y) and dy.shape == y.shape and dy.dtype == y.dtype:
        return
    if y is None:
        raise RuntimeError(f"{layer!r}.backward called before forward")
    check_array("dy", dy, repr(layer), like=y, shape=tuple(y.shape))


class Linear(Layer):
    """Fully connected layer with an optional activation g: a = g(x·W + b).

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), a (N, n_out). ``activation``: None
    (a = z = x·W + b), "identity", "relu", "leaky_relu" (slope ``negative_slope`` for z < 0),
    "sigmoid" or "tanh", applied with the bias as Keras's ``Dense(activation=...)`` does.
    Backward, from the saved output a: dz = dy ⊙ g'(z), ∂L/∂W = xᵀ·dz, ∂L/∂b = Σ_n dz,
    ∂L/∂x = dz·Wᵀ (only with ``input_grad``). W is drawn by ``init`` ("he", "xavier" or
    "normal") from a host Generator seeded with ``seed``; b starts at zero.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: str | None = None,
        init: str = "he",
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        negative_slope: float = 0.01,
    ) -> None:
        self.n_in = check_int("n_in", n_in, low=1)
        self.n_out = check_int("n_out", n_out, low=1)
        if activation is not None:
            activation = ACTIVATION_NAMES[check_choice("activation", activation, ACTIVATION_NAMES)]
        self.activation = activation
        self.negative_slope = check_float("negative_slope", negative_slope, low=0.0)
        self.init = check_choice("init", init, INITS)
        dt = check_dtype("dtype", dtype)
        self.W = Parameter(init_weight(self.n_in, self.n_out, self.init, make_rng(seed), dt), "W", decay=True)
        self.b = Parameter(np.zeros(self.n_out, dtype=dt), "b", decay=False)
        self._x: Any = None
        self._a: Any = None
        self._ops: Any = None

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [("W", self.W), ("b", self.b)]

    def forward(self, x: Any) -> Any:
        W = self.W.data
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.n_in or type(x) is not type(W) or x.dtype != W.dtype:
            check_array("x", x, repr(self), like=W)
            if x.shape[1] != self.n_in:
                raise ValueError(f"{self!r} expects x with {self.n_in} features, got x.shape == {tuple(x.shape)}")
        ops = self._ops = ops_of(W)
        self._x = x
        a = ops.matmul(x, W)
        ops.bias_activation(a, self.b.data, self.activation or "identity", self.negative_slope)
        self._a = a
        return a

    def backward(self, dy: Any, input_grad: bool = True, overwrite_dy: bool = False) -> Any:
        """Write ∂L/∂W and ∂L/∂b into the gradient views; return ∂L/∂x, or None when
        ``input_grad`` is False (a first layer's input gradient is not used in training).
        ``overwrite_dy``: dy may be overwritten with dz (as SciPy's ``overwrite_a``), saving an
        array of its size; Sequential passes it for the ∂L/∂x of the Linear layer above."""
        x, a = self._x, self._a
        check_dy(self, dy, a)
        ops = self._ops
        if self.activation in (None, "identity"):
            dz = dy
            ops.column_sums(dz, self.b.grad)
        else:
            out = dy if overwrite_dy else None
            dz = ops.activation_backward(dy, self._a, self.activation, self.negative_slope, out=out, db=self.b.grad)
        ops.matmul(x.T, dz, out=self.W.grad)
        return ops.matmul(dz, self.W.data.T) if input_grad else None

    def formula(self, layer: int) -> str:
        affine = f"a^[{layer - 1}]·W^[{layer}] + b^[{layer}]"
        if self.activation is None:
            return f"z^[{layer}] = {affine}"
        if self.activation == "identity":
            return f"a^[{layer}] = {affine}"
        return f"a^[{layer}] = {SYMBOLS.get(self.activation, self.activation)}({affine})"

    def config(self) -> dict[str, Any]:
        config = {
            "type": "Linear",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "activation": self.activation,
            "init": self.init,
            "dtype": self.W.data.dtype.name,
        }
        if self.activation == "leaky_relu":
            config["negative_slope"] = self.negative_slope
        return config

    def __repr__(self) -> str:
        activation = "" if self.activation is None else f", {self.activation}"
        return f"Linear({self.n_in} → {self.n_out}{activation})"


class Dropout(Layer):
    """Inverted dropout: in training y = x·m / (1 − p) with m ~ Bernoulli(1 − p) per element;
    in evaluation y = x. Backward: dx = dy·m / (1 − p).

    The mask is drawn on x's device by its generator in ``generators`` (NumPy's or CuPy's, seeded
    with ``seed``; set one to continue a saved stream): CPU and GPU masks differ for one seed.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        self.p = check_float("p", p, low=0.0, high=1.0, high_open=True)
        if seed is not None:
            check_int("seed", seed, low=0)
        self.seed = seed
        self.reuse_mask = False  # gradcheck sets this so every evaluation sees one mask
        self.generators: dict[Device, Any] = {}
        self._mask: Any = None
        self._x: Any = None  # the last input: backward checks dy against it

    def forward(self, x: Any) -> Any:
        check_x(self, x)
        self._x = x
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        mask = self._mask
        if not self.reuse_mask or mask is None or mask.shape != x.shape:
            dev = device_of(x)
            gen = self.generators.get(dev)
            if gen is None:
                with dev:
                    gen = self.generators[dev] = dev.xp.random.default_rng(self.seed)
            u = gen.random(x.shape, dtype=x.dtype)
            mask = (u >= self.p).astype(x.dtype)
            mask *= 1.0 / (1.0 - self.p)
            self._mask = mask
        return x * mask

    def backward(self, dy: Any) -> Any:
        x = self._x
        check_dy(self, dy, x)
        return dy if self._mask is None else dy * self._mask

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = dropout(a^[{layer}], p={self.p:g})"

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p, "seed": self.seed}

    def __repr__(self) -> str:
        return f"Dropout(p={self.p:g})"
