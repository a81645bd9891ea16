"""MNIST files (or any data set in their layout, such as Fashion-MNIST): four IDX files, each optionally
gzipped, or Keras' ``mnist.npz``; re-exported by :mod:`gpunn.train.data`. Everything stays on the host.

Only regular files are read, each header checked before the data it describes: a FIFO, a device, a huge
sparse file or a lying header costs a few bytes of reading, not a hang or its claimed size in memory.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..io.safe_file import open_regular

Arrays = tuple[np.ndarray, np.ndarray]  # (x, y) on the host

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim


def _read_upto(f: BinaryIO, n: int, path: Path) -> bytes:
    """Up to ``n`` bytes of ``f``, in pieces: a size that a header claims is never allocated
    before the bytes are there. A gzip stream's errors name ``path``."""
    pieces, left = [], n
    try:
        while left > 0:
            piece = f.read(min(left, 1 << 24))
            if not piece:
                break
            pieces.append(piece)
            left -= len(piece)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from exc
    return b"".join(pieces)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: big-endian magic, one uint32 size per dim, data.
    The header is read and checked first; the data only when the file holds what it claims."""
    ndim = magic & 0xFF
    kind = "images" if magic == _IDX_IMAGES else "labels"
    header = 4 + 4 * ndim
    with open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        gzipped = path.suffix == ".gz"
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        head = _read_upto(f, header, path)
        if len(head) < 4:
            raise ValueError(f"{path}: file too short for an IDX header ({len(head)} bytes)")
        (found,) = struct.unpack(">I", head[:4])
        if found != magic:
            raise ValueError(
                f"{path}: not an MNIST IDX file of {kind}: its magic number is 0x{found:08X}, expected 0x{magic:08X}"
            )
        if len(head) < header:
            raise ValueError(f"{path}: truncated IDX header ({len(head)} bytes, expected at least {header})")
        dims = struct.unpack(f">{ndim}I", head[4:header])
        expected = math.prod(dims)
        if gzipped:  # one byte past the claim: extra bytes show
            data = _read_upto(f, expected + 1, path)
            found = len(data)
        else:  # the file's size says it all
            found = size - header
            data = _read_upto(f, expected, path) if found == expected else b""
    if found != expected:
        state = "truncated" if found < expected else "has extra bytes"
        count = "more" if gzipped and found > expected else found
        raise ValueError(f"{path}: {state}: sizes {dims} need {expected} data bytes, found {count}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)  # host: bytes read from a file


def _find(folder: Path, name: str) -> Path | None:
    """The file ``name`` in ``folder``, plain or gzipped (``name.gz``), or None."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.exists()), None)


