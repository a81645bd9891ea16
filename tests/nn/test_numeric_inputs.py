"""Every layer, loss and regularizer checks what it is given: a dtype it does not compute in, a
shape it cannot use or an empty batch gets a TypeError or ValueError naming the argument, never a
NumPy-internal error or a silently wrong number. Layers and losses compute in float32 or float64;
labels are integers. An empty batch flows through a layer (N = 0 rows out) but not into a loss,
whose mean over zero samples is undefined."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gpunn as gn
from gpunn.nn.parameter import Parameter

LAYERS = {  # every public layer, built in float64 where it has parameters; x has 3 features
    "Linear": lambda: gn.Linear(3, 4, activation="tanh", dtype="float64", seed=0),
    "ReLU": gn.ReLU,
    "LeakyReLU": lambda: gn.LeakyReLU(0.1),
    "Sigmoid": gn.Sigmoid,
    "Tanh": gn.Tanh,
    "Identity": gn.Identity,
    "Softmax": gn.Softmax,
    "Dropout": lambda: gn.Dropout(0.5, seed=0),
    "Sequential": lambda: gn.mlp([3, 4, 2], dtype="float64", seed=0, dropout=0.5),
}

# (x, the error, what its message says) for an input no layer computes with
BAD_X = {
    "int64": (np.array([[-5, 3, 1]]), TypeError, r"^x (has|must have) dtype.*int64"),
    "uint8": (np.array([[3, 5, 1]], np.uint8), TypeError, r"^x (has|must have) dtype.*uint8"),
    "bool": (np.ones((2, 3), bool), TypeError, r"^x (has|must have) dtype.*bool"),
    "float16": (np.ones((2, 3), np.float16), TypeError, r"^x (has|must have) dtype.*float16"),
    "complex": (np.ones((2, 3), complex), TypeError, r"^x (has|must have) dtype.*complex128"),
    "object": (np.ones((2, 3), object), TypeError, r"^x (has|must have) dtype.*object"),
    "1-D": (np.array([1.0, 2.0, 3.0]), ValueError, r"^x must have shape \(N, features\), got shape \(3,\)"),
    "3-D": (np.ones((2, 3, 1)), ValueError, r"^x must have shape \(N, features\), got shape \(2, 3, 1\)"),
    "0-d": (np.array(1.0), ValueError, r"^x must have shape \(N, features\), got shape \(\)"),
    "list": ([[1.0, 2.0, 3.0]], TypeError, r"^x must be a NumPy or CuPy array"),
}


@pytest.mark.parametrize("bad", sorted(BAD_X))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_refuses_an_input_it_does_not_compute_with(name, bad):
    x, error, message = BAD_X[bad]
    for training in (True, False):  # dropout's identity in evaluation checks x too
        layer = LAYERS[name]().train(training)
        with pytest.raises(error, match=message):
            layer.forward(x)


# (dy for a layer whose output has shape (2, k) in float64, the error, its message)
BAD_DY = {
    "rows": (lambda k: np.ones((1, k)), ValueError, r"expects dy of shape \(2, \d\), got \(1, \d\)"),
    "columns": (lambda k: np.ones((2, k + 1)), ValueError, r"expects dy of shape \(2, \d\), got \(2, \d\)"),
    "1-D": (lambda k: np.ones(2 * k), ValueError, r"expects dy of shape \(2, \d\), got \(\d+,\)"),
    "float32": (lambda k: np.ones((2, k), np.float32), TypeError, r"^dy has dtype float32 but .* computes in float64"),
    "int64": (lambda k: np.ones((2, k), np.int64), TypeError, r"^dy has dtype int64"),
    "complex": (lambda k: np.ones((2, k), complex), TypeError, r"^dy has dtype complex128"),
    "object": (lambda k: np.ones((2, k), object), TypeError, r"^dy has dtype object"),
    "list": (lambda k: [[1.0] * k] * 2, TypeError, r"^dy must be a NumPy or CuPy array"),
}


@pytest.mark.parametrize("bad", sorted(BAD_DY))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_refuses_a_gradient_unlike_its_output(name, bad, rng):
    make, error, message = BAD_DY[bad]
    layer = LAYERS[name]()
    y = layer.forward(rng.standard_normal((2, 3)))
    backward = (lambda dy: layer.backward(dy, input_grad=True)) if name == "Sequential" else layer.backward
    with pytest.raises(error, match=message):
        backward(make(y.shape[1]))
    assert backward(np.ones_like(y)).shape == (2, 3)  # the right dy still works afterwards


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_refuses_backward_before_forward(name):
    with pytest.raises(RuntimeError, match=r"backward called before forward"):
        LAYERS[name]().backward(np.ones((2, 4)))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_an_empty_batch_flows_through_every_layer(name):
    layer = LAYERS[name]()
    y = layer.forward(np.ones((0, 3)))
    assert y.shape[0] == 0 and y.dtype == np.float64
    dx = layer.backward(np.ones_like(y), input_grad=True) if name == "Sequential" else layer.backward(np.ones_like(y))
    assert dx.shape == (0, 3) and dx.dtype == np.float64
    for p in layer.parameters():  # the gradient of a sum over no samples is zero
        assert np.array_equal(p.grad, np.zeros_like(p.grad))


def test_softmax_needs_a_class():
    with pytest.raises(ValueError, match=r"x must have at least one column .* got shape \(2, 0\)"):
        gn.Softmax().forward(np.ones((2, 0)))


# ----------------------------------------------------------------------------- losses

LOSSES = {  # loss, the name of its first argument, valid (y, t)
    "SoftmaxWithLoss": (gn.SoftmaxWithLoss, "logits", np.zeros((2, 3)), np.array([0, 2])),
    "MSELoss": (gn.MSELoss, "y", np.zeros((2, 3)), np.ones((2, 3))),
    "SigmoidBCELoss": (gn.SigmoidBCELoss, "logits", np.zeros((2, 3)), np.full((2, 3), 0.5)),
}

# (a replacement for y, the error, its message with {y} for the argument's name)
BAD_Y = {
    "int64": (np.array([[1, 0, 2], [3, 1, 0]]), TypeError, r"^{y} must have dtype float32 or float64.*int64"),
    "uint8": (np.array([[3, 5, 1], [0, 0, 0]], np.uint8), TypeError, r"^{y} must have dtype .*uint8"),
    "bool": (np.ones((2, 3), bool), TypeError, r"^{y} must have dtype .*bool"),
    "float16": (np.ones((2, 3), np.float16), TypeError, r"^{y} must have dtype .*float16"),
    "complex": (np.ones((2, 3), complex), TypeError, r"^{y} must have dtype .*complex128"),
    "object": (np.ones((2, 3), object), TypeError, r"^{y} must have dtype .*object"),
    "3-D": (np.ones((2, 3, 1)), ValueError, r"^{y} must have shape \(N, "),
    "0-d": (np.array(1.0), ValueError, r"^{y} must have shape \(N, "),
    "list": ([[0.0, 0.0, 0.0]] * 2, TypeError, r"^{y} must be a NumPy or CuPy array"),
}


@pytest.mark.parametrize("bad", sorted(BAD_Y))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_refuses_outputs_it_does_not_compute_with(name, bad):
    make, y_name, _, t = LOSSES[name]
    y, error, message = BAD_Y[bad]
    for validate in (True, False):
        with pytest.raises(error, match=message.format(y=y_name)):
            make(validate=validate).forward(y, t)


# (y, t) of an empty batch or no outputs per sample, for each loss
EMPTY = {
    "SoftmaxWithLoss": [(np.zeros((0, 3)), np.zeros(0, np.int64)), (np.zeros((2, 0)), np.array([0, 0]))],
    "MSELoss": [(np.zeros((0, 3)), np.zeros((0, 3))), (np.zeros(0), np.zeros(0)), (np.zeros((2, 0)), np.zeros((2, 0)))],
    "SigmoidBCELoss": [(np.zeros((0, 3)), np.zeros((0, 3))), (np.zeros(0), np.zeros(0))],
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_refuses_an_empty_batch(name):
    make, y_name, _, _ = LOSSES[name]
    for y, t in EMPTY[name]:
        for validate in (True, False):
            with pytest.raises(
                ValueError, match=rf"^{y_name} is empty \(shape {re.escape(str(y.shape))}\).*zero samples"
            ):
                make(validate=validate).forward(y, t)


# (a replacement for t, the error, its message)
BAD_T = {
    "complex": (np.ones((2, 3), complex), TypeError, r"^t must hold (real numbers|integer).*complex128"),
    "object": (np.ones((2, 3), object), TypeError, r"^t must hold (real numbers|integer).*object"),
    "samples": (np.zeros((3, 3)), ValueError, r"different numbers of samples"),
    "list": ([0, 1], TypeError, r"^t must be a NumPy or CuPy array, got list"),
}


@pytest.mark.parametrize("bad", sorted(BAD_T))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_refuses_targets_of_another_kind(name, bad):
    make, _, y, _ = LOSSES[name]
    t, error, message = BAD_T[bad]
    for validate in (True, False):
        with pytest.raises(error, match=message):
            make(validate=validate).forward(y, t)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_refuses_backward_before_forward_and_gives_right_numbers_after(name):
    make, _, y, t = LOSSES[name]
    loss = make()
    with pytest.raises(RuntimeError, match=rf"^{name}\.backward called before forward; call forward"):
        loss.backward()
    expected = {"SoftmaxWithLoss": np.log(3.0), "MSELoss": 1.5, "SigmoidBCELoss": 3 * np.log(2.0)}[name]
    assert float(loss.forward(y, t)) == pytest.approx(expected, rel=1e-12)
    assert loss.backward().shape == y.shape


def test_integer_targets_of_a_float_output_are_the_right_number():
    """The issue's case: float outputs with integer or float targets give the textbook value."""
    assert float(gn.MSELoss().forward(np.array([[1.0]]), np.array([[0.5]]))) == 0.125
    assert float(gn.MSELoss().forward(np.array([[1.0]], np.float32), np.array([[0]]))) == 0.5
    loss = float(gn.SoftmaxWithLoss().forward(np.array([[3.0, 5.0]], np.float32), np.array([1], np.uint8)))
    assert loss == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int32])
