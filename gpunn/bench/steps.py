"""The training steps ``gpunn bench`` times, each a no-argument callable built ready to run: for
a :class:`Case` (device, model, batch), one float32 step (forward, softmax-with-loss, backward,
update) of each framework from the same weights and data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import threadpoolctl

import gpunn as gn

from ..backend import selection
from ..backend.device import Device, matmul_precision, to_numpy
from ..backend.ops import NumpyOps
from ..optim import create
from ..train.graph import StepGraph
from . import handwritten

MODELS: dict[str, tuple[int, ...]] = {
    "T1": (784, 100, 10),  # launch- and overhead-bound
    "T2": (784, 1024, 1024, 10),
    "W1": (1024, 4096, 4096, 1024),  # matrix-product-bound
}


@dataclass(frozen=True)
class Case:
    """One measured configuration: a device, a model of ``MODELS`` and a batch size."""

    device: Device
    model: str
    batch: int


Step = Callable[[], Any]  # one training step (or reference) per call, on prebuilt buffers


def _data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """x (N, in) float32 and t (N,) int64 labels, the same for every framework."""
    sizes = MODELS[case.model]
    rng = np.random.default_rng(1)
    return rng.standard_normal((case.batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], case.batch)


def _trainer_step(case: Case, optimizer: str, validate: bool = False) -> tuple[Callable[[Any, Any], Any], Any, Any]:
    """(step(x, t) -> loss, model, optimizer): forward, softmax-with-loss, backward, update.
    ``validate`` False as Trainer.fit steps (labels checked once, before the fit; here valid by
    construction), True as a user's own loop at the defaults (labels checked on every call)."""
    with case.device:
        model = gn.mlp(list(MODELS[case.model]), seed=0).to(case.device)
        criterion = gn.SoftmaxWithLoss(validate=validate)
        opt = create(optimizer, model.parameters())

    def step(xb: Any, yb: Any) -> Any:
        loss = criterion.forward(model.forward(xb), yb)
        model.backward(criterion.backward())
        opt.step()
        return loss

    return step, model, opt


def gpunn_step(case: Case, optimizer: str, validate: bool = False) -> tuple[Step, Any]:
    """gpunn's training step on the case's device as Trainer.fit runs it (``validate`` as in
    :func:`_trainer_step`), and its model."""
    step, model, _ = _trainer_step(case, optimizer, validate)
    x, t = (case.device.send(a) for a in _data(case))
    return (lambda: step(x, t)), model


def reference_step(case: Case, optimizer: str) -> Step | None:
    """gpunn's step as :func:`gpunn_step`, computed by the reference Ops (``GPUNN_OPS=reference``
    for this step alone): what the device's accelerated Ops gain. None where the device has no
    other Ops than the reference."""
    if type(selection.ops_for(case.device)) is NumpyOps:
        return None
    step, _ = gpunn_step(case, optimizer)  # building asks no Ops: running does

    def run() -> Any:
        with selection.using("reference"):
            return step()

    return run


def handwritten_runs(case: Case, optimizer: str) -> bool:
    """Whether the hand-written NumPy loop (and the user's own loop compared with it) runs for
    ``case``: on the CPU, with SGD or Adam."""
    return case.device.kind == "cpu" and optimizer in handwritten.OPTIMIZERS


def user_loop_step(case: Case, optimizer: str) -> Step | None:
    """The README's step-by-step training loop with the public API at its defaults, SGD or Adam:
    what a user's own loop runs at. None where the hand-written loop it is compared with does not run."""
    if not handwritten_runs(case, optimizer):
        return None
    return gpunn_step(case, optimizer, validate=True)[0]


def graph_step(case: Case, optimizer: str) -> StepGraph | None:
    """gpunn's step captured as a CUDA graph (``Trainer(graph=True)``): ``.step()`` replays it;
    ``.failed`` says why a capture failed (it then trains eagerly: no replay figure). None on
    the CPU."""
    if case.device.kind == "cpu":
        return None
    step, _, opt = _trainer_step(case, optimizer)
    x, t = (case.device.send(a) for a in _data(case))
    with case.device:
        return StepGraph(lambda xb, yb: (step(xb, yb), None), opt, x, t, case.batch, case.device)


def numpy_step(case: Case, optimizer: str, model: Any) -> Step | None:
    """The hand-written NumPy step (CPU; SGD or Adam) from the same initial weights."""
    if not handwritten_runs(case, optimizer):
        return None
    x, t = _data(case)
    linears = [layer for layer in model if hasattr(layer, "W")]
    weights, biases = [to_numpy(lin.W.data) for lin in linears], [to_numpy(lin.b.data) for lin in linears]
    net = handwritten.HandwrittenMLP(weights, biases, optimizer)
    return lambda: net.train_step(x, t)


# torch.optim's rule and arguments for each of gpunn's optimizers, at gpunn's defaults
TORCH_OPTIMIZERS = {
    "sgd": ("SGD", {"lr": 0.01}),
    "momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "nesterov": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adagrad": ("Adagrad", {"lr": 0.01}),
    "rmsprop": ("RMSprop", {"lr": 0.01}),
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3}),
}


def torch_step(case: Case, optimizer: str, model: Any) -> Step | None:
    """PyTorch eager with the same shapes, weights, loss and optimizer, or None without torch."""
    try:
        import torch  # noqa: PLC0415 — an optional baseline
    except ImportError:
        return None
    target = "cpu" if case.device.kind == "cpu" else f"cuda:{case.device.index}"
    # the same float32 precision on both sides: strict FP32 unless TF32 was asked for
    torch.backends.cuda.matmul.allow_tf32 = matmul_precision() == "tf32"
    threads = blas_threads()
    if threads:
        torch.set_num_threads(threads)  # as many CPU threads as NumPy's BLAS uses
    layers: list[Any] = []
    for lin in (layer for layer in model if hasattr(layer, "W")):
        module = torch.nn.Linear(lin.n_in, lin.n_out)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(to_numpy(lin.W.data).T.copy()))
            module.bias.copy_(torch.from_numpy(to_numpy(lin.b.data)))
        layers += [module, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1]).to(target)  # no ReLU after the last Linear
    rule, arguments = TORCH_OPTIMIZERS[optimizer]
    opt = getattr(torch.optim, rule)(net.parameters(), **arguments)
    xt, tt = (torch.from_numpy(a).to(target) for a in _data(case))
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = criterion(net(xt), tt)
        loss.backward()
        opt.step()
        return loss

    return step


def blas_threads() -> int | None:
    """Threads of the BLAS NumPy uses (None when threadpoolctl cannot tell)."""
    blas = threadpoolctl.threadpool_info()
    counts = [lib["num_threads"] for lib in blas if lib.get("user_api") == "blas" and lib.get("num_threads")]
    return counts[0] if counts else None
