"""The data-parallel side of a Trainer's fit over K ranks (:mod:`.comm`): :class:`DataParallel`.

Each rank holds the whole model and data set. At the start of ``fit`` every rank agrees on the
model, optimizer, data (a hash of every byte: :func:`fingerprint`) and arguments (else
:class:`~gpunn.distributed.DistributedMismatchError` on every rank) and takes rank 0's parameters
and optimizer state. Rank r trains on rows ``[⌊b·r/K⌋, ⌊b·(r+1)/K⌋)`` of every global batch b
(``batch_size``) of the single-process ``(seed, epoch)`` order. Its loss is a mean over its n_r
rows, so its gradient g_r is scaled by n_r / b and one allreduce of the flat gradient buffer gives
Σ_r (n_r/b)·g_r: the single-process gradient up to summation order. The regularizer's gradient
λ·W is added after the allreduce (W is the same everywhere: counted once), then every rank
applies the same optimizer step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..backend.device import device_of, to_numpy
from ..nn.parameter import pack, same_parameters
from ..nn.sequential import architecture
from ..train.batches import batches
from .comm import Communicator, DistributedMismatchError


def batch_slice(m: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of ``m`` rows that ``rank`` of ``size`` trains on:
    lo = ⌊m·rank/size⌋, hi = ⌊m·(rank+1)/size⌋ (sizes differ by at most one)."""
    return m * rank // size, m * (rank + 1) // size


