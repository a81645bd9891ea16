"""The communicator of data-parallel training: MPI (mpi4py) between processes, NCCL for GPU arrays.

``mpiexec -n K python train.py`` starts K processes, the *ranks*; with GPUs, one per GPU (rank r
on ``cuda:<local rank>``). NumPy arrays travel through MPI; CuPy arrays through NCCL, else staged
through the host. mpi4py is imported only when a launcher started this process or a
:class:`Communicator` is built on MPI, so ``import gpunn`` never starts MPI.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import device as backend
from ..backend.device import CPU, Device, DeviceUnavailableError, device_of

ABORT_GRACE_SECONDS = 0.3  # before MPI_Abort, for the launcher to forward the last words

# (rank, size, local rank) variables of MPICH/Intel MPI (Hydra), Open MPI, MVAPICH2 and PMIx/Slurm
_LAUNCHER_ENV = (
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
    ("PMIX_RANK", "SLURM_NTASKS", "SLURM_LOCALID"),
)


class DistributedMismatchError(ValueError):
    """Ranks disagree on something that must be equal (model, batch size, data, ...). Raised on
    every rank at the same point (each sees all ranks' values), so no rank is left waiting in a
    collective; ``collective`` says so."""

    collective = True


@dataclass(frozen=True)
class Layout:
    """Where this process sits: ``rank`` of ``size``, and ``local_rank`` on its node."""

    rank: int
    size: int
    local_rank: int


def env_layout() -> Layout | None:
    """The launcher's view of this process from its environment variables, or None when no
    MPI launcher started it. Never imports mpi4py."""
    env = os.environ
    for rank_var, size_var, local_var in _LAUNCHER_ENV:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
                local = int(env.get(local_var, rank))
            except ValueError:
                continue
            return Layout(rank, size, local)
    return None


def is_launched() -> bool:
    """True when an MPI launcher started this process with more than one rank (then a
    Trainer distributes itself unless told ``distributed=False``)."""
    layout = env_layout()
    return layout is not None and layout.size > 1


class Communicator:
    """Collectives on NumPy and CuPy arrays across the ranks of one job: ``rank`` of ``size``,
    ``local_rank`` of ``local_size`` on this node, ``is_root`` (rank 0).

    ``Communicator(mpi_comm)`` wraps an mpi4py communicator; ``Communicator()`` is a lone process
    (rank 0 of 1) that needs no MPI. ``nccl``: True uses NCCL for GPU arrays (error if absent),
    False stages them through the host, None uses NCCL when every rank can load it. NCCL works
    with one rank too, so ``Communicator(nccl=True)`` exercises the GPU path without mpi4py.
    """

    def __init__(self, mpi_comm: Any = None, nccl: bool | None = None) -> None:
        self._mpi = mpi_comm
        self._want_nccl = nccl
        self._gpu_links: dict[int, _NcclLink | None] = {}  # by device index; None: host staging
        if mpi_comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        from mpi4py import MPI  # noqa: PLC0415 — only a communicator on MPI needs it

        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        kind = "MPI" if self._mpi is not None else "single process"
        return f"Communicator({kind}, rank {self.rank} of {self.size}, local rank {self.local_rank})"

    def allreduce(self, x: Any, op: str = "sum") -> Any:
        """x ← op over ranks of x, element-wise and in place ("sum", "max" or "min"); returns x.
        x: a contiguous NumPy or CuPy array, same shape and dtype on every rank."""
        if op not in ("sum", "max", "min"):
            raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}")
        return self._in_place(x, lambda link: link.allreduce(x, op), lambda host: self._mpi_allreduce(host, op))

    def broadcast(self, x: Any, root: int = 0) -> Any:
        """x ← rank ``root``'s x on every rank, in place; returns x."""
        return self._in_place(x, lambda link: link.broadcast(x, root), lambda host: self._mpi.Bcast(host, root=root))

    def _in_place(self, x: Any, on_gpu: Callable[[_NcclLink], None], on_host: Callable[[np.ndarray], None]) -> Any:
        """Run a collective on x in place: ``on_gpu(link)`` through NCCL, else ``on_host`` on x
        (a GPU array staged through the host) over MPI; nothing for a lone process. Checked before
        any transport: a collective that fails on one rank after the others joined it would hang."""
        dev = device_of(x)
        on_gpu_device = dev.kind == "cuda"
        if self.size > 1 and not (
            (on_gpu_device or (isinstance(x, np.ndarray) and x.flags.writeable)) and x.flags.c_contiguous
        ):
            raise ValueError("collectives work in place on contiguous, writable arrays (such as the flat buffers)")
        if on_gpu_device:
            link = self._gpu_link(dev)
            if link is not None:
                on_gpu(link)
            elif self.size > 1:
                host = x.get()
                on_host(host)
                x.set(host)
        elif self.size > 1:
            on_host(x)
        return x

    def _mpi_allreduce(self, x: np.ndarray, op: str) -> None:
        from mpi4py import MPI  # noqa: PLC0415

        self._mpi.Allreduce(MPI.IN_PLACE, x, op=getattr(MPI, op.upper()))  # MPI.SUM, MPI.MAX, MPI.MIN

    def allgather_json(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (anything ``json`` can write), in rank order, on every rank.
        Values travel as JSON text: nothing is unpickled."""
        text = json.dumps(value, sort_keys=True).encode()
        if self._mpi is None:
            return [json.loads(text)]
        from mpi4py import MPI  # noqa: PLC0415

        counts = np.zeros(self.size, dtype=np.int64)
        self._mpi.Allgather(np.array([len(text)], dtype=np.int64), counts)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        self._mpi.Allgatherv(np.frombuffer(text, dtype=np.uint8), [out, counts, displs, MPI.BYTE])
        return [json.loads(out[a : a + c].tobytes()) for a, c in zip(displs, counts, strict=True)]

    def broadcast_bytes(self, payload: bytes | None, root: int = 0) -> bytes:
        """Rank ``root``'s ``payload`` on every rank (others pass None)."""
        if self._mpi is None:
            assert payload is not None
            return payload
        size = np.array([len(payload) if self.rank == root else 0], dtype=np.int64)
        self._mpi.Bcast(size, root=root)
        buf = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root else np.empty(int(size[0]), np.uint8)
        self._mpi.Bcast(buf, root=root)
        return buf.tobytes()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        return bool(self.allreduce(np.array([int(bool(flag))], dtype=np.int64), op="max")[0])

    def barrier(self) -> None:
        if self._mpi is not None:
            self._mpi.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now with exit status ``code`` (MPI_Abort)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self._mpi is not None:
            if self.size > 1:
                # the launcher kills every rank on an abort and may exit before draining their
                # output pipes: a moment's grace lets the message saying why reach the user
                time.sleep(ABORT_GRACE_SECONDS)
            self._mpi.Abort(code)
        os._exit(code)

    def transport(self, dev: Device) -> str:
        """How arrays on ``dev`` travel: "nccl", "host" (GPU staged through MPI), "mpi" or
        "none" (a lone process). Creates the NCCL communicator on first use (collective)."""
        if dev.kind == "cuda":
            if self._gpu_link(dev) is not None:
                return "nccl"
            return "host" if self.size > 1 else "none"
        return "mpi" if self.size > 1 else "none"

    def planned_transport(self, dev: Device) -> str:
        """What :meth:`transport` would answer, as far as this rank alone can tell (no
        communication, no NCCL communicator made): "nccl" when NCCL loads here."""
        if dev.kind == "cpu":
            return "mpi" if self.size > 1 else "none"
        return "nccl" if self._want_nccl is not False and _load_nccl()[0] is not None else "host"

    def _gpu_link(self, dev: Device) -> _NcclLink | None:
        """The _NcclLink for GPU ``dev``, made at the first call (collective), or None to stage
        through the host (decided alike on every rank)."""
        if dev.index not in self._gpu_links:
            nccl, why_not = _load_nccl() if self._want_nccl is not False else (None, "nccl=False was asked for")
            bus_id = dev.xp.cuda.Device(dev.index).pci_bus_id
            with dev:  # NCCL binds its communicator to the current GPU
                comm = self._nccl_rendezvous(nccl, bus_id, why_not)
            self._gpu_links[dev.index] = None if comm is None else _NcclLink(nccl, comm)
        return self._gpu_links[dev.index]

    def _nccl_rendezvous(self, nccl: Any, gpu_id: str, why_not: str | None = None) -> Any:
        """Every rank says where it runs and whether NCCL loads; if all can, rank 0 makes NCCL's
        unique id, MPI carries it to every rank and each joins ``NcclCommunicator(size, id, rank)``,
        returned (else None: host staging). Two ranks on one GPU: DistributedMismatchError on all."""
        rows = self.allgather_json({"host": platform.node(), "gpu": gpu_id, "nccl": nccl is not None})
        seen: dict[tuple[str, str], int] = {}
        for rank, row in enumerate(rows):
            other = seen.setdefault((row["host"], row["gpu"]), rank)
            if other != rank:
                raise DistributedMismatchError(
                    f"ranks {other} and {rank} both use the GPU {row['gpu']} on {row['host']}; run one "
                    "process per GPU (mpiexec -n <GPUs per node> ...): each picks cuda:<local rank>"
                )
        if not all(row["nccl"] for row in rows):
            if self._want_nccl:
                missing = [r for r, row in enumerate(rows) if not row["nccl"]]
                error = DeviceUnavailableError(f"NCCL is not usable on rank(s) {missing}: {why_not or 'see there'}")
                error.collective = True  # every rank raises it
                raise error
            if self.size > 1 and self.is_root and self._want_nccl is None:  # not when nccl=False was asked
                why = "NCCL is not usable on every rank; GPU arrays are summed through the host over MPI (slower)"
                warnings.warn(why, RuntimeWarning, stacklevel=4)
            return None
        uid = self.broadcast_bytes(_uid_bytes(nccl.get_unique_id()) if self.is_root else None)
        return _nccl_communicator(nccl, self.size, uid, self.rank)


def _load_nccl() -> tuple[Any, str | None]:
    """cupy.cuda.nccl when its library loads, else (None, why)."""
    try:
        from cupy.cuda import nccl  # noqa: PLC0415 — optional, GPU-only
    except Exception as exc:
        return None, f"cupy.cuda.nccl does not import ({type(exc).__name__}: {exc})"
    if not getattr(nccl, "available", False):
        return None, 'the NCCL library did not load (pip install "nvidia-nccl-cu12" or "nvidia-nccl-cu13")'
    return nccl, None


def _uid_bytes(uid: Any) -> bytes:
    """NCCL's unique id as bytes (CuPy ≥ 14 returns bytes; older ones a tuple of signed chars)."""
    return bytes(int(v) & 0xFF for v in uid)


def _nccl_communicator(nccl: Any, size: int, uid: bytes, rank: int) -> Any:
    try:
        return nccl.NcclCommunicator(size, uid, rank)
    except TypeError:  # an older CuPy wants the id as a tuple of signed chars
        return nccl.NcclCommunicator(size, tuple(np.frombuffer(uid, dtype=np.int8).tolist()), rank)


# looked up on every step's gradient sum: a dict by dtype (a dtype's .name is Python code, µs)
_NCCL_DTYPES = {np.dtype(name): f"NCCL_{name.upper()}" for name in ("float16", "float32", "float64", "int32", "int64")}
_NCCL_OPS = {"sum": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


class _NcclLink:
    """In-place NCCL collectives on CuPy arrays, queued on the current stream (so they are
    ordered with the kernels around them; nothing waits on the host)."""

    def __init__(self, nccl: Any, comm: Any, stream: Any = None) -> None:
        self._nccl, self._comm = nccl, comm
        self._stream = stream or (lambda: Device("cuda").xp.cuda.get_current_stream().ptr)

    def _args(self, x: Any) -> tuple[int, int, int]:
        if not x.flags.c_contiguous:
            raise ValueError("NCCL collectives need a contiguous array")
        name = _NCCL_DTYPES.get(x.dtype)
        if name is None:
            raise TypeError(f"NCCL cannot reduce dtype {x.dtype}")
        return x.data.ptr, x.size, getattr(self._nccl, name)

    def allreduce(self, x: Any, op: str) -> None:
        ptr, count, dtype = self._args(x)
        self._comm.allReduce(ptr, ptr, count, dtype, getattr(self._nccl, _NCCL_OPS[op]), self._stream())

    def broadcast(self, x: Any, root: int) -> None:
        ptr, count, dtype = self._args(x)
        self._comm.broadcast(ptr, ptr, count, dtype, root, self._stream())


# ----------------------------------------------------------------------------- the job's world

_WORLD: Communicator | None = None


def world() -> Communicator:
    """The job's communicator, made once: MPI's COMM_WORLD when a launcher started this process
    (importing mpi4py now, and installing :func:`install_abort_hook`), else a lone process."""
    global _WORLD  # noqa: PLW0603 — one world per process, like MPI's own
    if _WORLD is None:
        if env_layout() is None:
            _WORLD = Communicator()
        else:
            try:
                from mpi4py import MPI  # noqa: PLC0415
            except ImportError as exc:
                raise ImportError(
                    f"this process was started by an MPI launcher but mpi4py is missing ({exc}); "
                    'pip install "gpunn[mpi]"'
                ) from exc
            _WORLD = Communicator(MPI.COMM_WORLD)
            if _WORLD.size > 1:
                install_abort_hook(_WORLD)
    return _WORLD


def resolve(distributed: bool | Communicator | None) -> Communicator | None:
    """The communicator a Trainer uses: None (automatic) → :func:`world` when launched with
    several ranks, else none; True → :func:`world`; False → none; or the one given."""
    if isinstance(distributed, Communicator):
        if distributed.size > 1:  # one built by hand (nccl=False, a sub-communicator) ends the job too
            install_abort_hook(distributed)
        return distributed
    if distributed is None:
        return world() if is_launched() else None
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None, True, False or a gn.distributed.Communicator, got {distributed!r}")
    return world() if distributed else None


def install_abort_hook(comm: Communicator) -> None:
    """Make an uncaught exception on any rank print "rank R: <error>" (with its traceback) and abort
    the whole job, not leave the other ranks waiting in a collective (ChainerMN's global except hook)."""

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        sys.stderr.write(f"{text}rank {comm.rank}: {kind.__name__}: {exc}\n")
        comm.abort(1)

    sys.excepthook = hook


def rank_device(spec: str | Device | None, comm: Communicator) -> Device:
    """The device of this rank: "auto" (also GPUNN_DEVICE unset) and "cuda" mean cuda:<local
    rank>, one process per GPU ("auto" is the CPU where no GPU is usable); "cpu" and "cuda:N"
    are taken as given. Only this rank's GPU is touched: probing cuda:0 from every rank would
    put every rank's CUDA context on GPU 0."""
    if isinstance(spec, Device):
        return spec
    if spec is not None and not isinstance(spec, str):
        return backend.device(spec)  # raises the TypeError that names a device spec
    text = (spec if spec is not None else backend.env_spec()).strip().lower()
    if text not in ("auto", "cuda", "gpu"):
        return backend.device(spec)
    count = backend.gpu_count()  # no context on any GPU
    if count == 0:
        return CPU if text == "auto" else backend.device(text)  # the latter raises, saying why
    if comm.local_size > count and "CUDA_VISIBLE_DEVICES" not in os.environ:
        raise DeviceUnavailableError(
            f"{comm.local_size} ranks run on this node but it has {count} GPU(s); start at most "
            f"{count} processes per node (one per GPU), or train on the CPU (--device cpu)"
        )
    index = comm.local_rank % count  # a launcher giving each rank its own CUDA_VISIBLE_DEVICES: 0
    try:
        return backend.device(f"cuda:{index}")  # runs its test kernel there
    except DeviceUnavailableError as exc:
        if text == "auto":  # counted but not usable: the CPU, as gn.device("auto") (ranks that differ are refused)
            warnings.warn(f"rank {comm.rank}: {exc}; this rank trains on the CPU", RuntimeWarning, stacklevel=2)
            return CPU
        raise DeviceUnavailableError(f"rank {comm.rank}'s GPU: {exc}") from None
