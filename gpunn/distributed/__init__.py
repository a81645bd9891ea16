"""Data-parallel training over MPI (mpi4py), with NCCL for GPU arrays: ``gn.distributed``.
:mod:`.comm` holds the communicator, :mod:`.data_parallel` what a Trainer does with it."""

from .comm import (
    Communicator,
    DistributedMismatchError,
    Layout,
    env_layout,
    install_abort_hook,
    is_launched,
    rank_device,
    resolve,
    world,
)
from .data_parallel import DataParallel, architecture, batch_slice, epoch_shards, fingerprint

__all__ = [
    "Communicator",
    "DataParallel",
    "DistributedMismatchError",
    "Layout",
    "architecture",
    "batch_slice",
    "env_layout",
    "epoch_shards",
    "fingerprint",
    "install_abort_hook",
    "is_launched",
    "rank_device",
    "resolve",
    "world",
]
