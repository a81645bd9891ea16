"""The Optimizer base class: binding to parameters, flat state, state_dict.

An optimizer updates the whole flat parameter buffer (see :mod:`gpunn.parameter`) in one
operation per step: one fused kernel on a GPU, a few in-place NumPy calls on the CPU. Its
state (momentum, squared-gradient averages, ...) lives in flat buffers of the same layout
on the parameters' device; ``state_dict`` presents it keyed by parameter name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import kernels
from ..parameter import FlatParameters, Parameter, pack
from ..validation import check_float
from .clip import clip_flat_grad


class Optimizer:
    """Base class. Subclasses name their state buffers in ``state_names``, list their
    hyperparameters in ``hyper_names`` and implement ``_update(flat, state, scratch)``.

    ``params`` may be None: the optimizer is then bound later with :meth:`bind` (the
    Trainer does this). ``max_grad_norm`` clips the global gradient norm before each step.
    """

    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ("lr",)

    def __init__(
        self, params: Iterable[Parameter] | Any = None, *, lr: float, max_grad_norm: float | None = None
    ) -> None:
        self.lr = check_float("lr", lr, low=0.0)
        self.max_grad_norm = (
            None if max_grad_norm is None else check_float("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        )
        self.step_count = 0
        self._params: list[Parameter] | None = None
        self._flat: FlatParameters | None = None
        self._state: dict[str, Any] = {}
        self._scratch: Any = None
        if params is not None:
            self.bind(params)

    # --------------------------------------------------------------- binding

    def bind(self, params: Iterable[Parameter] | Any) -> Optimizer:
        """Attach to ``params`` (a list of parameters or a model); allocates zeroed state on
        their device. Returns self."""
        if hasattr(params, "parameters"):
            params = params.parameters()
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), got one Parameter")
        self._params = list(params)
        flat = pack(self._params)
        self._flat = flat
        xp = flat.device.xp
        with flat.device:
            self._state = {name: xp.zeros(flat.size, dtype=flat.dtype) for name in self.state_names}
            # The CPU twins reuse a small scratch buffer so that a step allocates nothing;
            # the fused GPU kernels need none.
            self._scratch = kernels.scratch(flat.size, flat.dtype) if flat.device.kind == "cpu" else None
        return self

    @property
    def params(self) -> list[Parameter]:
        if self._params is None:
            raise RuntimeError(self._unbound_message())
        return self._params

    def _unbound_message(self) -> str:
        return (
            f"{type(self).__name__} has no parameters: pass model.parameters() to it, "
            "call .bind(model.parameters()), or hand it to a Trainer"
        )

    def _current_flat(self) -> FlatParameters:
        flat = self._flat
        if flat is None:
            raise RuntimeError(self._unbound_message())
        if not flat.valid:  # the model moved or was repacked since bind: follow it
            saved = self._snapshot(flat)
            self.bind(self._params)
            self.load_state_dict(saved)
            flat = self._flat
        return flat

    # --------------------------------------------------------------- stepping

    def step(self) -> None:
        """Update every parameter from its ``grad`` (one operation over the flat buffer)."""
        flat = self._current_flat()
        self.step_count += 1  # the update reads t (Adam's bias correction)
        try:
            if flat.device.kind == "cpu":
                self._apply(flat)
            else:
                with flat.device:  # kernels launch on the current GPU: make it the parameters' one
                    self._apply(flat)
        except BaseException:
            self.step_count -= 1
            raise

    def _apply(self, flat: FlatParameters) -> None:
        if self.max_grad_norm is not None:
            clip_flat_grad(flat.grad, self.max_grad_norm)
        self._update(flat, self._state, self._scratch)

    def _update(self, flat: FlatParameters, state: dict[str, Any], scratch: Any) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- state

    def _keys(self) -> list[str]:
        names = [p.name for p in self.params]
        if all(names) and len(set(names)) == len(names):
            return names
        return [str(i) for i in range(len(names))]  # unnamed or clashing: by position

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.hyper_names}

    def state_dict(self) -> dict[str, Any]:
        """{"type", "step", "hyper", "state": {param name: {buffer name: array}}}; arrays are
        copies on the parameters' device."""
        return self._snapshot(self._current_flat())

    def _snapshot(self, flat: FlatParameters) -> dict[str, Any]:
        state = {
            key: {name: flat.view(self._state[name], p).copy() for name in self.state_names}
            for key, p in zip(self._keys(), flat.params, strict=True)
        }
        return {"type": type(self).__name__, "step": self.step_count, "hyper": self.hyperparameters(), "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from any device) into this optimizer."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise TypeError("state_dict must be a dict returned by Optimizer.state_dict()")
        kind = state_dict.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for {kind}, not {type(self).__name__}")
        flat = self._current_flat()
        keys = self._keys()
        saved = state_dict["state"]
        missing, unexpected = sorted(set(keys) - set(saved)), sorted(set(saved) - set(keys))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the parameters: missing {missing}, unexpected {unexpected}")
        for key, p in zip(keys, flat.params, strict=True):
            for name in self.state_names:
                value = saved[key][name]
                if tuple(value.shape) != p.shape:
                    raise ValueError(
                        f"state_dict['state'][{key!r}][{name!r}] has shape {tuple(value.shape)}, expected {p.shape}"
                    )
                flat.view(self._state[name], p)[...] = flat.device.send(value)
        for name, value in state_dict.get("hyper", {}).items():
            if name in self.hyper_names:
                setattr(self, name, _checked_hyper(f"state_dict['hyper'][{name!r}]", value))
        self.step_count = int(state_dict.get("step", 0))

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"


def _checked_hyper(name: str, value: Any) -> Any:
    """A saved hyperparameter, checked like the constructors check theirs (finite, >= 0)."""
    if isinstance(value, (list, tuple)):
        return tuple(check_float(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value))
    return check_float(name, value, low=0.0)
