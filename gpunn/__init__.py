"""gpunn: a small, fast neural-network library; one code path on NumPy (CPU) and CuPy (GPU)."""

from . import distributed, optim
from .backend.device import (
    Device,
    DeviceMismatchError,
    DeviceUnavailableError,
    StepCaptureError,
    array_module,
    available_devices,
    device,
    device_of,
    gpu_available,
    matmul_precision,
    set_matmul_precision,
    to_device,
    to_numpy,
    why_cpu,
)
from .io import checkpoint
from .io.checkpoint import CheckpointError, load, save
from .nn.activations import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .nn.functional import log_softmax, sigmoid, softmax
from .nn.gradcheck import gradcheck, gradient_errors
from .nn.layers import Dropout, Layer, Linear
from .nn.losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from .nn.parameter import Parameter
from .nn.regularizers import L1, L2, Regularizer
from .nn.sequential import Sequential, mlp
from .train import data
from .train.history import Diagnosis, History, diagnose
from .train.plots import plot_history
from .train.trainer import Trainer, TrainingDivergedError

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "CheckpointError",
    "Device",
    "DeviceMismatchError",
    "DeviceUnavailableError",
    "Diagnosis",
    "Dropout",
    "History",
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
    "StepCaptureError",
    "Tanh",
    "Trainer",
    "TrainingDivergedError",
    "__version__",
    "array_module",
    "available_devices",
    "checkpoint",
    "data",
    "device",
    "device_of",
    "diagnose",
    "distributed",
    "gpu_available",
    "gradcheck",
    "gradient_errors",
    "load",
    "log_softmax",
    "matmul_precision",
    "mlp",
    "optim",
    "plot_history",
    "save",
    "set_matmul_precision",
    "sigmoid",
    "softmax",
    "to_device",
    "to_numpy",
    "why_cpu",
]
