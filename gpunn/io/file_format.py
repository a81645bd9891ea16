"""The checkpoint file: a safetensors file whose header holds gpunn's JSON metadata (layout in
:mod:`gpunn.io.checkpoint`). :func:`read_file` checks the length and the whole header before it
reads a tensor byte, so a huge, sparse or foreign file costs a few bytes of reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from .safe_file import open_regular

FORMAT_VERSION = 1
METADATA_KEY = "gpunn"
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses a longer JSON header


class CheckpointError(ValueError):
    """A file could not be read as a gpunn checkpoint, or does not fit the model; the message
    names the file and says what is wrong with it."""


def read_file(source: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The gpunn header and every tensor of ``source``, validated; raises CheckpointError
    (FileNotFoundError when there is no such file)."""
    try:
        f = open_regular(source, CheckpointError)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {str(source)!r}: the file does not exist") from None
    with f:  # one open file: a concurrent os.replace cannot mix two files
        size = os.fstat(f.fileno()).st_size
        header = _parse_header(source, f, size)
        f.seek(0)
        data = f.read(size)
    if len(data) != size:
        raise CheckpointError(f"{source} is truncated: it shrank to {len(data)} bytes while being read")
    try:
        tensors = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, KeyError) as exc:  # KeyError: a dtype NumPy lacks
        raise CheckpointError(f"{source}: the tensor data is not valid safetensors: {exc}") from exc
    return header, tensors


def _parse_header(source: Path, f: Any, size: int) -> dict[str, Any]:
    """The checked gpunn header of the open file ``f`` of ``size`` bytes, whose tensor data
    must end exactly at ``size``."""
    bad = f"{source} is not a gpunn checkpoint"
    first = f.read(8)
    if len(first) < 8:
        raise CheckpointError(f"{bad}: it holds {len(first)} bytes, fewer than a safetensors header (truncated?)")
    length = int.from_bytes(first, "little")
    if length > size - 8:
        raise CheckpointError(
            f"{bad}: {_sniff(first) or f'its header claims {length} bytes but only {size - 8} follow (truncated?)'}"
        )
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{bad}: its header claims {length:,} bytes of JSON metadata, more than the {MAX_HEADER_BYTES:,} "
            "that safetensors reads"
        )
    try:
        raw = json.loads(f.read(length))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{bad}: {_sniff(first) or 'its safetensors header is not valid JSON'}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{bad}: its safetensors header is not a JSON object")
    meta = raw.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(METADATA_KEY), str):
        raise CheckpointError(
            f"{bad}: it is a safetensors file without gpunn's metadata (saved by another program?); "
            "gn.save writes the model's architecture there"
        )
    # The tensor bytes must all be present; a cut-off copy fails here with a clear message.
    needed = 0
    for name, entry in raw.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            needed = max(needed, offsets[1])
    present = size - 8 - length
    if needed > present:
        raise CheckpointError(
            f"{source} is truncated: its tensors need {needed} bytes but only {present} are present "
            "(an interrupted copy?)"
        )
    if needed < present:
        raise CheckpointError(
            f"{source} is damaged: {present - needed} bytes follow its tensor data (two files joined?)"
        )
    try:
        header = json.loads(meta[METADATA_KEY])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{bad}: its gpunn metadata is not valid JSON (or nests too deeply)") from None
    return _check_header(source, header)


def _check_header(source: Path, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: the gpunn metadata is not a JSON object")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{source}: the gpunn metadata has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format {version}, written by gpunn {header.get('gpunn_version', '?')}; "
            f"this gpunn reads format {FORMAT_VERSION}: upgrade gpunn to load it"
        )
    if not isinstance(header.get("architecture"), dict):
        raise CheckpointError(f"{source}: the gpunn metadata has no architecture")
    opt = header.get("optimizer")
    keys = opt.get("keys") if isinstance(opt, dict) else None
    if opt is not None and not (
        isinstance(opt, dict)
        and isinstance(opt.get("type"), str)
        and isinstance(opt.get("hyper"), dict)
        and (keys is None or (isinstance(keys, list) and all(isinstance(k, str) for k in keys)))
    ):
        raise CheckpointError(f"{source}: the optimizer entry of the gpunn metadata is malformed: {opt!r:.300}")
    step = opt.get("step") if isinstance(opt, dict) else 0
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{source}: the optimizer's step must be an integer >= 0, got {step!r:.100}")
    header.setdefault("optimizer", None)
    if header.get("metadata") is None:
        header["metadata"] = {}
    if not isinstance(header["metadata"], dict):
        raise CheckpointError(f"{source}: the user metadata is not a JSON object")
    return header


def _sniff(data: bytes) -> str | None:
    """Name the kind of file that is often mistaken for a checkpoint, or None."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle; gpunn never unpickles, because unpickling can run arbitrary code"
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive (a torch.save or .npz file?)"
    if data[:6] == b"\x93NUMPY":
        return "it is a NumPy .npy file"
    return None


__all__ = ["FORMAT_VERSION", "MAX_HEADER_BYTES", "METADATA_KEY", "CheckpointError", "read_file"]