def test_softmax_with_loss_takes_every_integer_label_dtype(dtype):
    z = np.array([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    for validate in (True, False):
        loss = gn.SoftmaxWithLoss(validate=validate)
        expected = gn.SoftmaxWithLoss().forward(z, np.array([2, 0]))
        assert loss.forward(z, np.array([2, 0], dtype)) == expected
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\).*max 3"):
        gn.SoftmaxWithLoss().forward(z, np.array([0, 3], dtype))


# ----------------------------------------------------------------------------- regularizers


def _parameter(dtype: object) -> Parameter:
    return Parameter(np.ones((2, 2), dtype=dtype), "W")


BAD_PARAMS = {  # params, the error, its message
    "None": (None, TypeError, r"^params must be an iterable of Parameters.*got NoneType"),
    "one Parameter": (_parameter(np.float64), TypeError, r"^params must be an iterable of Parameters.*Parameter"),
    "array": (np.ones((2, 2)), TypeError, r"^params\[0\] must be a gpunn Parameter, got ndarray"),
    "int64": ([_parameter(np.int64)], TypeError, r"^params\[0\] \('W'\) must be float32 or float64, got dtype int64"),
    "complex": ([_parameter(complex)], TypeError, r"^params\[0\] \('W'\) must be float32 or float64.*complex128"),
    "float16": ([_parameter(np.float16)], TypeError, r"^params\[0\] \('W'\) must be float32 or float64.*float16"),
}


@pytest.mark.parametrize("bad", sorted(BAD_PARAMS))
@pytest.mark.parametrize("make", [gn.L2, gn.L1], ids=lambda m: m.__name__)
def test_every_regularizer_refuses_params_it_does_not_compute_with(make, bad):
    params, error, message = BAD_PARAMS[bad]
    for method in (make(0.1).forward, make(0.1).backward):
        with pytest.raises(error, match=message):
            method(params)
