"""The Optimizer base class: hyperparameters, state in flat buffers, binding, state_dict.

A step is one call to the device's Ops (``ops.<rule>_update``) over the whole flat parameter
buffer; the state (momentum, squared-gradient averages, ...) lives in flat buffers of the same
layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend.selection import ops_of
from ..nn.parameter import FlatParameters, Parameter, pack, parameter_list, state_keys
from ..nn.regularizers import Regularizer
from ..validation import check_float, check_real

Params = Iterable[Parameter] | Any  # a list of parameters, or a model (its .parameters())


class Optimizer:
    """Base class. Subclasses name their state buffers in ``state_names``, list their
    hyperparameters in ``hyper_names`` and implement ``_update(ops, flat, state, extras)``: one
    call of ``ops.<rule>_update`` on the flat buffers with ``**extras`` (``n_decay``, the
    penalty's l2 / l1, the clipping's clip). ``params`` may be None: the optimizer is then bound
    later with :meth:`bind` (the Trainer does this).

    Each step updates with the effective gradient

        g' = g·min(1, max_grad_norm / (‖g‖₂ + 1e-6)) + λ₂·W + λ₁·sign(W)

    where g is the loss gradient in ``param.grad`` (read, never modified), the clipping factor
    applies only with ``max_grad_norm`` set (‖g‖₂ over all parameters together), and λ₂ / λ₁ come
    from ``step(gn.L2(λ₂))`` / ``step(gn.L1(λ₁))``, on the weights only (``decay=True``). This is
    PyTorch's order: the loss gradient is clipped, then the penalty is added, unclipped. Any other
    :class:`~gpunn.nn.regularizers.Regularizer` runs its ``backward(params)`` first (its gradient
    is then clipped together with the loss gradient).

    A rule with PyTorch's ``weight_decay`` (SGD, AdaGrad, RMSprop, Adam; not AdamW, whose decay
    is decoupled) adds weight_decay·W to g' on every parameter, biases included, as PyTorch
    does; with a regularizer too, the regularizer's gradient is then added to ``param.grad``
    first, as a penalty in the loss would be (and clipped with it).
    """

    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ("lr",)
    decoupled = False  # whether weight_decay scales W in the rule instead of joining the gradient

    def __setattr__(self, name: str, value: Any) -> None:
        # A NumPy number set as a hyperparameter (a schedule, scikit-learn's loops) becomes a
        # Python number: a NumPy float64 operand would make NEP 50 compute a float32 update in float64.
        if name in self.hyper_names:
            value = _plain(value)
        object.__setattr__(self, name, value)

    def __init__(
        self, params: Params = None, *, lr: float, weight_decay: float = 0.0, max_grad_norm: float | None = None
    ) -> None:
        self.lr = check_float("lr", lr, low=0.0)
        # PyTorch's coupled weight decay (AdamW: its decoupled decay, see decoupled)
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.max_grad_norm = (
            None if max_grad_norm is None else check_float("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        )
        self.step_count = 0
        self._params: list[Parameter] | None = None
        self._flat: FlatParameters | None = None
        self._state: dict[str, Any] = {}
        self._by_name = False  # the state was restored by load_state_dict and not stepped since
        self._sq_norm: Any = None
        if params is not None:
            self.bind(params)

    def bind(self, params: Params) -> Optimizer:
        """Attach to ``params`` (a list of parameters, or a model); returns self (nothing changes
        for the parameters already bound, in order and still packed as they were).

        State belongs to Parameter objects: those bound before keep theirs, any other starts from
        zero; when none keeps state (another model), the step count restarts at 0 too. The step count
        is one for all parameters, as Keras's ``iterations`` (PyTorch counts per parameter): a
        parameter bound later gets bias corrections from it (docs: internals). After
        :meth:`load_state_dict`, until the next step, the restored state goes by name to Parameter
        objects of the bound names and shapes (the model of a second read of one checkpoint)."""
        params = parameter_list(params)
        if self._flat is not None and self._flat.owns(params):
            return self
        carried = self._carried_state(params)
        flat = pack(params)
        with flat.device:
            state = {name: flat.device.xp.zeros(flat.size, dtype=flat.dtype) for name in self.state_names}
            sq_norm = flat.device.xp.zeros(1, dtype=np.float64)  # Σ g² for clipping, read by the update
            for p, values in carried.items():
                for name, value in values.items():
                    flat.view(state[name], p)[...] = flat.device.send(value)
        if self._params is not None and not carried:
            self.step_count = 0
        self._params, self._flat, self._state, self._sq_norm = params, flat, state, sq_norm
        return self

    def _carried_state(self, params: list[Parameter]) -> dict[Parameter, dict[str, Any]]:
        """{parameter of ``params``: its state buffers} for those that keep state (see :meth:`bind`)."""
        flat = self._flat
        if flat is None:
            return {}
        kept = [name for name in self.state_names if name in self._state]
        held = {id(p): {name: flat.view(self._state[name], p) for name in kept} for p in flat.params}
        by_name = dict(zip(_keys(flat.params), flat.params, strict=True)) if self._by_name else {}
        carried = {}
        for key, p in zip(_keys(params), params, strict=True):
            if id(p) in held:
                carried[p] = held[id(p)]
            elif key in by_name and by_name[key].shape == p.shape:
                carried[p] = held[id(by_name[key])]
        return carried

    @property
    def params(self) -> list[Parameter]:
        """The parameters bound, in order (RuntimeError when unbound)."""
        if self._params is None:
            raise RuntimeError(
                f"{type(self).__name__} has no parameters: pass model.parameters() to it, "
                "call .bind(model.parameters()), or hand it to a Trainer"
            )
        return self._params

    @property
    def bound(self) -> bool:
        """Whether the optimizer is bound to parameters."""
        return self._params is not None

    @property
    def flat(self) -> FlatParameters:
        """The bound parameters' flat buffers; when the model moved or was repacked since, the
        optimizer follows it first (bound anew, state kept)."""
        if self._flat is None or not self._flat.valid:
            self.bind(self.params)  # unbound: raises
        return self._flat

    @property
    def state(self) -> dict[str, Any]:
        """The state buffers by name, flat and laid out like :attr:`flat` (the arrays updated in
        place; a distributed run broadcasts them)."""
        self.flat  # noqa: B018 — follows a moved model first
        return self._state

    def step(self, regularizer: Regularizer | None = None) -> None:
        """Update every parameter from its ``grad``: one Ops call over the flat buffers, with
        ``regularizer``'s gradient folded in (see the class's effective gradient g')."""
        flat = self.flat
        with flat.device:  # kernels launch and allocate on the current GPU: make it the parameters' one
            extras = {"n_decay": flat.n_decay}
            coupled = 0.0 if self.decoupled else self.weight_decay
            if regularizer is not None:
                extras.update(self._penalty(regularizer, fused=coupled == 0.0))
            if coupled != 0.0:  # g' += wd·W on every element: the L2 folding over the whole buffer
                extras.update(n_decay=flat.size, l2=coupled, l1=0.0)
            ops = ops_of(flat.data)
            if self.max_grad_norm is not None:
                ops.sum_of_squares(flat.grad, self._sq_norm)  # no host read: the update takes it from there
                extras["clip"] = (self.max_grad_norm, self._sq_norm)
            self.step_count += 1  # the update reads it (Adam's bias corrections)
            try:
                self._update(ops, flat, self._state, extras)
            except BaseException:
                self.step_count -= 1
                raise
        self._by_name = False

    def _penalty(self, regularizer: Regularizer, fused: bool = True) -> dict[str, Any]:
        """The update's l2 / l1 for ``regularizer`` (running its backward instead when its
        gradient has another form, or when ``fused`` is False: the update's l2 is taken)."""
        if not isinstance(regularizer, Regularizer):
            raise TypeError(f"regularizer must be gn.L2(...), gn.L1(...) or None, got {type(regularizer).__name__}")
        coefficients = regularizer.fused_coefficients() if fused else None
        if coefficients is None:
            regularizer.backward(self.params)
            return {}
        l2, l1 = coefficients
        return {} if l2 == 0.0 and l1 == 0.0 else {"l2": l2, "l1": l1}

    def _update(self, ops: Any, flat: FlatParameters, state: dict[str, Any], extras: dict[str, Any]) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every bound parameter's gradient to zero (a training step needs none:
        ``model.backward`` writes the gradients). ``set_to_none`` is PyTorch's keyword; the
        gradients, views of one flat buffer, become zeros either way."""
        self.flat.grad.fill(0)

    def _buffer(self, name: str) -> Any:
        """The flat state buffer ``name``, made (zeros) when a hyperparameter set since binding
        asks for one the rule did not keep (SGD's momentum set after a step without it)."""
        buffer = self._state.get(name)
        if buffer is None:
            flat = self._flat
            with flat.device:
                buffer = self._state[name] = flat.device.xp.zeros(flat.size, dtype=flat.dtype)
        return buffer

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.hyper_names}

    def state_dict(self) -> dict[str, Any]:
        """{"type", "step", "hyper", "state": {param name: {buffer name: array}}}; arrays are
        copies on the parameters' device. Unnamed (or clashing) parameters are keyed by position."""
        flat = self.flat
        state = {
            key: {name: flat.view(self._buffer(name), p).copy() for name in self.state_names}
            for key, p in zip(_keys(flat.params), flat.params, strict=True)
        }
        return {"type": type(self).__name__, "step": self.step_count, "hyper": self.hyperparameters(), "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from any device), by parameter name."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise TypeError("state_dict must be a dict returned by Optimizer.state_dict()")
        kind = state_dict.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for {kind}, not {type(self).__name__}")
        flat = self.flat
        keys = _keys(flat.params)
        saved = state_dict["state"]
        missing, unexpected = sorted(set(keys) - set(saved)), sorted(set(saved) - set(keys))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the parameters: missing {missing}, unexpected {unexpected}")
        before = self.hyperparameters()
        try:  # the hyperparameters first: they say which state buffers the rule keeps (SGD's momentum)
            for name, value in state_dict.get("hyper", {}).items():
                if name in self.hyper_names:
                    current = getattr(self, name, 0.0)
                    setattr(self, name, _checked_hyper(f"state_dict['hyper'][{name!r}]", value, current))
            self._check_hyperparameters()
            buffers = []  # every buffer checked before any is written: a refused state changes nothing
            for key, p in zip(keys, flat.params, strict=True):
                for name in self.state_names:
                    value = saved[key].get(name)
                    if value is None:
                        raise ValueError(f"state_dict['state'][{key!r}] has no {name!r} buffer, which {self!r} keeps")
                    where = f"state_dict['state'][{key!r}][{name!r}]"
                    if not hasattr(value, "shape") or tuple(value.shape) != p.shape:
                        raise ValueError(f"{where} has shape {tuple(getattr(value, 'shape', ()))}, expected {p.shape}")
                    check_real(where, value)  # a value that cannot be cast fails here, not halfway through
                    buffers.append((name, p, value))
            for name, p, value in buffers:
                flat.view(self._buffer(name), p)[...] = flat.device.send(value)
        except BaseException:
            for name, value in before.items():
                setattr(self, name, value)
            raise
        self.step_count = int(state_dict.get("step", 0))
        self._by_name = True

    def _check_hyperparameters(self) -> None:
        """Raise for hyperparameters that do not go together (a subclass's rule; none here)."""

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"


def _keys(params: tuple[Parameter, ...] | list[Parameter]) -> list[str]:
    return state_keys([p.name for p in params])


def _plain(value: Any) -> Any:
    """A NumPy real number or 0-d array as a Python float (int for an integer), and so each
    element of a tuple or list (betas); any other value as it is."""
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 and value.dtype.kind in "fiu":
        return float(value) if value.dtype.kind == "f" else int(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value  # nothing to convert: the caller's sequence (a namedtuple too) as it is
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _checked_hyper(name: str, value: Any, current: Any) -> Any:
    """A saved hyperparameter, checked like the constructors check theirs (finite, >= 0); a
    subclass's setting that is no number (a string, a bool, None) comes back as it is where
    the optimizer's ``current`` value is no number either."""
    no_number = (str, bool, type(None))
    if isinstance(value, no_number) and isinstance(current, no_number):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(check_float(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value))
    return check_float(name, value, low=0.0)
