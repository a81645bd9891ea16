"""Numerical gradient check: compare backward() with central differences.

For every input element a_i the numerical derivative is (f(a_i + ε) − f(a_i − ε)) / 2ε, and
the error of one array is the normwise relative error

    max_i |analytic_i − numerical_i| / max(max_i |analytic_i|, max_i |numerical_i|)

(relative to the array's largest gradient, so that exact zeros — a dead ReLU — do not
divide by zero). ``gradcheck`` returns the largest error over all checked arrays; in float64
a correct backward gives about 1e-8 or less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend.device import array_module
from ..validation import check_float, check_int
from .layers import Dropout, Layer
from .losses import Loss
from .parameter import parameter_list, state_keys
from .regularizers import Regularizer

Evaluation = Callable[[], float]


def gradcheck(target: Any, inputs: Any, *, eps: float = 1e-6, seed: int = 0) -> float:
    """Largest normwise relative error between analytic and numerical gradients.

    ``target`` and ``inputs`` may be:

    - a layer or model and its input x (N, features): checks ∂/∂x and every parameter of
      f = Σ forward(x) ⊙ R for a fixed random R (backward receives R);
    - a loss and ``(y, t)``: checks ∂L/∂y;
    - a regularizer and a list of parameters (or a model): checks ∂R/∂W;
    - a function ``f(*inputs) -> (value, grads)`` returning its value and the analytic
      gradient of each input; the inputs are perturbed in place.

    All arrays must be float64 (float32 central differences are too coarse to check
    anything) and finite. ``eps`` > 0 is the step ε; ``seed`` draws R.
    """
    errors = gradient_errors(target, inputs, eps=eps, seed=seed)
    if not errors:
        raise ValueError("gradcheck: inputs hold no arrays to check")
    return max(errors.values())


def gradient_errors(target: Any, inputs: Any, *, eps: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """The error of every checked array, by name ("x", "0.W", "y", "inputs[1]", ...)."""
    eps = check_float("eps", eps, low=0.0, low_open=True)
    seed = check_int("seed", seed, low=0)
    dropouts = [m for m in _sublayers(target) if isinstance(m, Dropout)]
    try:
        arrays, analytic, evaluate = _problem(target, inputs, seed)
        for d in dropouts:
            d.reuse_mask = True  # every evaluation must see the mask the analytic pass drew
        return {
            name: _relative_error(analytic[name], _numerical_gradient(evaluate, a, eps)) for name, a in arrays.items()
        }
    finally:
        for d in dropouts:
            d.reuse_mask = False


def _problem(target: Any, inputs: Any, seed: int) -> tuple[dict[str, Any], dict[str, Any], Evaluation]:
    """The arrays to perturb, their analytic gradients, and f() for the current values."""
    if isinstance(target, Regularizer):
        params = parameter_list(inputs)
        # their names where unique (two layers' parameters are both "W"), else params[i]: state_keys' rule
        names = [p.name for p in params]
        keys = state_keys(names)
        keys = keys if keys == names else [f"params[{k}]" for k in keys]
        arrays = {key: p.data for key, p in zip(keys, params, strict=True)}
        _check_arrays(arrays)
        for p in params:
            p.grad[...] = 0.0
        target.backward(params)
        analytic = {key: p.grad.copy() for key, p in zip(keys, params, strict=True)}
        return arrays, analytic, lambda: float(target.forward(params))
    if isinstance(target, Loss):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise TypeError("inputs for a loss must be the pair (y, t)")
        y, t = inputs
        _check_arrays({"y": y})
        target.forward(y, t)
        analytic = {"y": target.backward().copy()}
        return {"y": y}, analytic, lambda: float(target.forward(y, t))
    if isinstance(target, Layer) or (hasattr(target, "forward") and hasattr(target, "backward")):
        return _layer_problem(target, inputs, seed)
    if callable(target):
        return _function_problem(target, inputs)
    raise TypeError(f"target must be a layer, model, loss, regularizer or function, got {type(target).__name__}")


def _layer_problem(layer: Any, inputs: Any, seed: int) -> tuple[dict[str, Any], dict[str, Any], Evaluation]:
    x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    named = list(layer.named_parameters()) if hasattr(layer, "named_parameters") else []
    arrays = {"x": x, **{name: p.data for name, p in named}}
    _check_arrays(arrays)
    xp = array_module(x)
    out = layer.forward(x)
    projection = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    dy = projection.copy()
    dx = layer.backward(dy, input_grad=True) if hasattr(layer, "layers") else layer.backward(dy)  # a model: when asked
    analytic = {"x": dx.copy()}
    analytic.update({name: p.grad.copy() for name, p in named})

    def evaluate() -> float:
        return float((layer.forward(x) * projection).sum())

    return arrays, analytic, evaluate


def _function_problem(f: Callable, inputs: Any) -> tuple[dict[str, Any], dict[str, Any], Evaluation]:
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    arrays = {f"inputs[{i}]": a for i, a in enumerate(inputs)}
    _check_arrays(arrays)
    _, grads = f(*inputs)
    grads = list(grads)
    if len(grads) != len(inputs):
        raise ValueError(f"f returned {len(grads)} gradients for {len(inputs)} inputs")
    analytic = {f"inputs[{i}]": array_module(g).array(g, copy=True) for i, g in enumerate(grads)}
    return arrays, analytic, lambda: float(f(*inputs)[0])


def _sublayers(layer: Any) -> list[Any]:
    found = [layer]
    for child in getattr(layer, "layers", []):
        found.extend(_sublayers(child))
    return found


def _check_arrays(arrays: dict[str, Any]) -> None:
    for name, a in arrays.items():
        if not (hasattr(a, "dtype") and hasattr(a, "shape")):
            raise TypeError(f"gradcheck: {name} must be an array, got {type(a).__name__}")
        if a.dtype != np.float64:
            raise TypeError(
                f"gradcheck: {name} has dtype {a.dtype}; numerical checks need float64 "
                "(build layers with dtype='float64' and use float64 inputs)"
            )
        if not bool(array_module(a).isfinite(a).all()):
            raise ValueError(f"gradcheck: {name} contains NaN or infinity; the check needs finite inputs")


def _numerical_gradient(evaluate: Evaluation, a: Any, eps: float) -> Any:
    grad = array_module(a).zeros(a.shape, dtype=np.float64)
    for index in np.ndindex(*a.shape):
        old = float(a[index])
        a[index] = old + eps
        f_plus = evaluate()
        a[index] = old - eps
        f_minus = evaluate()
        a[index] = old
        grad[index] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def _relative_error(analytic: Any, numerical: Any) -> float:
    if tuple(analytic.shape) != tuple(numerical.shape):
        raise ValueError(f"analytic gradient has shape {tuple(analytic.shape)}, expected {tuple(numerical.shape)}")
    if numerical.size == 0:
        return 0.0  # nothing to check (and CuPy's max takes no initial= for an empty array)
    xp = array_module(numerical)
    analytic = xp.asarray(analytic)
    if not (bool(xp.isfinite(analytic).all()) and bool(xp.isfinite(numerical).all())):
        return math.inf  # a NaN would vanish from max() over the arrays' errors
    scale = max(float(xp.abs(analytic).max()), float(xp.abs(numerical).max()))
    if scale == 0.0:
        return 0.0
    return float(xp.abs(analytic - numerical).max()) / scale
