"""Sequential models, the ``mlp`` shortcut, and rebuilding a model from its config."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..backend.device import on_input_device
from ..validation import check_array, check_choice, check_dtype, check_float, check_int
from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .init import make_rng
from .layers import ACTIVATION_NAMES, Dropout, Layer, Linear
from .parameter import Parameter, pack


class Sequential(Layer):
    """Layers applied in order: a^[0] = x, then each layer computes the next a^[l]; backward runs
    them in reverse, writes every parameter's ``.grad`` and returns ∂L/∂x only when asked
    (``input_grad``). Parameter names are "<index>.<name>" ("0.W"); all parameters live in one
    flat buffer. The container sets nothing on its layers."""

    def __init__(self, *layers: Layer | Sequence[Layer]) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not (callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None))):
                raise TypeError(f"layers[{i}] must be a gpunn layer with forward and backward, got {layer!r}")
        self.layers: list[Layer] = list(layers)
        for name, p in self.named_parameters():
            p.name = name
        params = self.parameters()
        self._first = params[0] if params else None  # forward checks x against it
        if params:
            pack(params)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # After pickle or deepcopy the parameters are separate arrays: gather them into one
        # flat buffer again, so that optimizers and the layers share it.
        self.__dict__.update(state)
        params = self.parameters()
        if params:
            pack(params)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.named_parameters()]

    @property
    def dtype(self) -> np.dtype:
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype("float32")

    def train(self, mode: bool = True) -> Sequential:
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    @on_input_device
    def forward(self, x: Any) -> Any:
        """x (N, n_features) on the model's device → output of the last layer (N, n_out)."""
        if self._first is not None:
            w = self._first.data
            # The cheap comparisons run every step; the full check (and its message) only
            # when one of them fails. ``.device`` tells two GPUs apart ("cpu" for NumPy).
            if type(x) is not type(w) or getattr(x, "ndim", 0) != 2 or x.dtype != w.dtype or x.device != w.device:
                check_array("x", x, f"the model ({self.device}, {self.dtype})", like=w)
            first = self.layers[0]
            if isinstance(first, Linear) and x.shape[1] != first.n_in:
                raise ValueError(
                    f"x has {x.shape[1]} features but the first layer, {first!r}, expects {first.n_in} "
                    f"(x.shape == {tuple(x.shape)})"
                )
        for layer in self.layers:
            x = layer.forward(x)
        return x

    @on_input_device
    def backward(self, dy: Any, input_grad: bool = False) -> Any:
        """dy = ∂L/∂output → writes every parameter's grad; returns ∂L/∂x when
        ``input_grad`` is True, else None (a training step does not use it, and for a first
        Linear layer it is a matrix product as large as its weight gradient)."""
        if not self.layers:
            return dy if input_grad else None
        owned = False  # whether dy is an array this pass made and nothing else holds
        for i in range(len(self.layers) - 1, -1, -1):
            layer, wanted = self.layers[i], input_grad or i > 0
            if type(layer).backward is Linear.backward:  # not a subclass's own backward
                # a Linear layer's ∂L/∂x is a fresh product: the layer below may write its dz over
                # it, one array of the batch's size fewer at the peak of a step
                dy = layer.backward(dy, input_grad=wanted, overwrite_dy=owned)
                owned = True
            else:
                dy = _backward(layer, dy, wanted)
                owned = False
        return dy

    def config(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def summary(self) -> str:
        """The layers in the seed's notation, with shapes and parameter counts."""
        first = self.layers[0] if self.layers else None
        n_in = first.n_in if isinstance(first, Linear) else "features"
        rows = [("", "a^[0] = x", f"(N, {n_in})", "")]
        layer_index = 0
        for i, layer in enumerate(self.layers):
            shapes = ""
            if isinstance(layer, Linear):
                layer_index += 1
                shapes = f"W^[{layer_index}] {layer.W.shape}  b^[{layer_index}] {layer.b.shape}"
            count = sum(p.size for p in layer.parameters())
            rows.append((f"{i} {layer!r}", layer.formula(max(layer_index, 1)), shapes, f"{count:,}" if count else ""))
        header = ("layer", "computes", "parameter shapes", "params")
        widths = [max(len(r[k]) for r in [header, *rows]) for k in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
        total = sum(p.size for p in self.parameters())
        lines.insert(1, "-" * len(lines[0]))
        lines.append(
            f"total: {total:,} parameters in {layer_index} layer(s) with weights (L = {layer_index}); "
            f"{self.dtype}, {self.device}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)" if inner else "Sequential()"


def _backward(layer: Layer, dy: Any, input_grad: bool) -> Any:
    """``layer``'s backward, asking a Linear layer or a model for ∂L/∂x only with ``input_grad``
    (a layer without parameters is then not run at all)."""
    if isinstance(layer, (Linear, Sequential)):
        return layer.backward(dy, input_grad=input_grad)
    if not input_grad and not layer.parameters():
        return None
    dx = layer.backward(dy)
    return dx if input_grad else None


def mlp(
    sizes: Sequence[int] | np.ndarray,
    activation: str = "relu",
    dtype: Any = "float32",
    seed: int | np.random.Generator | None = None,
    dropout: float = 0.0,
    init: str | None = None,
) -> Sequential:
    """A multilayer perceptron: Linear(sizes[0]→sizes[1], activation), [Dropout], …,
    Linear(→sizes[-1]) (the logits: no activation).

    ``activation`` names the hidden layers' g (relu, leaky_relu, sigmoid, tanh, identity),
    which each hidden Linear layer applies with its bias. ``init`` defaults to "he" for the
    ReLU family and "xavier" otherwise. ``dropout`` > 0 adds inverted dropout after every
    hidden layer. One ``seed`` fixes every layer's initial weights. ``sizes``: a sequence or a
    1-D integer array.
    """
    listed = isinstance(sizes, Sequence) and not isinstance(sizes, (str, bytes))
    if not (listed or getattr(sizes, "ndim", None) == 1) or len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output size, e.g. [784, 100, 10]; got {sizes!r}")
    sizes = [check_int(f"sizes[{i}]", s, low=1) for i, s in enumerate(sizes)]
    name = ACTIVATION_NAMES[check_choice("activation", activation, ACTIVATION_NAMES)]
    dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
    if init is None:
        init = "he" if name in ("relu", "leaky_relu") else "xavier"
    dt = check_dtype("dtype", dtype)
    rng = make_rng(seed)
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        hidden = i < len(sizes) - 2
        layers.append(Linear(n_in, n_out, activation=name if hidden else None, init=init, dtype=dt, seed=rng))
        if hidden and dropout > 0.0:
            layers.append(Dropout(dropout, seed=int(rng.integers(2**31))))
    return Sequential(layers)


INIT_ONLY_KEYS = frozenset({"init", "seed"})  # they decide how fresh weights are drawn, nothing else


def architecture(config: Any) -> Any:
    """``model.config()`` without the keys that only decide fresh weights (init, seed): what
    two models must share for one's weights to fit the other."""
    if isinstance(config, dict):
        if config.get("type") == "Linear":
            config = {"activation": None, **config}  # saved before Linear had an activation
        return {k: architecture(v) for k, v in config.items() if k not in INIT_ONLY_KEYS}
    if isinstance(config, list):
        return [architecture(v) for v in config]
    return config


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Linear, Dropout, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Sequential)
}


def layer_from_config(config: dict[str, Any]) -> Layer:
    """Rebuild a layer (or a whole Sequential) from what ``config()`` returned, with fresh
    weights (a checkpoint loads the saved ones on top)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"a layer config must be a dict with a 'type', got {config!r}")
    cls = LAYER_TYPES.get(config["type"])
    if cls is None:
        raise ValueError(f"unknown layer type {config['type']!r}; known: {', '.join(sorted(LAYER_TYPES))}")
    arguments = {k: v for k, v in config.items() if k != "type"}
    if cls is Sequential:
        return Sequential([layer_from_config(c) for c in arguments.get("layers", [])])
    if cls is Linear:
        arguments.setdefault("seed", 0)  # the draw is overwritten by the saved weights anyway
    return cls(**arguments)