def epoch_shards(
    n: int, batch_size: int, rank: int, size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0
) -> list[tuple[np.ndarray, int]]:
    """(local row indices, global batch size) for every step of an epoch, on the host: over the
    ranks, each step's indices are disjoint and make up the batch of ``data.batches``."""
    order = np.arange(n)
    steps = []
    for idx, _ in batches(order, order, batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
        lo, hi = batch_slice(len(idx), rank, size)
        steps.append((np.asarray(idx[lo:hi]), len(idx)))  # host: host row indices
    return steps


class DataParallel:
    """What a Trainer does differently on several ranks: agree at start, broadcast rank 0's
    state, take this rank's slice of each batch, average gradients, reduce metrics."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm
        self._counts: list[tuple[int, int]] = []  # (local rows, global rows) per step of the epoch

    def start(self, trainer: Any, x: Any, y: Any, dev: tuple[Any, Any] | None, **fit_args: Any) -> None:
        """Check that every rank runs the same fit (``fit_args``: epochs, batch_size, seed, ...) of
        the same model, then give every rank rank 0's parameters and optimizer state."""
        batch_size = fit_args["batch_size"]
        if batch_size < self.comm.size:
            raise ValueError(
                f"batch_size is the global batch over all {self.comm.size} ranks and must be at least "
                f"{self.comm.size}, got {batch_size}"
            )
        model, optimizer = trainer.model, trainer.optimizer
        params = model.parameters()
        if not same_parameters(optimizer.params, params):
            # the same on every rank (each builds the same trainer), so every rank raises
            raise ValueError(
                f"distributed training averages every parameter's gradient: bind the optimizer to all "
                f"{len(params)} of the model's parameters (it has {len(optimizer.params)}); freezing "
                "layers through a partial optimizer works in a single process only"
            )
        flat = pack(params)
        self.agree(
            architecture=architecture(model.config()),
            parameters=flat.size,
            dtype=str(flat.dtype),
            device_kind=trainer.device.kind,
            loss=type(trainer.loss).__name__,
            regularizer=repr(trainer.regularizer),
            optimizer={"type": type(optimizer).__name__, **optimizer.hyperparameters()},
            optimizer_step=optimizer.step_count,
            max_grad_norm=optimizer.max_grad_norm,
            samples=int(x.shape[0]),
            data={"x": fingerprint(x), "y": fingerprint(y)},  # every byte: one differing element stops the fit
            validation=None if dev is None else {"x": fingerprint(dev[0]), "y": fingerprint(dev[1])},
            **fit_args,
        )
        self.comm.broadcast(flat.data)
        for name in sorted(optimizer.state):
            self.comm.broadcast(optimizer.state[name])

    def agree(self, **fields: Any) -> None:
        """Raise DistributedMismatchError on every rank unless all ranks passed equal fields."""
        mine = json.loads(json.dumps(fields, sort_keys=True, default=_json_default))
        rows = self.comm.allgather_json(mine)
        for name in mine:
            for rank, row in enumerate(rows[1:], start=1):
                where = _difference(rows[0].get(name), row.get(name), name)
                if where is not None:
                    path, a, b = where
                    raise DistributedMismatchError(
                        f"ranks disagree on {path}: rank 0 has {_short(a)}, rank {rank} has {_short(b)}; every "
                        "rank must build the same model and optimizer and call fit with the same data and arguments"
                    )

    def batches(
        self, x: Any, y: Any, batch_size: int, shuffle: bool, seed: int, epoch: int
    ) -> Iterator[tuple[Any, Any]]:
        """This rank's slice ``(xb, yb)`` of every global batch (possibly 0 rows)."""
        steps = epoch_shards(x.shape[0], batch_size, self.comm.rank, self.comm.size, shuffle, seed, epoch)
        self._counts = [(len(idx), m) for idx, m in steps]
        if not shuffle:  # the slices are contiguous: views, no gather
            start = 0
            for _, m in steps:
                lo, hi = batch_slice(m, self.comm.rank, self.comm.size)
                yield x[start + lo : start + hi], y[start + lo : start + hi]
                start += m
            return
        flat_idx = np.concatenate([idx for idx, _ in steps]) if steps else np.empty(0, np.int64)  # host: indices
        perm = device_of(x).send(flat_idx)  # one transfer per epoch
        offset = 0
        for idx, _ in steps:
            local = perm[offset : offset + len(idx)]
            offset += len(idx)
            yield x[local], y[local]

    def reduce_gradients(self, grad: Any, step: int) -> None:
        """grad ← Σ_ranks (n_r / m)·grad_r, the mean over the step's m rows (in place)."""
        n_local, m = self._counts[step]
        if n_local == 0:
            grad.fill(0)
        elif n_local != m:
            grad *= n_local / m  # a Python float keeps float32 buffers float32
        self.comm.allreduce(grad)

    def reduce_epoch(self, losses: np.ndarray, correct: int | None) -> tuple[np.ndarray, int | None]:
        """Per-step global mean losses (float64) and the total correct count, from this rank's
        per-step local means and count: one allreduce of n_steps + 1 numbers."""
        counts = np.array(self._counts, dtype=np.float64).reshape(-1, 2)  # host: host counts
        buf = np.zeros(len(losses) + 1)
        local = counts[:, 0] > 0
        buf[:-1][local] = losses[local].astype(np.float64) * counts[local, 0]
        buf[-1] = correct or 0
        self.comm.allreduce(buf)
        return buf[:-1] / counts[:, 1], None if correct is None else round(buf[-1])

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of n rows (for sharded evaluation)."""
        return slice(*batch_slice(n, self.comm.rank, self.comm.size))

    def reduce_sums(self, values: Sequence[float]) -> list[float]:
        buf = np.asarray(values, dtype=np.float64).copy()  # host: Python floats
        return self.comm.allreduce(buf).tolist()


FINGERPRINT_CHUNK = 1 << 26  # bytes of a device array brought to the host at a time


def fingerprint(x: Any) -> str:
    """A hash of an array's shape, dtype and every byte of its elements (row-major): BLAKE2b,
    128 bits, as 32 hex digits. A CuPy array comes to the host in chunks of rows of about 64 MB.
    About 0.5 GB/s on one core; it runs once per fit."""
    digest = hashlib.blake2b(f"{tuple(x.shape)} {x.dtype}".encode(), digest_size=16)
    rows = x.reshape(1, -1) if x.ndim == 0 else x
    step = max(1, FINGERPRINT_CHUNK // max(1, rows[:1].nbytes))
    for lo in range(0, rows.shape[0], step):
        digest.update(np.ascontiguousarray(to_numpy(rows[lo : lo + step])).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    """NumPy scalars as their Python values; anything else json cannot write as its str."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first place where two JSON values differ: (path such as "architecture.layers[0].n_out",
    a's part, b's part), or None when they are equal."""
    parts: list[tuple[str, Any, Any]] = []
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        parts = [(f"{path}.{k}", a[k], b[k]) for k in a]
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        parts = [(f"{path}[{i}]", u, v) for i, (u, v) in enumerate(zip(a, b, strict=True))]
    for where, u, v in parts:
        found = _difference(u, v, where)
        if found is not None:
            return found
    return None if a == b else (path, a, b)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."
