"""Files read and written safely: :func:`open_regular` reads regular files only (a FIFO would
wait for a writer, ``/dev/zero`` never ends), :func:`atomic_write` replaces a file so that a crash
leaves the old one or the new one, and :func:`check_distinct` keeps a run's outputs off its inputs.

A killed write leaves its temporary file ``.<name>.<hash>.<pid>.<random>.tmp``; the next write to
the same target removes those whose process is gone (or that are older than an hour).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

STALE_AFTER_S = 3600.0  # a temporary file this old belongs to no write in progress
_NAME_BYTES = 40  # of the target's name kept in its temporary files' names: 255-byte names must work


def file_kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode``: "a folder", "a FIFO (named pipe)", ..."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> BinaryIO:
    """``path`` opened for binary reading; ``error`` (naming the path and what it is) when it
    is not a regular file. FileNotFoundError and PermissionError pass through."""
    mode = os.stat(path).st_mode  # follows links: a link to /dev/zero is a device
    if not stat.S_ISREG(mode):
        raise error(f"{os.fspath(path)} is {file_kind(mode)}, not a regular file")
    # O_NONBLOCK: should the path become a FIFO between stat and open, opening cannot hang
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode  # what was opened, whatever the name points at now
        if not stat.S_ISREG(mode):
            raise error(f"{os.fspath(path)} is {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def writable_target(path: str | os.PathLike[str], name: str = "path") -> Path:
    """The file that writing ``path`` replaces: ``path`` with its links resolved.

    Raises IsADirectoryError for a folder, FileNotFoundError when the folder is missing,
    ValueError for a FIFO, device or socket, and PermissionError for a read-only file (one
    without any write permission bit: root could write it, but the user marked it so) or a
    folder this process cannot write. ``name`` ("path", "--save") starts each message.
    """
    given = os.fspath(path)
    if not given:
        raise ValueError(f"{name} must name a file, got ''")
    target = Path(os.path.realpath(given))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{name} {given!r} is a folder; give a file name such as 'model.safetensors'")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{name}: the folder {str(target.parent)!r} of {given!r} does not exist")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{name} {given!r} is {file_kind(mode)}, not a regular file; give a file name")
    if mode is not None and ((mode & 0o222) == 0 or not os.access(target, os.W_OK)):
        raise PermissionError(
            f"{name} {given!r} is read-only (mode {stat.S_IMODE(mode):04o}), so gpunn leaves it alone; "
            "make it writable (chmod u+w) or write to another path",
        )
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(f"{name}: cannot create files in the folder {str(target.parent)!r}")
    return target


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, whole; return
    the file written (``path``'s link target). An OSError names ``path``."""
    target = writable_target(path)
    mode = _file_mode(target)
    prefix = _temp_prefix(target)
    _remove_stale(target.parent, prefix)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f"{prefix}{os.getpid()}.", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.chmod(tmp, mode)  # mkstemp made it private (0600)
        os.replace(tmp, target)  # same folder, same file system: one atomic rename
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:  # "No space left on device" alone names no file
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
        raise
    # The rename itself made durable; best effort: Windows cannot open a folder for fsync.
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def _file_mode(target: Path) -> int:
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777  # replacing keeps the permissions the user chose
    umask = os.umask(0o022)  # the umask can only be read by setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _temp_prefix(target: Path) -> str:
    """``.<up to 40 bytes of the name>.<hash of the name>.``: recognisable per target, short."""
    raw = os.fsencode(target.name)
    short = raw[:_NAME_BYTES].decode("utf-8", "ignore")
    return f".{short}.{hashlib.sha256(raw).hexdigest()[:10]}."


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove the temporary files of earlier writes to this target whose process is gone."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        now = time.time()
        for entry in entries:
            if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
                continue
            pid = entry.name[len(prefix) :].split(".", 1)[0]
            with contextlib.suppress(OSError):
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
                if old or (pid.isdigit() and not _alive(int(pid))):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return True  # only the age tells (os.kill on Windows would end the process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def identity(path: str | os.PathLike[str]) -> tuple[object, ...]:
    """What names one file: device and inode when it exists (hard links and symbolic links
    agree), else the path with its links resolved."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def check_distinct(
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    allowed: tuple[tuple[str, str], ...] = (),
) -> None:
    """ValueError when an output names the same file as an input or as another output. Each
    item is (flag, path), such as ("--save", "m.safetensors"); a path None or "" was not given.
    ``allowed`` lists (input flag, output flag) pairs that may share a file, such as
    ("--resume", "--save")."""
    outs = [(flag, p, identity(p)) for flag, p in outputs if p]
    ins = [(flag, p, identity(p)) for flag, p in inputs if p]
    for i, (out_flag, out_path, out_id) in enumerate(outs):
        for flag, p, other in outs[i + 1 :] + ins:
            if other == out_id and (flag, out_flag) not in allowed:
                raise ValueError(
                    f"{out_flag} {os.fspath(out_path)} and {flag} {os.fspath(p)} name the same file, "
                    f"which the run would overwrite; give {out_flag} a path of its own"
                )


__all__ = ["atomic_write", "check_distinct", "file_kind", "identity", "open_regular", "writable_target"]
