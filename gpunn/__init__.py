"""gpunn: a small, fast neural-network library; one code path on NumPy (CPU) and CuPy (GPU)."""

from . import optim
from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .backend import (
    Device,
    DeviceMismatchError,
    DeviceUnavailableError,
    array_module,
    available_devices,
    device,
    device_of,
    gpu_available,
    to_device,
    to_numpy,
    why_cpu,
)
from .functional import log_softmax, sigmoid, softmax
from .gradcheck import gradcheck, gradient_errors
from .layers import Dropout, Layer, Linear
from .losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from .parameter import Parameter
from .regularizers import L1, L2, Regularizer
from .sequential import Sequential, mlp

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "Device",
    "DeviceMismatchError",
    "DeviceUnavailableError",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "Linear",
    "Loss",
    "MSELoss",
    "Parameter",
    "ReLU",
    "Regularizer",
    "Sequential",
    "Sigmoid",
    "SigmoidBCELoss",
    "Softmax",
    "SoftmaxWithLoss",
    "Tanh",
    "__version__",
    "array_module",
    "available_devices",
    "device",
    "device_of",
    "gpu_available",
    "gradcheck",
    "gradient_errors",
    "log_softmax",
    "mlp",
    "optim",
    "sigmoid",
    "softmax",
    "to_device",
    "to_numpy",
    "why_cpu",
]
