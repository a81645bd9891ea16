"""The steps ``gpunn bench`` times, each a no-argument callable built ready to run.

For a :class:`Case` (device, model in ``MODELS``, batch), one float32 training step (forward,
softmax-with-loss, backward, optimizer update) of every framework from the same initial
weights and data: gpunn as Trainer.fit steps (:func:`gpunn_step`), gpunn replayed as a CUDA graph
(:func:`graph_step`), the hand-written NumPy loop (:func:`numpy_step`) and PyTorch eager
(:func:`torch_step`). Beside them the two references the figures are taken against: the
device's matrix-product ceiling, an n×n·n×n product (:func:`matmul_step`), and the step's
matrix products alone with the step's shapes (:func:`products_step`). :mod:`gpunn.bench`
times and reports them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend.device import Device, matmul_precision, to_numpy
from ..nn.losses import SoftmaxWithLoss
from ..nn.sequential import mlp
from ..optim import create
from ..train.cpu_step import compile_step
from ..train.graph import StepGraph
from .handwritten import HandwrittenMLP

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


# ----------------------------------------------------------------------------- the training steps


def _data(case: Case, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.batch, sizes[0])).astype(np.float32)
    t = rng.integers(0, sizes[-1], case.batch)
    return x, t


def gpunn_step(case: Case, optimizer: str) -> tuple[Step, Any]:
    """A gpunn training step on the case's device, as Trainer.fit runs it (compiled on the
    CPU, :mod:`gpunn.cpu_step`; layer by layer on a GPU); returns it and the model."""
    sizes = MODELS[case.model]
    x, t = _data(case, sizes)
    dev = case.device
    with dev:
        model = mlp(list(sizes), seed=0).to(dev)
        xd, td = dev.send(x), dev.send(t)
        criterion = SoftmaxWithLoss(validate=False)  # labels are valid by construction
        opt = create(optimizer, model.parameters())
    compiled = compile_step(model, criterion, opt, None) if dev.kind == "cpu" else None
    if compiled is not None:
        return (lambda: compiled(xd, td)), model

    def step() -> Any:
        loss = criterion.forward(model.forward(xd), td)
        model.backward(criterion.backward(), input_grad=False)
        opt.step()
        return loss

    return step, model


def graph_step(case: Case, optimizer: str) -> StepGraph | None:
    """The gpunn step captured once as a CUDA graph (``Trainer(graph=True)``'s step), from the
    same initial weights: ``.step()`` replays one step, and ``.failed`` holds why the capture
    failed when it did (it then trains eagerly, which is no replay figure). None on the CPU,
    where there is nothing to replay."""
    if case.device.kind == "cpu":
        return None
    sizes = MODELS[case.model]
    x, t = _data(case, sizes)
    dev = case.device
    with dev:
        model = mlp(list(sizes), seed=0).to(dev)
        criterion = SoftmaxWithLoss(validate=False)
        opt = create(optimizer, model.parameters())

        def body(xb: Any, yb: Any) -> tuple[Any, Any]:
            loss = criterion.forward(model.forward(xb), yb)
            model.backward(criterion.backward(), input_grad=False)
            opt.step()
            return loss, None

        return StepGraph(body, opt, dev.send(x), dev.send(t), case.batch, dev)


def numpy_step(case: Case, optimizer: str, model: Any) -> Step | None:
    """The hand-written NumPy step (CPU, Adam only) from the same initial weights."""
    if case.device.kind != "cpu" or optimizer != "adam":
        return None
    sizes = MODELS[case.model]
    x, t = _data(case, sizes)
    linears = [layer for layer in model if hasattr(layer, "W")]
    net = HandwrittenMLP([to_numpy(lin.W.data) for lin in linears], [to_numpy(lin.b.data) for lin in linears])
    return lambda: net.train_step(x, t)


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
    sizes = MODELS[case.model]
    x, t = _data(case, sizes)
    layers: list[Any] = []
    linears = [layer for layer in model if hasattr(layer, "W")]
    for i, lin in enumerate(linears):
        module = torch.nn.Linear(lin.n_in, lin.n_out)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(to_numpy(lin.W.data).T.copy()))
            module.bias.copy_(torch.from_numpy(to_numpy(lin.b.data)))
        layers.append(module)
        if i < len(linears) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers).to(target)
    params = net.parameters()
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.01),
        "momentum": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        "nesterov": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=0.01),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=0.01),
        "adam": lambda: torch.optim.Adam(params, lr=1e-3),
        "adamw": lambda: torch.optim.AdamW(params, lr=1e-3),
    }[optimizer]()
    xt, tt = torch.from_numpy(x).to(target), torch.from_numpy(t).to(target)
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
    from ..cli.sysinfo import blas_info  # noqa: PLC0415

    counts = [lib["threads"] for lib in blas_info() if lib.get("threads")]
    return counts[0] if counts else None


# ----------------------------------------------------------------------------- the references


def ceiling_size(dev: Device) -> int:
    """Side of the square matrices whose product defines the ceiling (big enough to be
    compute-bound: 2048 on a CPU, 8192 on a GPU)."""
    return 2048 if dev.kind == "cpu" else 8192


def matmul_step(dev: Device, n: int | None = None) -> Step:
    """One n×n·n×n float32 matrix product into a preallocated output: the ceiling's step."""
    n = n or ceiling_size(dev)
    xp = dev.xp
    with dev:
        rng = np.random.default_rng(0)
        a = dev.send(rng.standard_normal((n, n), dtype=np.float32))
        b = dev.send(rng.standard_normal((n, n), dtype=np.float32))
        out = xp.empty((n, n), dtype=np.float32)
    return lambda: xp.matmul(a, b, out=out)


def products_step(case: Case) -> Step:
    """The matrix products of one training step alone, with the step's shapes, into
    preallocated outputs: forward x·W per layer, backward xᵀ·dz for every layer and dz·Wᵀ for
    all but the first. The step's time over this is what everything else costs."""
    sizes = MODELS[case.model]
    dev, n = case.device, case.batch
    xp = dev.xp
    rng = np.random.default_rng(0)
    with dev:
        weights = [dev.send(rng.standard_normal((i, o), dtype=np.float32)) for i, o in itertools.pairwise(sizes)]
        acts = [dev.send(rng.standard_normal((n, width), dtype=np.float32)) for width in sizes]
        grads = [xp.empty_like(w) for w in weights]
        outs = [xp.empty((n, width), dtype=np.float32) for width in sizes]

    def step() -> None:
        for i, w in enumerate(weights):
            xp.matmul(acts[i], w, out=outs[i + 1])
        for i in range(len(weights) - 1, -1, -1):
            xp.matmul(acts[i].T, acts[i + 1], out=grads[i])
            if i > 0:
                xp.matmul(acts[i + 1], weights[i].T, out=outs[i])

    return step
