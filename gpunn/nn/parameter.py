"""Parameters, and the flat buffers they live in.

Every trainable array is a :class:`Parameter` holding ``data`` and ``grad``. :func:`pack` moves
a model's or an optimizer's parameters into one contiguous 1-D data buffer and one gradient
buffer (a :class:`FlatParameters`) and rebinds each ``data`` and ``grad`` to views of them:
layers read ``param.data`` and write ``param.grad`` unaware of it, while optimizers,
regularizers and gradient clipping work on the whole buffer in one operation. Weights
(``decay=True``) come first and biases last, so "does weight decay apply here" is the single
comparison ``index < n_decay``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..backend.device import Device, DeviceMismatchError, array_module, device_of
from ..validation import FLOAT_DTYPES


class Parameter:
    """A trainable array: ``data``, its gradient ``grad`` (same shape), a ``name``, and
    ``decay`` (True for weights, which L2/L1 and AdamW's weight decay act on)."""

    __slots__ = ("_flat", "data", "decay", "grad", "name")

    def __init__(self, data: Any, name: str = "", decay: bool = True) -> None:
        if not (hasattr(data, "shape") and hasattr(data, "dtype")):
            raise TypeError(f"Parameter data must be a NumPy or CuPy array, got {type(data).__name__}")
        self.data = data
        self.grad = array_module(data).zeros_like(data)
        self.name = name
        self.decay = bool(decay)
        self._flat: FlatParameters | None = None

    def __getstate__(self) -> dict[str, Any]:
        # data and grad are copied as plain arrays; the link to a flat buffer is not kept
        return {"name": self.name, "data": self.data, "grad": self.grad, "decay": self.decay}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name, self.data, self.grad, self.decay = state["name"], state["data"], state["grad"], state["decay"]
        self._flat = None

    @property
    def flat(self) -> FlatParameters | None:
        """The flat buffer whose views ``data`` and ``grad`` are (None before packing); check
        ``flat.owns(params)`` before treating a list of parameters as all of it."""
        return self._flat

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> Device:
        return device_of(self.data)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.data.dtype}, device={self.device})"


def parameter_list(params: Iterable[Parameter] | Any) -> list[Parameter]:
    """``params`` as a checked list of float32 or float64 Parameters; a model (anything with
    ``.parameters()``) gives its own."""
    if hasattr(params, "parameters"):
        params = params.parameters()
    if isinstance(params, Parameter) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be an iterable of Parameters (e.g. model.parameters()), got {type(params).__name__}"
        )
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{i}] must be a gpunn Parameter, got {type(p).__name__}")
        if p.data.dtype not in FLOAT_DTYPES:
            label = f"params[{i}] ({p.name!r})" if p.name else f"params[{i}]"
            raise TypeError(f"{label} must be float32 or float64, got dtype {p.data.dtype}")
    return params


def state_keys(names: Sequence[str]) -> list[str]:
    """The keys that optimizer state and checkpoints file parameters under: their names, or their
    positions ("0", "1", ...) when some are unnamed or two share a name."""
    if all(names) and len(set(names)) == len(names):
        return list(names)
    return [str(i) for i in range(len(names))]


def same_parameters(a: Sequence[Parameter], b: Sequence[Parameter]) -> bool:
    """True when ``a`` and ``b`` are the same Parameter objects in the same order."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class FlatParameters:
    """One contiguous data buffer and one gradient buffer holding ``params`` as views.

    Attributes: ``data``, ``grad`` (1-D, length ``size``), ``n_decay`` (elements of
    decayed parameters, which come first), ``params`` (the parameters, in the caller's order),
    ``device``, ``dtype``, and ``valid`` (False once the parameters were packed elsewhere).
    """

    def __init__(self, params: Sequence[Parameter], device: Device) -> None:
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"params mix dtypes {sorted(str(d) for d in dtypes)}; use one dtype per model")
        self.params = tuple(params)
        self.device = device
        self.dtype = dtypes.pop()
        layout = [p for p in params if p.decay] + [p for p in params if not p.decay]
        self.size = sum(p.size for p in params)
        self.n_decay = sum(p.size for p in params if p.decay)
        xp = device.xp
        with device:
            self.data = xp.empty(self.size, dtype=self.dtype)
            self.grad = xp.zeros(self.size, dtype=self.dtype)
        self._spans: list[tuple[int, int]] = [(0, 0)] * len(self.params)  # by position in params
        position = {id(p): i for i, p in enumerate(self.params)}
        start = 0
        for p in layout:
            stop = start + p.size
            data_view = self.data[start:stop].reshape(p.shape)
            data_view[...] = device.send(p.data)
            grad_view = self.grad[start:stop].reshape(p.shape)
            if p.grad is not None and p.grad.shape == p.shape:
                grad_view[...] = device.send(p.grad)
            if p._flat is not None and p._flat is not self:
                p._flat.valid = False  # its buffer no longer holds this parameter
            p.data, p.grad, p._flat = data_view, grad_view, self
            self._spans[position[id(p)]] = (start, stop)
            start = stop
        self.valid = True

    def owns(self, params: Sequence[Parameter]) -> bool:
        """True when this buffer holds exactly ``params``, in this order, and is current."""
        return self.valid and same_parameters(params, self.params)

    def view(self, buffer: Any, param: Parameter) -> Any:
        """The part of a flat buffer laid out like ``data`` that belongs to ``param``."""
        index = next(i for i, p in enumerate(self.params) if p is param)
        start, stop = self._spans[index]
        return buffer[start:stop].reshape(param.shape)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (pickle, deepcopy) restores the parameters as separate arrays, no longer
        # views of this buffer: it may still be read (an optimizer's old state) but is not
        # current, so whoever uses it packs the parameters anew.
        self.__dict__.update(state)
        self.valid = False


def pack(params: Sequence[Parameter], device: Device | None = None) -> FlatParameters:
    """Return the flat buffer holding ``params``, packing them into a new one if needed.

    With ``device`` given, the new buffer is allocated there (this is how models move);
    otherwise all parameters must already live on one device.
    """
    params = parameter_list(params)
    if not params:
        raise ValueError("params is empty: there is nothing to optimize")
    flat = params[0]._flat
    if flat is not None and flat.owns(params) and (device is None or flat.device == device):
        return flat
    if device is None:
        device = params[0].device
        for p in params[1:]:
            if p.device != device:
                raise DeviceMismatchError(
                    f"parameter {p.name!r} is on {p.device} but {params[0].name!r} is on {device}; "
                    "move the whole model with model.to(device) first"
                )
    return FlatParameters(params, device)
