"""Checkpoint files handled safely: reading refuses what is not a regular file and reads no more
than the header names; saving writes through links, leaves read-only files alone, cleans up
after killed saves, names the file when the disk is full; suspicious contents are named."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import gpunn as gn
from gpunn.io import safe_file
from gpunn.io.checkpoint import CheckpointError, CheckpointWarning, read

POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX files: FIFOs, devices, links, permissions")


def _model(seed: int = 0) -> gn.Sequential:
    return gn.mlp([4, 6, 3], seed=seed)


def _trained(tmp_path: Path) -> Path:
    model = _model()
    opt = gn.optim.Adam(model.parameters(), lr=1e-2)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    criterion = gn.SoftmaxWithLoss()
    criterion.forward(model.forward(x), np.arange(8) % 3)
    model.backward(criterion.backward())
    opt.step()
    return gn.save(tmp_path / "good.safetensors", model, opt, metadata={"epoch": 1})


def _rewrite(good: Path, out: Path, edit: Any, tensors: Any = None) -> Path:
    """``good`` with its gpunn metadata replaced by ``edit(metadata)`` (and its tensors by
    ``tensors(tensors)``), written to ``out``."""
    arrays = safetensors.numpy.load(good.read_bytes())
    meta = json.loads(safetensors.safe_open(str(good), framework="numpy").metadata()["gpunn"])
    arrays = tensors(arrays) if tensors else arrays
    out.write_bytes(safetensors.numpy.save(arrays, metadata={"gpunn": json.dumps(edit(meta))}))
    return out


def _load_in_child(path: Path, memory_limit: int = 1 << 30) -> subprocess.CompletedProcess:
    """gn.load(path) in a child process whose address space is limited to ``memory_limit``
    bytes: reading a huge or endless file whole fails there with a MemoryError."""
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory_limit}, {memory_limit}))\n"
        "import gpunn as gn\n"
        "try:\n"
        "    gn.load(sys.argv[1], device='cpu')\n"
        "except gn.CheckpointError as exc:\n"
        "    print('CheckpointError:', exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


# ----------------------------------------------------------------------------- reading


@POSIX
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    outcome: dict[str, BaseException] = {}

    def load() -> None:
        try:
            gn.load(fifo, device="cpu")
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # it waits for a writer: be one, so that it ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=20)
        pytest.fail("loading a FIFO waited for a writer")
    assert isinstance(outcome.get("error"), CheckpointError)
    assert "pipe.safetensors is a FIFO (named pipe), not a regular file" in str(outcome["error"])


@POSIX
def test_a_link_to_a_device_is_refused_before_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    result = _load_in_child(link)
    assert "MemoryError" not in result.stderr, result.stderr
    assert "zero.safetensors is a character device, not a regular file" in result.stdout, result.stdout + result.stderr


@POSIX
def test_a_huge_sparse_file_is_refused_after_reading_its_header(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.safetensors"
    with sparse.open("wb") as f:
        f.truncate(4 << 30)  # 4 GiB of zeros, none of them on disk: a header length of 0
    start = time.monotonic()
    result = _load_in_child(sparse)
    assert "MemoryError" not in result.stderr, result.stderr
    assert "its safetensors header is not valid JSON" in result.stdout, result.stdout + result.stderr
    print(f"refused in {time.monotonic() - start:.1f} s")  # reported, not asserted


def test_a_header_beyond_safetensors_limit_is_named(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:
        f.write((100_000_001).to_bytes(8, "little"))
        f.truncate(100_000_200)
    with pytest.raises(CheckpointError, match=r"big\.safetensors.*100,000,001 bytes.*more than the 100,000,000"):
        read(path, "cpu")


def test_bytes_after_the_tensor_data_are_named(tmp_path: Path) -> None:
    good = _trained(tmp_path)
    joined = tmp_path / "joined.safetensors"
    joined.write_bytes(good.read_bytes() + b"extra")
    with pytest.raises(CheckpointError, match=r"joined\.safetensors is damaged: 5 bytes follow its tensor data"):
        read(joined, "cpu")


# ----------------------------------------------------------------------------- writing


@POSIX
def test_saving_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    real = gn.save(tmp_path / "real.safetensors", _model(0))
    link = tmp_path / "link.safetensors"
    link.symlink_to(real.name)
    gn.save(link, _model(1))
    assert link.is_symlink() and os.readlink(link) == real.name
    expected = gn.to_numpy(_model(1)[0].W.data)
    np.testing.assert_array_equal(gn.load(real, device="cpu")[0].W.data, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "real.safetensors"]
    dangling = tmp_path / "new.safetensors"
    dangling.symlink_to("made.safetensors")
    gn.save(dangling, _model(2))
    assert dangling.is_symlink() and (tmp_path / "made.safetensors").is_file()


@POSIX
def test_a_read_only_checkpoint_is_left_alone(tmp_path: Path) -> None:
    path = gn.save(tmp_path / "kept.safetensors", _model(0))
    before = path.read_bytes()
    path.chmod(0o444)  # root may write it anyway: the mode says the user wants it kept
    with pytest.raises(PermissionError, match=r"kept\.safetensors' is read-only \(mode 0444\)"):
        gn.save(path, _model(1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors"]


@POSIX
def test_the_next_save_removes_temporary_files_of_dead_saves_only(tmp_path: Path) -> None:
    path = gn.save(tmp_path / "m.safetensors", _model(0))
    prefix = safe_file._temp_prefix(path)
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_tmp = tmp_path / f"{prefix}{dead}.0badf00d.tmp"
        live_tmp = tmp_path / f"{prefix}{sleeper.pid}.0badf00d.tmp"
        old_tmp = tmp_path / f"{prefix}{sleeper.pid}.0ldf11e5.tmp"
        other = tmp_path / f".other.safetensors.{dead}.0badf00d.tmp"  # another target's
        for stale in (dead_tmp, live_tmp, old_tmp, other):
            stale.write_bytes(b"half a checkpoint")
        two_hours_ago = time.time() - 7200
        os.utime(old_tmp, (two_hours_ago, two_hours_ago))
        gn.save(path, _model(1))
        assert not dead_tmp.exists() and not old_tmp.exists()
        assert live_tmp.exists()  # a save in progress in another process
        assert other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_file_name_of_255_bytes_saves(tmp_path: Path) -> None:
    name = "m" * (255 - len(".safetensors")) + ".safetensors"
    path = gn.save(tmp_path / name, _model(0))
    assert len(os.fsencode(path.name)) == 255
    np.testing.assert_array_equal(gn.load(path, device="cpu")[0].W.data, _model(0)[0].W.data)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_full_disk_is_reported_with_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = gn.save(tmp_path / "m.safetensors", _model(0))
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        gn.save(path, _model(1))
    assert str(path) in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_metadata_beyond_safetensors_limit_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"huge\.safetensors.*100,000,000") as info:
        gn.save(tmp_path / "huge.safetensors", _model(0), metadata={"log": "x" * 100_000_000})
    assert not isinstance(info.value, gn.CheckpointError)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- contents


def test_nan_or_infinite_weights_load_with_a_warning_naming_the_tensor(tmp_path: Path) -> None:
    model = _model(0)
    model[1].b.data[0] = np.inf
    model[0].W.data[2, 3] = np.nan
    path = gn.save(tmp_path / "diverged.safetensors", model)
    with pytest.warns(CheckpointWarning, match=r"diverged\.safetensors: 'model/0\.W', 'model/1\.b' hold NaN"):
        loaded = gn.load(path, device="cpu")
    assert np.isnan(loaded[0].W.data[2, 3])
    clean = gn.save(tmp_path / "clean.safetensors", _model(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        gn.load(clean, device="cpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: {**o, "step": -7}, r"step must be an integer >= 0, got -7"),
        (lambda o: {**o, "step": True}, r"step must be an integer >= 0, got True"),
        (lambda o: {**o, "step": 2.5}, r"step must be an integer >= 0, got 2\.5"),
        (lambda o: {**o, "hyper": {**o["hyper"], "lr": float("inf")}}, r"cannot rebuild the optimizer Adam: lr"),
        (lambda o: {**o, "hyper": {**o["hyper"], "betas": [0.9, float("nan")]}}, r"betas\[1\] must be finite"),
    ],
    ids=["negative-step", "bool-step", "float-step", "infinite-lr", "nan-beta"],
)
def test_a_hand_edited_optimizer_entry_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    bad = _rewrite(
        _trained(tmp_path), tmp_path / "edited.safetensors", lambda h: {**h, "optimizer": edit(h["optimizer"])}
    )
    with pytest.raises(CheckpointError, match=message):
        read(bad, "cpu").optimizer()


def test_optimizer_state_of_another_dtype_or_shape_is_refused(tmp_path: Path) -> None:
    good = _trained(tmp_path)

    def widen(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**arrays, "optimizer/0.W/exp_avg": arrays["optimizer/0.W/exp_avg"].astype(np.float64)}

    wide = _rewrite(good, tmp_path / "wide.safetensors", lambda h: h, widen)
    with pytest.raises(
        CheckpointError, match=r"'optimizer/0\.W/exp_avg' is float64, but the parameter '0\.W' is float32"
    ):
        read(wide, "cpu").optimizer()

    def cut(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**arrays, "optimizer/0.W/exp_avg_sq": arrays["optimizer/0.W/exp_avg_sq"][:2].copy()}

    short = _rewrite(good, tmp_path / "short.safetensors", lambda h: h, cut)
    with pytest.raises(CheckpointError, match=r"exp_avg_sq.*shape \(2, 6\), expected \(4, 6\)"):
        read(short, "cpu").optimizer()
