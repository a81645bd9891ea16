"""The Layer protocol, the fully connected layer and inverted dropout.

A layer is readable as the formula on the page: ``forward(x)`` computes the layer's output
and remembers what ``backward`` needs; ``backward(dy)`` receives ∂L/∂y, *writes* the
gradients of the layer's parameters into ``param.grad`` (no zero_grad needed) and returns
∂L/∂x. Shapes are batch-major: x is (N, features).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.cuda.gemm import matmul
from ..backend.device import CPU, Device, DeviceMismatchError, array_module, device, device_of
from ..backend.layer_kernels import bias_activation, column_sums
from ..validation import check_choice, check_dtype, check_float, check_int
from .init import INITS, init_weight, make_rng
from .parameter import Parameter, pack


class Layer:
    """Base class of every layer: train/eval mode, parameters, device moves.

    Subclasses implement ``forward(x)`` and ``backward(dy)``. ``inplace`` lets an
    elementwise layer overwrite its input; :class:`~gpunn.Sequential` turns it on only where
    the model owns that array, so user data is never modified.
    """

    training: bool = True
    inplace: bool = False
    inplace_grad: bool = False

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

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


def check_input(x: Any, like: Any, name: str, owner: str) -> None:
    """Raise a clear error unless ``x`` is a 2-D array on ``like``'s device with its dtype."""
    if not (hasattr(x, "ndim") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be a NumPy or CuPy array of shape (N, features), got {type(x).__name__}")
    if array_module(x) is not array_module(like) or device_of(x) != device_of(like):
        raise DeviceMismatchError(
            f"{name} is on {device_of(x)} but {owner} is on {device_of(like)}; "
            f"move it with gn.to_device({name}, '{device_of(like)}')"
        )
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, features), got shape {tuple(x.shape)}")
    if x.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {owner} computes in {like.dtype}; "
            f"convert it with {name}.astype('{like.dtype}')"
        )


class Linear(Layer):
    """Fully connected layer: y = x·W + b.

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), y (N, n_out).
    Backward: ∂L/∂W = xᵀ·dy, ∂L/∂b = Σ_n dy, ∂L/∂x = dy·Wᵀ.
    W is drawn by ``init`` ("he", "xavier" or "normal") from a host Generator seeded with
    ``seed``; b starts at zero.

    Inside a :class:`~gpunn.Sequential` that fuses this layer with the activation after it,
    the activation's backward already writes ∂L/∂b = Σ_n dy (one kernel with its own work on
    a GPU) and leaves the dy it returned in ``bias_grad_from``; backward then skips the sum
    for that very array and computes it for any other.
    """

    # the dy whose column sums the fused activation's backward already wrote into b.grad
    bias_grad_from: Any = None

    def __init__(
        self,
        n_in: int,
        n_out: int,
        init: str = "he",
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.n_in = check_int("n_in", n_in, low=1)
        self.n_out = check_int("n_out", n_out, low=1)
        self.init = check_choice("init", init, INITS)
        dt = check_dtype("dtype", dtype)
        self.W = Parameter(init_weight(self.n_in, self.n_out, self.init, make_rng(seed), dt), "W", decay=True)
        self.b = Parameter(np.zeros(self.n_out, dtype=dt), "b", decay=False)
        self._x: Any = None
        # the activation layer applied together with the bias (Sequential sets it); its name
        # and slope are read at every forward, so a changed LeakyReLU slope takes effect at once
        self.activation: Layer | None = None

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [("W", self.W), ("b", self.b)]

    def forward(self, x: Any) -> Any:
        W = self.W.data
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.n_in or type(x) is not type(W) or x.dtype != W.dtype:
            check_input(x, W, "x", repr(self))
            if x.shape[1] != self.n_in:
                raise ValueError(f"{self!r} expects x with {self.n_in} features, got x.shape == {tuple(x.shape)}")
        self._x = x
        y = matmul(x, W)  # plain x @ W, unless a CUDA graph is being captured
        act = self.activation
        if act is None:
            y += self.b.data
        else:
            bias_activation(y, self.b.data, act.name, act.alpha)
        return y

    def backward(self, dy: Any, input_grad: bool = True, bias_grad: bool = True) -> Any:
        """Write ∂L/∂W and ∂L/∂b into the gradient views; return ∂L/∂x (None when
        ``input_grad`` is False: the first layer's input gradient is never used in training).
        ``bias_grad`` False leaves ∂L/∂b = Σ_n dy to the caller (Sequential hands it to the
        fused activation before this layer, whose kernel sums it with its own)."""
        x = self._x
        if x is None:
            raise RuntimeError(f"{self!r}.backward called before forward")
        if getattr(dy, "shape", None) != (x.shape[0], self.n_out):
            raise ValueError(
                f"{self!r}.backward expects dy of shape {(x.shape[0], self.n_out)}, got {getattr(dy, 'shape', dy)}"
            )
        matmul(x.T, dy, out=self.W.grad)
        # An identity check, not a flag: a dy the activation did not just return (a caller
        # driving the layers by hand) still gets its own sum. The reference is dropped at once.
        if bias_grad and dy is not self.bias_grad_from:
            column_sums(dy, self.b.grad)
        self.bias_grad_from = None
        return matmul(dy, self.W.data.T) if input_grad else None

    def formula(self, layer: int) -> str:
        return f"z^[{layer}] = a^[{layer - 1}]·W^[{layer}] + b^[{layer}]"

    def config(self) -> dict[str, Any]:
        return {
            "type": "Linear",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "init": self.init,
            "dtype": self.W.data.dtype.name,
        }

    def __repr__(self) -> str:
        return f"Linear({self.n_in} → {self.n_out})"


class Dropout(Layer):
    """Inverted dropout: in training y = x·m / (1 − p) with m ~ Bernoulli(1 − p) per element;
    in evaluation y = x. Backward: dx = dy·m / (1 − p).

    The mask is drawn on the device that holds x (NumPy's or CuPy's generator, seeded with
    ``seed``); CPU and GPU draw different masks for the same seed.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        self.p = check_float("p", p, low=0.0, high=1.0, high_open=True)
        if seed is not None:
            check_int("seed", seed, low=0)
        self.seed = seed
        self.reuse_mask = False  # gradcheck sets this so every evaluation sees one mask
        self._generators: dict[Device, Any] = {}
        self._mask: Any = None

    def _generator(self, x: Any) -> Any:
        dev = device_of(x)
        gen = self._generators.get(dev)
        if gen is None:
            with dev:
                gen = dev.xp.random.default_rng(self.seed)
            self._generators[dev] = gen
        return gen

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        mask = self._mask
        if not self.reuse_mask or mask is None or mask.shape != x.shape:
            u = self._generator(x).random(x.shape, dtype=x.dtype)
            mask = (u >= self.p).astype(x.dtype)
            mask *= 1.0 / (1.0 - self.p)
            self._mask = mask
        if self.inplace:
            x *= mask
            return x
        return x * mask

    def backward(self, dy: Any) -> Any:
        if self._mask is None:
            return dy
        if self.inplace_grad:
            dy *= self._mask
            return dy
        return dy * self._mask

    def formula(self, layer: int) -> str:
        return f"a^[{layer}] = dropout(a^[{layer}], p={self.p:g})"

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p, "seed": self.seed}

    def __repr__(self) -> str:
        return f"Dropout(p={self.p:g})"
