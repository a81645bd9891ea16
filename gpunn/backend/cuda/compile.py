"""CuPy ``RawModule`` machinery shared by gpunn's fused kernels: compile, cache, launch.

CUDA C source templated on the element type ``T`` is compiled by NVRTC once per device and
source, every kernel instantiated for float and double. Kernels are grid-stride loops over
:func:`grid` blocks. Launch arguments must have exactly the C types: a RawKernel passes NumPy
scalars by their own type, and an optional pointer is :data:`NULL`.

Contraction is allowed in every kernel (NVRTC's default ``--fmad=true``): ``y += a*x`` is one
fused multiply-add where the reference rounds ``a*x`` first; faster, never less accurate, and
bitwise agreement is out of reach anyway (CUDA's exp, log, tanh… are not the host libm's). The
kernels promise a bound instead: each output within a few ulps of the *magnitude of the terms
it was computed from* (for y + a·x: |y| + |a·x|), not of the result, which cancellation can
make as small as it likes (``tests/tolerances.py``, ``assert_within_term_bound``). Bit-for-bit
agreement is the promise between the CPU's Ops only (NumbaOps and the reference).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..device import array_module

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65_535
NULL = np.uint64(0)  # a null device pointer as a RawKernel argument (None would not be 0)
_CTYPES = {np.dtype("float32"): "float", np.dtype("float64"): "double"}
_modules: dict[tuple[int, str], Any] = {}


def compiled(xp: Any, source: str, names: tuple[str, ...]) -> Any:
    """The RawModule of ``source`` for the current GPU, with every kernel in ``names``
    instantiated for float and double; compiled by NVRTC once per device and source."""
    key = (xp.cuda.Device().id, source)
    module = _modules.get(key)
    if module is None:
        expressions = [f"{k}<{c}>" for k in names for c in _CTYPES.values()]
        module = xp.RawModule(code=source, options=("--std=c++17",), name_expressions=expressions)
        _modules[key] = module
    return module


def kernel(xp: Any, source: str, names: tuple[str, ...], name: str, dtype: Any) -> Any:
    """Kernel ``name`` of ``source`` for elements of ``dtype`` (float32 or float64), or the plain
    extern "C" kernel ``name`` when ``dtype`` is None."""
    instance = name if dtype is None else f"{name}<{_CTYPES[np.dtype(dtype)]}>"
    return compiled(xp, source, names).get_function(instance)


def grid(n: int, per_block: int = THREADS_PER_BLOCK) -> tuple[int]:
    """Blocks for a grid-stride loop over n elements (or tiles), ``per_block`` to a block."""
    return (max(1, min(MAX_BLOCKS, -(-n // per_block))),)


def is_gpu(x: Any) -> bool:
    """Whether ``x`` lives on a GPU (is not a NumPy array)."""
    return array_module(x) is not np  # NumPy arrays answer at once (array_module's fast path)


def is_capturing(x: Any) -> bool:
    """Whether the current CUDA stream of ``x``'s device is capturing a graph (False on the CPU):
    kernels launched now are recorded, not run."""
    return is_gpu(x) and bool(array_module(x).cuda.get_current_stream().is_capturing())


def stream_id(x: Any) -> int:
    """The handle of the CUDA stream current for ``x``'s device (0, the null stream, on the CPU):
    work queued on one stream runs in order, work on two streams may overlap. Every thread's
    per-thread default stream has one handle (``cudaStreamPerThread``) yet is its own stream:
    it is told apart by the thread (negated, so no handle can equal it), as CuPy's pool does."""
    if not is_gpu(x):
        return 0
    cuda = array_module(x).cuda
    ptr = int(cuda.get_current_stream().ptr)
    return -threading.get_ident() if ptr == cuda.runtime.streamPerThread else ptr


def check_flat(*buffers: Any) -> None:
    """Refuse anything but contiguous 1-D buffers: a kernel indexes them as plain arrays."""
    for b in buffers:
        if b.ndim != 1 or not b.flags.c_contiguous:
            raise ValueError("fused updates need contiguous 1-D buffers")


def device_pointer(buffer: Any, size: int, what: str) -> Any:
    """The launch argument of an optional ``const double*``: the device array, or NULL for None."""
    if buffer is None:
        return NULL
    if not is_gpu(buffer) or buffer.dtype != np.float64 or buffer.size < size or not buffer.flags.c_contiguous:
        raise ValueError(
            f"{what} must be a contiguous float64 device array of at least {size} element(s), got "
            f"{type(buffer).__name__} of dtype {getattr(buffer, 'dtype', None)}, size {getattr(buffer, 'size', None)}"
        )
    return buffer


# ----------------------------------------------------------------------------- holding the device

# One thread that polls the GPU's nanosecond global timer until ``ns`` have passed (sm_70+):
# work queued behind it starts back to back once it ends, however slowly the host queued it.
SPIN_SOURCE = r"""
extern "C" __global__ void gpunn_spin(unsigned long long ns, unsigned long long max_polls) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    for (unsigned long long polls = 0; polls < max_polls; ++polls) {  // a stalled timer cannot hang the GPU
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (now - start >= ns) break;
    }
}
"""
_spin_kernels: dict[int, Any] = {}
MAX_SPIN_SECONDS = 2.0


def spin(xp: Any, seconds: float) -> None:
    """Keep the current GPU busy for ``seconds`` (at most ``MAX_SPIN_SECONDS``) on the current
    stream, the host not waiting: what it queues meanwhile then runs with no gaps between
    launches, so CUDA events around it time the device's work alone."""
    index = xp.cuda.Device().id
    kernel = _spin_kernels.get(index)
    if kernel is None:
        kernel = _spin_kernels[index] = xp.RawKernel(SPIN_SOURCE, "gpunn_spin")
    seconds = min(max(0.0, seconds), MAX_SPIN_SECONDS)
    # a poll takes well over 1 ns, so this many polls outlast the wanted time on any GPU
    kernel((1,), (1,), (np.uint64(seconds * 1e9), np.uint64(seconds * 1e9 + 1)))
