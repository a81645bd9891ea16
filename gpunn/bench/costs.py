"""What a ``gpunn bench`` step costs besides its time: FLOPs, memory, and on a GPU kernel launches."""

from __future__ import annotations

import itertools
import tracemalloc

from ..optim import OPTIMIZERS
from .steps import Case, gpunn_step


def flops_per_step(sizes: tuple[int, ...], batch: int) -> int:
    """Matrix-product FLOPs of one step: forward 2·N·in·out per Linear, backward 4·N·in·out,
    minus the first layer's input gradient (2·N·in·out), which training never needs."""
    pairs = list(itertools.pairwise(sizes))
    return sum(6 * batch * i * o for i, o in pairs) - 2 * batch * pairs[0][0] * pairs[0][1]


def minimum_bytes(sizes: tuple[int, ...], batch: int, optimizer: str, itemsize: int = 4) -> int:
    """The memory a step cannot do without: parameters, gradients, optimizer state, one
    activation per layer output, and the batch (inputs and int64 labels)."""
    n_params = sum(i * o + o for i, o in itertools.pairwise(sizes))
    state = len(OPTIMIZERS[optimizer].state_names)
    return itemsize * (n_params * (2 + state) + batch * sum(sizes)) + 8 * batch


def peak_step_bytes(case: Case, optimizer: str, steps: int = 3) -> int | None:
    """Peak bytes held while training with the gpunn step (model, state and batch included):
    tracemalloc's peak on the CPU; on a GPU, the blocks CuPy's pool holds after a few steps."""
    if case.device.kind == "cpu":
        tiny, _ = gpunn_step(Case(case.device, "T1", 2), optimizer)
        tiny()  # one-time allocations of a first step (lazy imports, caches) are not the model's
        del tiny
        tracemalloc.start()
        try:
            step, _ = gpunn_step(case, optimizer)
            step()
            # the high-water mark of training, not of building the model (weights are drawn in
            # float64 before rounding); what the model holds stays counted
            tracemalloc.reset_peak()
            for _ in range(steps):
                step()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    pool = case.device.xp.get_default_memory_pool()
    with case.device:
        step, model = gpunn_step(case, optimizer)
        step()
        case.device.synchronize()
        pool.free_all_blocks()  # drop the cached blocks that building the model left behind
        for _ in range(steps):
            step()
        case.device.synchronize()
        peak = pool.total_bytes()  # blocks held by the pool: what the step needed at its peak
        del step, model
        pool.free_all_blocks()
    return int(peak)


def count_launches(case: Case, optimizer: str, steps: int = 5) -> float | None:
    """CUDA kernel launches (and copies) per gpunn step, counted by PyTorch's CUPTI-based
    profiler, which sees every kernel in the process; None on the CPU or without torch."""
    if case.device.kind != "cuda":
        return None
    try:
        from torch.autograd import DeviceType  # noqa: PLC0415
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    except ImportError:
        return None
    with case.device:
        step, _ = gpunn_step(case, optimizer)
        step()
        case.device.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            case.device.synchronize()
    try:  # the raw Kineto events where this torch exposes them, else the CUDA-side function events
        count = sum(1 for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA)
    except AttributeError:
        count = sum(1 for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA)
    return count / steps or None
