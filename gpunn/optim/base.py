"""The Optimizer base class: binding to parameters, flat state, state_dict, live scalars.

An optimizer updates the whole flat parameter buffer (see :mod:`gpunn.parameter`) in one
operation per step: one fused kernel on a GPU, a few in-place NumPy calls on the CPU. The
same kernel adds an L2 / L1 penalty's gradient and applies gradient clipping, so a step with
both is still one update launch (plus the clipping's sum of squares). Its state (momentum,
squared-gradient averages, ...) lives in flat buffers of the same layout on the parameters'
device; ``state_dict`` presents it keyed by parameter name.

For CUDA-graph replay the learning rate and the step number can live in device memory
(:meth:`Optimizer.use_live_scalars`): a captured step then reads the current values each
time it is replayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend import kernels
from ..backend.device import array_module
from ..nn.parameter import FlatParameters, Parameter, pack, same_parameters
from ..nn.regularizers import Regularizer
from ..validation import check_float

_NO_EXTRAS: dict[str, Any] = {}  # what a plain step passes the kernels besides the rule's own arguments


class Optimizer:
    """Base class. Subclasses name their state buffers in ``state_names``, list their
    hyperparameters in ``hyper_names`` and implement ``_update(flat, state, scratch, extras)``,
    passing ``n_decay=flat.n_decay`` and ``**extras`` (penalties, clipping, live scalars) on
    to their :mod:`gpunn.kernels` update.

    ``params`` may be None: the optimizer is then bound later with :meth:`bind` (the
    Trainer does this).

    Each step updates with the effective gradient

        ĝ = g·min(1, max_grad_norm / (‖g‖₂ + 1e-6)) + λ₂·W + λ₁·sign(W)

    where g is the loss gradient in ``param.grad``, the clipping factor applies only with
    ``max_grad_norm`` set (‖g‖₂ over all parameters together), and the penalty terms come from
    ``step(regularizer)`` with a :class:`gpunn.L2` (λ₂) or :class:`gpunn.L1` (λ₁), on the
    weights only (parameters with ``decay=True``; never biases). This is PyTorch's order: the
    loss gradient is clipped, then the optimizer adds weight decay, so the penalty is not
    clipped. Everything happens inside the one fused update; ``param.grad`` is read, never
    modified. Any other :class:`~gpunn.regularizers.Regularizer` is applied the old way
    (``regularizer.backward(params)`` adds its gradient to ``grad``, which is then clipped
    together with the loss gradient).
    """

    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ("lr",)

    def __setattr__(self, name: str, value: Any) -> None:
        # A NumPy number (or 0-d array) set later as a hyperparameter (a schedule, scikit-learn's
        # loops) becomes a Python number, as the constructors make it (so do betas' items): a
        # NumPy float64 would make NEP 50 compute a float32 update in float64, unlike the
        # kernels, which round every hyperparameter once to the buffer's dtype (and unlike
        # gpunn.cpu_update's 0-d operands, which do the same). Anything else (a subclass's own
        # settings, a string, a bool) is kept.
        if name in self.hyper_names:
            value = _plain(value)
        object.__setattr__(self, name, value)

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
        self._scratch2: Any = None  # two lanes, for steps with a penalty or clipping (CPU)
        self._sq_norm: Any = None  # the squared gradient norm for clipping (1 float64, on the device)
        self._live: Any = None  # [lr, t] (float64, on the device), see use_live_scalars
        self._live_on = False
        self._live_lr: float | None = None  # the lr last written into live[0]
        self._live_t: int | None = None  # what live[1] holds, as far as the host knows (None: unknown)
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
        self._scratch2 = None
        self._sq_norm = None
        self._live = None  # a new device: the [lr, t] array is made there (and filled) when needed
        if self._live_on:
            self.live_scalars()
        return self

    def follow(self, params: Iterable[Parameter] | Any) -> bool:
        """Bind to ``params`` (a list or a model), keeping the state of every parameter bound
        before that is among them and starting the others from zero state, as :meth:`bind`
        does; nothing happens when they are the parameters bound, in order. When none of them
        was bound before but they hold the bound ones' values, in order (the same model in
        other objects: a copy, its checkpoint read twice), each takes the state of the one in
        its place. When no state is kept at all (another model), the step count starts again
        from 0 too, as for a new optimizer. Returns whether it rebound.

        This is how a model whose parameters changed is followed (a layer's Parameter replaced,
        ``layer.W = Parameter(...)``, a layer added): without it the optimizer would go on
        updating the old arrays, and the model, reading the new ones, would silently not train
        them. :class:`gpunn.Trainer` decides when to follow (not a partial binding made on
        purpose to freeze layers).
        """
        if hasattr(params, "parameters"):
            params = params.parameters()
        params = list(params)
        bound, flat = self._params, self._flat
        if bound is not None and same_parameters(bound, params):
            return False
        kept = {}
        if bound is not None and flat is not None:
            present = {id(p) for p in params}
            moves = [(p, p) for p in bound if id(p) in present]  # (whose state, who takes it)
            if not moves and _same_model(bound, params):
                # The same model in other objects, sharing no Parameter (its checkpoint read
                # twice: gn.load(path) for the model, checkpoint.read(path).optimizer() for the
                # optimizer; a copy): the state goes with the places. Equal values are the
                # test, not equal shapes: a fresh model of the same shapes (a sweep reusing
                # one optimizer, a re-initialisation) must not inherit another's moments.
                moves = list(zip(bound, params, strict=True))
            kept = {
                id(new): {name: flat.view(self._state[name], old).copy() for name in self.state_names}
                for old, new in moves
            }
        if bound is not None and not kept:
            # nothing carried over: a fresh start, step count included (zero moments under a
            # late bias correction would be neither the old state nor a new one)
            self.step_count = 0
        self.bind(params)
        flat = self._flat
        for p in params:
            for name, value in kept.get(id(p), {}).items():
                flat.view(self._state[name], p)[...] = flat.device.send(value)
        return True

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

    def step(self, regularizer: Regularizer | None = None) -> None:
        """Update every parameter from its ``grad`` (one operation over the flat buffer).

        ``regularizer``: a :class:`gpunn.L2` or :class:`gpunn.L1` is folded into the update
        (its gradient λ·W or λ·sign(W) is added to the clipped loss gradient inside the
        kernel); any other Regularizer runs its ``backward(params)`` first. In live-scalar
        mode (:meth:`use_live_scalars`) the step number advances in device memory too, and
        while a CUDA graph is being captured the step is recorded but not counted (each
        replay is, with :meth:`count_replayed_step`).
        """
        flat = self._current_flat()
        if self.max_grad_norm is None and not self._live_on:  # the common step, in few calls
            extras = _NO_EXTRAS if regularizer is None else self._penalty(regularizer)
            scratch = self._scratch
            if extras and scratch is not None:
                scratch = self._penalty_scratch(flat)
            self.step_count += 1  # the update reads t (Adam's bias correction)
            try:
                if flat.device.kind == "cpu":
                    self._update(flat, self._state, scratch, extras)
                else:
                    with flat.device:  # kernels launch on the current GPU: make it the parameters' one
                        self._update(flat, self._state, scratch, extras)
            except BaseException:
                self.step_count -= 1
                raise
            return
        self._fused_step(flat, regularizer)

    def _penalty_scratch(self, flat: FlatParameters) -> Any:
        """The CPU twins' scratch for an update with a penalty or clipping: a second lane for
        the effective gradient, in a scratch of its own so that the plain update's pieces stay
        as they are."""
        if self._scratch2 is None:
            self._scratch2 = kernels.scratch(flat.size, flat.dtype, lanes=2)
        return self._scratch2

    def _fused_step(self, flat: FlatParameters, regularizer: Regularizer | None) -> None:
        """A step with clipping or live scalars, and any penalty (see :meth:`step`)."""
        extras = _NO_EXTRAS if regularizer is None else self._penalty(regularizer)
        live = self._live if self._live_on else None
        counted = True
        if live is not None:
            if kernels.is_capturing(live):
                if self._live_stale():
                    raise RuntimeError(
                        "the live scalars are out of date: call optimizer.sync_live_scalars() before capturing a step"
                    )
                counted = False  # capture records the launches; they run (and count) at each replay
            else:
                self.sync_live_scalars()  # eager steps follow the host's lr and step_count
        if counted:
            self.step_count += 1
        try:
            if flat.device.kind == "cpu":
                self._apply(flat, extras, live, counted)
            else:
                with flat.device:
                    self._apply(flat, extras, live, counted)
        except BaseException:
            if counted:
                self.step_count -= 1
            if live is not None:
                self._live_t = None  # live[1] may or may not have advanced: rewrite it at the next sync
            raise

    def _penalty(self, regularizer: Regularizer) -> dict[str, Any]:
        """The kernels' penalty arguments for ``regularizer`` (running its backward instead
        when it cannot be folded into the update)."""
        if not isinstance(regularizer, Regularizer):
            raise TypeError(f"regularizer must be gn.L2(...), gn.L1(...) or None, got {type(regularizer).__name__}")
        coefficients = regularizer.fused_coefficients()
        if coefficients is None:
            regularizer.backward(self.params)
            return _NO_EXTRAS
        l2, l1 = coefficients
        if l2 == 0.0 and l1 == 0.0:
            return _NO_EXTRAS
        return {"l2": l2, "l1": l1}

    def _apply(self, flat: FlatParameters, extras: dict[str, Any], live: Any, counted: bool) -> None:
        if self.max_grad_norm is not None:
            if self._sq_norm is None:
                with flat.device:
                    self._sq_norm = flat.device.xp.zeros(1, dtype=np.float64)
            kernels.sum_of_squares(flat.grad, self._sq_norm)  # no host read: the kernel takes the factor from it
            extras = {**extras, "max_norm": self.max_grad_norm, "sq_norm": self._sq_norm}
        scratch = self._scratch
        if extras and scratch is not None:
            scratch = self._penalty_scratch(flat)
        if live is not None:
            kernels.advance_step(live)
            if counted and self._live_t is not None:
                self._live_t += 1
            extras = {**extras, "live": live}
        self._update(flat, self._state, scratch, extras)

    def _update(self, flat: FlatParameters, state: dict[str, Any], scratch: Any, extras: dict[str, Any]) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- live scalars (CUDA graphs)

    def live_scalars(self) -> Any:
        """The float64 array [lr, t] on the parameters' device (made once per device, filled
        with the host's lr and step_count). In live mode the update kernels read the learning
        rate and the step number from it instead of taking them as launch arguments."""
        flat = self._current_flat()
        if self._live is None:
            with flat.device:
                self._live = flat.device.send(np.array([self.lr, float(self.step_count)]))  # host: two numbers
            self._live_lr, self._live_t = self.lr, self.step_count
        return self._live

    def use_live_scalars(self, enabled: bool = True) -> None:
        """Turn live-scalar mode on or off. In live mode each :meth:`step` advances live[1]
        on the device (one one-thread kernel on a GPU) and the update reads lr = live[0] and
        t = live[1] when it runs, so a CUDA graph captured around a step stays right when it
        is replayed. The host's ``lr`` and ``step_count`` stay the source of truth: eager
        steps sync them first; before replaying a captured step call
        :meth:`sync_live_scalars`, and after it :meth:`count_replayed_step`."""
        if enabled:
            self.live_scalars()  # raises if unbound, before the mode changes
            self._live_on = True
            self.sync_live_scalars()
        else:
            self._live_on = False

    def sync_live_scalars(self) -> None:
        """Write ``lr`` into live[0] if it changed since the last write, and ``step_count``
        into live[1] if the device may hold another value (no device work when nothing
        changed). Call it before replaying a captured step, e.g. after a schedule moved lr."""
        live = self.live_scalars()
        if self._live_lr != self.lr:
            with self._flat.device:  # a small write on the array's own GPU (stream-ordered, no sync)
                live[0] = self.lr
            self._live_lr = self.lr
        if self._live_t != self.step_count:
            with self._flat.device:
                live[1] = float(self.step_count)
            self._live_t = self.step_count

    def count_replayed_step(self) -> None:
        """Count one replay of a captured step (which advanced live[1] on the device): the host
        ``step_count`` moves on with it, so state_dict and checkpoints stay right."""
        if not self._live_on:
            raise RuntimeError("count_replayed_step() counts replays of a step captured in live-scalar mode")
        self.step_count += 1
        if self._live_t is not None:
            self._live_t += 1

    def _live_stale(self) -> bool:
        return self._live_lr != self.lr or self._live_t != self.step_count

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
                setattr(self, name, _checked_hyper(f"state_dict['hyper'][{name!r}]", value, getattr(self, name, 0.0)))
        self.step_count = int(state_dict.get("step", 0))
        if self._live_on:
            self.sync_live_scalars()

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"


def _plain(value: Any) -> Any:
    """A NumPy real number or 0-d array as a Python float (int for an integer), and so each
    element of a tuple or list (betas); any other value as it is."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value[()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value  # nothing to convert: the caller's sequence (a namedtuple too) as it is
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _not_a_number(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool))


def _checked_hyper(name: str, value: Any, current: Any) -> Any:
    """A saved hyperparameter, checked like the constructors check theirs (finite, >= 0); a
    subclass's setting that is no number (a string, a bool, None) comes back as it is where
    the optimizer's ``current`` value is no number either."""
    if _not_a_number(value) and _not_a_number(current):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(check_float(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value))
    return check_float(name, value, low=0.0)


def _same_model(a: list[Parameter], b: list[Parameter]) -> bool:
    """The same number of parameters with the same shapes, dtypes and values, in order: one
    model's weights in two sets of objects."""
    if len(a) != len(b):
        return False
    for p, q in zip(a, b, strict=True):
        x, y = p.data, q.data
        if x.shape != y.shape or x.dtype != y.dtype or type(x) is not type(y):
            return False
        if not bool(array_module(x).array_equal(x, y, equal_nan=True)):
            return False
    return True
