"""Every user error of the CLI ends in one line on stderr, starting with "gpunn", and a non-zero
exit: bad numbers, huge sizes, missing or wrong files, FIFOs and devices, bad data sets, and
outputs that would overwrite the run's own inputs. Each case also names what it is about."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn.bench import run as bench
from gpunn.cli.main import main

POSIX = os.name == "posix"


def _checkpoint(folder: Path, name: str = "run.st", epoch: int = 1) -> str:
    """A small checkpoint as gpunn train writes it (enough to resume or to be refused)."""
    config = {"dataset": "spiral", "hidden": [8], "epochs": 2}
    gn.save(folder / name, gn.mlp([2, 8, 3], seed=0), gn.optim.Adam(lr=1e-3), {"epoch": epoch, "config": config})
    return name


def _mnist(folder: Path) -> str:
    rng = np.random.default_rng(0)
    np.savez(
        folder / "d.npz",
        x_train=rng.integers(0, 256, (40, 4, 4), dtype=np.uint8),
        y_train=np.arange(40) % 10,
        x_test=rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        y_test=np.arange(10) % 10,
    )
    return "d.npz"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "fifo")
    return "fifo"


def _link(folder: Path, name: str, target: str) -> str:
    (folder / name).symlink_to(target)
    return name


def _write(folder: Path, name: str, data: bytes, mode: int | None = None) -> str:
    (folder / name).write_bytes(data)
    if mode is not None:
        (folder / name).chmod(mode)
    return name


def _sparse(folder: Path) -> str:
    with (folder / "sparse.st").open("wb") as f:
        f.truncate(4 << 30)  # 4 GiB of zeros that take no disk space
    return "sparse.st"


def _idx_folder(folder: Path) -> str:
    (folder / "idx").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (folder / "idx" / name).write_bytes(b"\x00")
    (folder / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00")
    return "idx"


GARBAGE = np.random.default_rng(3).bytes(64)
T = ("train", "--device", "cpu")
E = ("evaluate", "--device", "cpu")
S = (*T, "--dataset", "spiral", "--epochs", "1")
Case = Callable[[Path], list[str]]
CASES: dict[str, tuple[Case, str]] = {
    # bad numbers
    "lr-not-a-number": (lambda _: [*S, "--lr", "abc"], "--lr"),
    "lr-nan": (lambda _: [*S, "--lr", "nan"], "lr must be finite"),
    "lr-negative": (lambda _: [*S, "--lr", "-1"], "lr must be > 0"),
    "l2-infinite": (lambda _: [*S, "--l2", "inf"], "l2 must be finite"),
    "dropout-one": (lambda _: [*S, "--dropout", "1"], "dropout must be < 1"),
    "epochs-zero": (lambda _: [*T, "--epochs", "0"], "epochs must be >= 1"),
    "epochs-fraction": (lambda _: [*T, "--epochs", "1.5"], "--epochs"),
    "batch-size-zero": (lambda _: [*S, "--batch-size", "0"], "batch_size must be >= 1"),
    "seed-negative": (lambda _: [*S, "--seed", "-1"], "seed must be >= 0"),
    "hidden-zero": (lambda _: [*S, "--hidden", "10,0"], "--hidden"),
    "hidden-not-integers": (lambda _: [*S, "--hidden", "10,x"], "--hidden"),
    # sizes beyond memory, and a diverging run
    # 10**13 hidden units: float64 draws of 160 TB, beyond any 64-bit address space, with or without overcommit
    "hidden-beyond-memory": (lambda _: [*S, "--hidden", str(10**13)], "out of memory: the 2-10000000000000-3 network"),
    "hidden-beyond-any-machine": (lambda _: [*S, "--hidden", "99999999999999999999"], "more than any machine"),
    "lr-diverges": (lambda _: [*S, "--optimizer", "sgd", "--lr", "1e9"], "the loss became"),
    # missing files and folders
    "resume-missing": (lambda _: [*T, "--resume", "gone.st"], "gone.st"),
    "model-missing": (lambda _: [*E, "--model", "gone.st"], "gone.st"),
    "mnist-missing": (lambda _: [*T, "--dataset", "mnist:gone.npz"], "gone.npz"),
    "save-folder-missing": (lambda _: [*S, "--save", "no/m.st"], "--save: the folder"),
    "plot-folder-missing": (lambda _: [*S, "--plot", "no/c.png"], "--plot: the folder"),
    "model-under-a-file": (lambda f: [*E, "--model", f"{_write(f, 'notes', b'x')}/m.st"], "Not a directory"),
    "save-empty": (lambda _: [*S, "--save", ""], "--save must name a file"),
    "model-empty": (lambda _: [*E, "--model", ""], "path must name a file"),
    # folders as files
    "resume-folder": (lambda _: [*T, "--resume", "."], "is a folder"),
    "model-folder": (lambda _: [*E, "--model", "."], "is a folder"),
    "save-folder": (lambda _: [*S, "--save", "."], "is a folder"),
    "plot-folder": (lambda _: [*S, "--plot", "."], "is a folder"),
    "mnist-empty-folder": (lambda _: [*T, "--dataset", "mnist:."], "MNIST files missing"),
    # files that are no data
    "model-garbage": (lambda f: [*E, "--model", _write(f, "g.st", GARBAGE)], "not a gpunn checkpoint"),
    "model-sparse-4-gib": (lambda f: [*E, "--model", _sparse(f)], "not valid JSON"),
    "mnist-garbage": (lambda f: [*T, "--dataset", f"mnist:{_write(f, 'g.npz', b'garbage')}"], "not an MNIST file"),
    "mnist-bad-idx": (lambda f: [*T, "--dataset", f"mnist:{_idx_folder(f)}"], "train-images-idx3-ubyte"),
    "dataset-unknown": (lambda _: [*T, "--dataset", "foo"], "unknown dataset"),
    "dataset-mnist-without-path": (lambda _: [*T, "--dataset", "mnist"], "needs a path"),
    "dataset-spiral-with-path": (lambda _: [*T, "--dataset", "spiral:x"], "takes no path"),
    # outputs that would overwrite an input or each other
    "save-is-plot": (lambda _: [*S, "--save", "x", "--plot", "x"], "name the same file"),
    "plot-is-resume": (lambda f: [*T, "--resume", _checkpoint(f), "--plot", "run.st"], "name the same file"),
    "save-is-dataset": (lambda f: [*T, "--dataset", f"mnist:{_mnist(f)}", "--save", "d.npz"], "name the same file"),
    "bench-json-is-plot": (lambda _: ["bench", "--devices", "cpu", "--json", "x", "--plot", "x"], "name the same file"),
    "resume-epochs-done": (lambda f: [*T, "--resume", _checkpoint(f, epoch=2), "--epochs", "2"], "must exceed"),
}
POSIX_CASES: dict[str, tuple[Case, str]] = {
    "model-fifo": (lambda f: [*E, "--model", _fifo(f)], "is a FIFO"),
    "resume-fifo": (lambda f: [*T, "--resume", _fifo(f)], "is a FIFO"),
    "mnist-fifo": (lambda f: [*T, "--dataset", f"mnist:{_fifo(f)}"], "is a FIFO"),
    "save-fifo": (lambda f: [*S, "--save", _fifo(f)], "is a FIFO"),
    "plot-fifo": (lambda f: [*S, "--plot", _fifo(f)], "is a FIFO"),
    "model-dev-zero": (lambda f: [*E, "--model", _link(f, "zero.st", "/dev/zero")], "is a character device"),
    "save-dev-null": (lambda f: [*S, "--save", _link(f, "null.st", "/dev/null")], "is a character device"),
    "save-read-only": (lambda f: [*S, "--save", _write(f, "ro.st", b"", 0o444)], "is read-only (mode 0444)"),
    "resume-read-only": (lambda f: [*T, "--resume", _ro_checkpoint(f)], "(--save NEW_PATH)"),
    "plot-hard-link-to-dataset": (
        lambda f: [*T, "--dataset", f"mnist:{_mnist(f)}", "--plot", _hard_link(f, "d.npz", "h.png")],
        "name the same file",
    ),
    "save-link-to-dataset": (
        lambda f: [*T, "--dataset", f"mnist:{_mnist(f)}", "--save", _link(f, "l.st", "d.npz")],
        "name the same file",
    ),
    "save-into-idx-folder": (
        lambda f: [*T, "--dataset", f"mnist:{_idx_folder(f)}", "--save", "idx/train-images-idx3-ubyte"],
        "name the same file",
    ),
    "model-unreadable": (lambda f: [*E, "--model", _write(f, "secret.st", b"x", 0o000)], "Permission denied"),
}


def _ro_checkpoint(folder: Path) -> str:
    name = _checkpoint(folder)
    (folder / name).chmod(0o444)
    return name


def _hard_link(folder: Path, target: str, name: str) -> str:
    os.link(folder / target, folder / name)
    return name


def _params() -> list:
    params = [pytest.param(name, id=name) for name in CASES]
    for name in POSIX_CASES:
        marks = [pytest.mark.skipif(not POSIX, reason="POSIX files")]
        if name == "model-unreadable":
            marks.append(pytest.mark.skipif(POSIX and os.geteuid() == 0, reason="root reads any file"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.mark.parametrize("name", _params())
def test_a_bad_invocation_prints_one_line_and_fails(tmp_path: Path, name: str) -> None:
    build, expected = {**CASES, **POSIX_CASES}[name]
    args = build(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_DEVICE"}
    result = subprocess.run(
        [sys.executable, "-m", "gpunn", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,  # a FIFO read without care would wait for ever
        check=False,
    )
    assert result.returncode != 0, f"exit 0 for {args}\nstdout:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunn "), f"expected one line on stderr, got:\n{result.stderr}"
    assert expected in lines[0], lines[0]
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file() and p.name in before}
    assert after == before, "a refused run changed a file"


@pytest.mark.parametrize(
    ("flag", "name", "expected"),
    [
        ("--json", "missing/r.json", "--json: the folder"),
        ("--plot", "missing/r.png", "--plot: the folder"),
        ("--json", ".", "--json '.' is a folder"),
        ("--plot", "ro.png", "--plot 'ro.png' is read-only"),
    ],
)
def test_bench_refuses_an_unwritable_output_before_measuring(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    name: str,
    expected: str,
) -> None:
    if flag == "--plot":
        pytest.importorskip("matplotlib")

    def measure(*args: object, **kwargs: object) -> None:
        raise AssertionError("gpunn bench measured before checking its output paths")

    monkeypatch.setattr(bench, "run", measure)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "ro.png", b"", 0o444)
    assert main(["bench", "--devices", "cpu", flag, name]) == 2
    (line,) = capsys.readouterr().err.splitlines()  # the error alone: no plan, no progress
    assert line.startswith(f"gpunn bench: error: {expected}"), line
