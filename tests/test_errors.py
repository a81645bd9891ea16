"""Bad input gets a clear exception naming the argument, what was expected and what was given:
ValueError for values and shapes, TypeError for types, DeviceMismatchError for devices."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend.device import check_device

# ----------------------------------------------------------------------------- model input


def test_feature_count_mismatch_names_expected_count(device, rng):
    model = gn.mlp([4, 8, 3], seed=0).to(device)
    x = device.send(rng.standard_normal((5, 6)).astype(np.float32))
    with pytest.raises(ValueError, match=r"x has 6 features .*expects 4"):
        model.forward(x)


def test_linear_feature_count_mismatch(device, rng):
    layer = gn.Linear(4, 3, seed=0).to(device)
    x = device.send(rng.standard_normal((5, 6)).astype(np.float32))
    with pytest.raises(ValueError, match=r"expects x with 4 features, got x\.shape == \(5, 6\)"):
        layer.forward(x)


def test_model_input_must_be_two_dimensional(device):
    model = gn.mlp([4, 8, 3], seed=0).to(device)
    with pytest.raises(ValueError, match=r"x must have shape \(N, features\), got shape \(4,\)"):
        model.forward(device.send(np.ones(4, np.float32)))


def test_python_list_input_names_x():
    model = gn.mlp([2, 3, 2], seed=0)
    with pytest.raises(TypeError, match=r"x must be a NumPy or CuPy array .*got list"):
        model.forward([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match=r"x must be a NumPy or CuPy array"):
        gn.Linear(2, 3).forward([[1.0, 2.0]])


def test_float64_input_into_float32_model_suggests_astype(device, rng):
    model = gn.mlp([4, 8, 3], seed=0).to(device)
    x = device.send(rng.standard_normal((5, 4)))  # float64
    with pytest.raises(TypeError, match=r"x has dtype float64 .*float32.*x\.astype\('float32'\)"):
        model.forward(x)
    with pytest.raises(TypeError, match=r"astype"):
        model[0].forward(x)


def test_linear_backward_rejects_wrong_dy_shape(device, rng):
    layer = gn.Linear(4, 3, dtype="float64", seed=0).to(device)
    layer.forward(device.send(rng.standard_normal((5, 4))))
    with pytest.raises(ValueError, match=r"expects dy of shape \(5, 3\), got \(5, 4\)"):
        layer.backward(device.send(np.ones((5, 4))))
    with pytest.raises(ValueError, match=r"expects dy of shape \(5, 3\)"):
        layer.backward(device.send(np.ones((3, 3))))


def test_linear_backward_before_forward():
    with pytest.raises(RuntimeError, match=r"backward called before forward"):
        gn.Linear(2, 2).backward(np.ones((1, 2), np.float32))


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match=r"layers\[1\] must be a gpunn layer"):
        gn.Sequential(gn.Linear(2, 2), "relu")


# ----------------------------------------------------------------------------- devices


def test_check_device_names_both_devices():
    x = np.ones((2, 2), np.float32)
    with pytest.raises(gn.DeviceMismatchError, match=r"x is on cpu but the model is on cuda:0") as info:
        check_device(x, gn.Device("cuda", 0), "x", "the model")
    assert isinstance(info.value, TypeError)
    assert "gn.to_device(x, 'cuda:0')" in str(info.value)


@pytest.mark.gpu
def test_gpu_input_into_cpu_model(gpu, rng):
    model = gn.mlp([4, 8, 3], seed=0)
    x = gpu.send(rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(gn.DeviceMismatchError, match=r"x is on cuda:0 but .*cpu"):
        model.forward(x)


@pytest.mark.gpu
def test_cpu_input_into_gpu_model(gpu, rng):
    model = gn.mlp([4, 8, 3], seed=0).to(gpu)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(gn.DeviceMismatchError, match=r"x is on cpu but .*cuda:0"):
        model.forward(x)


@pytest.mark.gpu
def test_labels_on_other_device_than_logits(gpu, rng):
    logits = gpu.send(rng.standard_normal((5, 3)))
    t = np.array([0, 1, 2, 0, 1])
    with pytest.raises(gn.DeviceMismatchError, match=r"t is on cpu but logits is on cuda:0"):
        gn.SoftmaxWithLoss().forward(logits, t)


# ----------------------------------------------------------------------------- labels and targets


def test_labels_out_of_range(device, rng):
    logits = device.send(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\).*max 3"):
        gn.SoftmaxWithLoss().forward(logits, device.send(np.array([0, 1, 2, 3])))
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\).*min -1"):
        gn.SoftmaxWithLoss().forward(logits, device.send(np.array([0, -1, 2, 1])))


def test_float_labels_are_a_type_error(device, rng):
    logits = device.send(rng.standard_normal((4, 3)))
    with pytest.raises(TypeError, match=r"t must hold integer class labels, got dtype float64"):
        gn.SoftmaxWithLoss().forward(logits, device.send(np.array([0.0, 1.0, 2.0, 1.0])))


def test_logits_and_labels_of_different_n(device, rng):
    logits = device.send(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match=r"different numbers of samples.*\(4, 3\).*\(5,\)"):
        gn.SoftmaxWithLoss().forward(logits, device.send(np.array([0, 1, 2, 1, 0])))


def test_one_hot_of_wrong_width(rng):
    with pytest.raises(ValueError, match=r"one-hot targets of shape \(4, 3\), got \(4, 2\)"):
        gn.SoftmaxWithLoss().forward(rng.standard_normal((4, 3)), np.eye(2)[[0, 1, 0, 1]])


def test_loss_targets_must_be_arrays(rng):
    with pytest.raises(TypeError, match=r"t must be a NumPy or CuPy array, got list"):
        gn.SoftmaxWithLoss().forward(rng.standard_normal((2, 3)), [0, 1])
    with pytest.raises(TypeError, match=r"y must be a NumPy or CuPy array, got list"):
        gn.MSELoss().forward([1.0, 2.0], np.ones(2))


def test_mse_shape_mismatch(rng):
    with pytest.raises(ValueError, match=r"t must have the shape of y \(4, 2\), got \(4, 3\)"):
        gn.MSELoss().forward(rng.standard_normal((4, 2)), rng.standard_normal((4, 3)))


def test_bce_targets_outside_unit_interval(rng):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\].*max 2"):
        gn.SigmoidBCELoss().forward(rng.standard_normal(3), np.array([0.0, 1.0, 2.0]))


# ----------------------------------------------------------------------------- gradcheck


def test_gradcheck_rejects_nan_input(rng):
    x = rng.standard_normal((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"gradcheck: x contains NaN"):
        gn.gradcheck(gn.Linear(4, 2, dtype="float64"), x)


def test_gradcheck_rejects_infinite_loss_input(rng):
    y = rng.standard_normal((3, 2))
    y[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"gradcheck: y contains NaN or infinity"):
        gn.gradcheck(gn.MSELoss(), (y, np.zeros((3, 2))))


def test_gradcheck_rejects_float32_input(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match=r"gradcheck: x has dtype float32; numerical checks need float64"):
        gn.gradcheck(gn.Tanh(), x)


def test_gradcheck_rejects_float32_parameters(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(TypeError, match=r"gradcheck: W has dtype float32"):
        gn.gradcheck(gn.Linear(4, 2), x)


def test_gradcheck_rejects_function_with_wrong_gradient_count(rng):
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    with pytest.raises(ValueError, match=r"f returned 1 gradients for 2 inputs"):
        gn.gradcheck(lambda u, v: (float(u @ v), [v]), [a, b])


def test_gradcheck_rejects_unknown_target(rng):
    with pytest.raises(TypeError, match=r"target must be a layer, model, loss, regularizer or function"):
        gn.gradcheck(42, rng.standard_normal(3))


# ----------------------------------------------------------------------------- constructors


def test_mlp_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; expected one of 'relu'.*'tanh'"):
        gn.mlp([4, 8, 3], activation="swish")


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        pytest.param(lambda: gn.Dropout(p=1.5), ValueError, r"p must be < 1\.0, got 1\.5", id="Dropout-p-1.5"),
        pytest.param(lambda: gn.Dropout(p=1.0), ValueError, r"p must be < 1\.0", id="Dropout-p-1"),
        pytest.param(lambda: gn.Dropout(p=-0.1), ValueError, r"p must be >= 0\.0", id="Dropout-p-negative"),
        pytest.param(lambda: gn.Dropout(p=float("nan")), ValueError, r"p must be finite", id="Dropout-p-nan"),
        pytest.param(lambda: gn.Dropout(p="0.5"), TypeError, r"p must be a real number", id="Dropout-p-str"),
        pytest.param(lambda: gn.L2(-1), ValueError, r"lam must be >= 0\.0, got -1\.0", id="L2-negative"),
        pytest.param(lambda: gn.L2(float("nan")), ValueError, r"lam must be finite, got nan", id="L2-nan"),
        pytest.param(lambda: gn.L2(float("inf")), ValueError, r"lam must be finite", id="L2-inf"),
        pytest.param(lambda: gn.L1(-0.5), ValueError, r"lam must be >= 0\.0", id="L1-negative"),
        pytest.param(lambda: gn.L2(True), TypeError, r"lam must be a real number", id="L2-bool"),
        pytest.param(
            lambda: gn.LeakyReLU(negative_slope=-1),
            ValueError,
            r"negative_slope must be >= 0\.0, got -1\.0",
            id="LeakyReLU-negative-slope",
        ),
        pytest.param(
            lambda: gn.LeakyReLU(negative_slope=float("inf")),
            ValueError,
            r"negative_slope must be finite",
            id="LeakyReLU-inf-slope",
        ),
        pytest.param(lambda: gn.Linear(0, 3), ValueError, r"n_in must be >= 1, got 0", id="Linear-n_in-0"),
        pytest.param(lambda: gn.Linear(3, -2), ValueError, r"n_out must be >= 1, got -2", id="Linear-n_out-negative"),
        pytest.param(lambda: gn.Linear(3.0, 3), TypeError, r"n_in must be an integer", id="Linear-n_in-float"),
        pytest.param(
            lambda: gn.Linear(3, 3, dtype="int32"),
            ValueError,
            r"dtype must be 'float32' or 'float64', got 'int32'",
            id="Linear-int32",
        ),
        pytest.param(
            lambda: gn.Linear(3, 3, dtype="float16"),
            ValueError,
            r"dtype must be 'float32' or 'float64'",
            id="Linear-float16",
        ),
        pytest.param(
            lambda: gn.Linear(3, 3, init="bogus"),
            ValueError,
            r"unknown init 'bogus'; expected one of 'he', 'xavier'",
            id="Linear-bogus-init",
        ),
        pytest.param(lambda: gn.Linear(3, 3, seed="x"), TypeError, r"seed must be an int", id="Linear-str-seed"),
        pytest.param(lambda: gn.mlp([4, 8, 3], dropout=1.0), ValueError, r"dropout must be < 1\.0", id="mlp-dropout-1"),
        pytest.param(
            lambda: gn.mlp([4]), ValueError, r"sizes must list at least an input and an output size", id="mlp-one-size"
        ),
        pytest.param(lambda: gn.mlp([4, 0, 3]), ValueError, r"sizes\[1\] must be >= 1, got 0", id="mlp-zero-size"),
        pytest.param(
            lambda: gn.mlp([4, 8, 3], dtype="int64"),
            ValueError,
            r"dtype must be 'float32' or 'float64'",
            id="mlp-int64",
        ),
    ],
)
def test_bad_hyperparameters(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_parameter_requires_an_array():
    with pytest.raises(TypeError, match=r"Parameter data must be a NumPy or CuPy array, got list"):
        gn.Parameter([1.0, 2.0])


def test_regularizer_rejects_non_parameters():
    with pytest.raises(TypeError, match=r"params\[0\] must be a gpunn Parameter, got ndarray"):
        gn.L2(0.1).forward([np.ones(3)])