def mnist_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files :func:`load_mnist` reads for ``path``: the .npz itself, or the IDX files
    found in the folder (a run's outputs must not overwrite them)."""
    p = Path(path)
    if p.is_dir():
        return [f for f in (_find(p, name) for name in MNIST_FILES) if f is not None]
    return [p]


# what zipfile raises for an encrypted member, and for a compression method it cannot read
# (NotImplementedError, a RuntimeError)
_ZIP_REFUSALS = (RuntimeError,)


def _pixels(images: np.ndarray) -> np.ndarray:
    x = images.reshape(images.shape[0], math.prod(images.shape[1:])).astype(np.float32)  # 0 images too
    x /= 255.0
    return x


def _load_idx_folder(folder: Path) -> tuple[Arrays, Arrays]:
    found = {name: _find(folder, name) for name in MNIST_FILES}
    missing = [name for name, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing in {folder}: {', '.join(missing)} (each may also end in .gz); "
            f"expected {', '.join(MNIST_FILES)}"
        )
    parts = []
    for images_name, labels_name in (MNIST_FILES[:2], MNIST_FILES[2:]):
        images_path, labels_path = found[images_name], found[labels_name]
        images = _read_idx(images_path, _IDX_IMAGES)
        labels = _read_idx(labels_path, _IDX_LABELS)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
        parts.append((_pixels(images), labels.astype(np.int64)))
    return parts[0], parts[1]


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _not_mnist(path: Path, start: bytes) -> str:
    """Why the file starting with ``start`` is not an MNIST .npz archive."""
    if start[:6] == b"\x93NUMPY":  # what np.save writes, whatever the file's name
        return f"{path}: holds a single array, not an .npz archive of {', '.join(_NPZ_KEYS)}"
    if start[:4] in (struct.pack(">I", _IDX_IMAGES), struct.pack(">I", _IDX_LABELS)):
        return f"{path}: is one IDX file; give the folder holding all four ({', '.join(MNIST_FILES)})"
    return f"{path}: not an MNIST file: neither an .npz archive of {', '.join(_NPZ_KEYS)} nor a folder of IDX files"


def _check_npz_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse an array whose header claims more bytes than its zip entry holds: NumPy would
    allocate the claimed size before reading."""
    fmt = np.lib.format
    entries = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    for key in _NPZ_KEYS:
        with archive.open(entries[key]) as member:
            version = fmt.read_magic(member)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(member)
        claimed, held = math.prod(shape) * dtype.itemsize, entries[key].file_size
        if claimed > held:
            raise ValueError(f"{path}: {key} claims shape {shape} ({claimed:,} bytes) but holds {held:,} bytes")


def _load_npz(path: Path) -> tuple[Arrays, Arrays]:
    with open_regular(path) as f:
        start = f.read(8)
        if start[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive's first entry, or an empty one
            raise ValueError(_not_mnist(path, start))
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:  # host: reads a file
                missing = [k for k in _NPZ_KEYS if k not in npz.files]
                if missing:
                    raise ValueError(f"{path}: missing arrays {', '.join(missing)}; expected {', '.join(_NPZ_KEYS)}")
                _check_npz_sizes(path, npz.zip)
                arrays = {k: npz[k] for k in _NPZ_KEYS}
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, *_ZIP_REFUSALS) as exc:
            if str(exc).startswith(str(path)):  # ours, naming the file already
                raise
            if "allow_pickle" in str(exc):  # an object array: reading it would unpickle
                raise ValueError(f"{path}: holds Python objects (pickled), which gpunn never loads") from None
            raise ValueError(f"{path}: not a readable .npz archive ({exc})") from exc
    parts = []
    for split_name in ("train", "test"):
        x, y = arrays[f"x_{split_name}"], arrays[f"y_{split_name}"]
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"{path}: x_{split_name} must be integer pixels 0..255 of shape (N, rows, cols) "
                f"as in Keras' mnist.npz, got dtype {x.dtype} shape {x.shape}"
            )
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{path}: x_{split_name} pixels must lie in 0..255, got {x.min()}..{x.max()}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
            raise ValueError(
                f"{path}: y_{split_name} must be {len(x)} integer labels of shape (N,) to match "
                f"x_{split_name}, got dtype {y.dtype} shape {y.shape}"
            )
        parts.append((_pixels(x), y.astype(np.int64)))
    return parts[0], parts[1]


def load_mnist(path: str | os.PathLike[str]) -> tuple[Arrays, Arrays]:
    """Read MNIST (or any data set in its layout, such as Fashion-MNIST) from local files.

    ``path`` is either a folder holding the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each may be
    gzipped, with ``.gz`` appended), or an ``.npz`` file with arrays ``x_train``, ``y_train``,
    ``x_test``, ``y_test`` (Keras' ``mnist.npz`` layout).

    Returns ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 (N, rows·cols) with pixels scaled
    to [0, 1] (divided by 255), ``y`` int64 (N,). Raises FileNotFoundError naming what is missing and
    ValueError naming the file that is malformed.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        return _load_idx_folder(p)
    if p.exists():  # a FIFO or a device is refused before a byte is read
        return _load_npz(p)
    raise FileNotFoundError(
        f"path {str(p)!r} does not exist; give a folder holding {', '.join(MNIST_FILES)} "
        "(optionally .gz) or an .npz file with x_train, y_train, x_test, y_test"
    )


__all__ = ["MNIST_FILES", "load_mnist", "mnist_files"]
