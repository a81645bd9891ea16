"""README.md must stay true: every Python block runs as printed and shows what it promises, it
starts with the two commands CI reads, and it stays short."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def _accuracies(stdout: str, pattern: str) -> list[float]:
    return [float(a) for a in re.findall(pattern, stdout)]


def _trainer(stdout: str, folder: Path) -> None:
    (accuracy,) = _accuracies(stdout, r"'accuracy': ([\d.]+)")
    assert accuracy >= 0.95
    assert "diagnosis:" in stdout
    assert (folder / "digits.safetensors").stat().st_size > 0


def _step_by_step(stdout: str, folder: Path) -> None:
    # learning shows: from chance (10 classes) to over 90 % in five epochs, rising on the way
    (before,) = _accuracies(stdout, r"before training: test accuracy ([\d.]+)")
    epochs = _accuracies(stdout, r"epoch \d: test accuracy ([\d.]+)")
    assert len(epochs) == 5 and before < 0.3 and epochs[-1] >= 0.9
    assert before < epochs[0] < epochs[-1]


def _sklearn(stdout: str, folder: Path) -> None:
    (accuracy,) = _accuracies(stdout, r"test accuracy: ([\d.]+)")
    assert accuracy >= 0.95


# what each block must show, by a call only that block makes
CHECKS: dict[str, Callable[[str, Path], None]] = {
    "gn.Trainer(": _trainer,
    "gn.data.batches(": _step_by_step,
    "MLPClassifier(": _sklearn,
}


def _first_call(block: str) -> str:
    return next((marker for marker in CHECKS if marker in block), block.splitlines()[0])


@pytest.mark.parametrize("block", BLOCKS, ids=[_first_call(b) for b in BLOCKS])
def test_every_python_block_runs_as_printed(block: str, tmp_path: Path) -> None:
    if "sklearn" in block:
        pytest.importorskip("sklearn")
    # The blocks leave the device to gpunn; GPUNN_DEVICE=cpu is how a user pins it, and it must be
    # enough (the simulated GPU of tests/conftest.py stays on in the subprocess otherwise).
    result = subprocess.run(
        [sys.executable, "-c", block],
        env={**os.environ, "GPUNN_DEVICE": "cpu"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a reader's first run prints no warning"
    for marker, check in CHECKS.items():
        if marker in block:
            check(result.stdout, tmp_path)


def test_every_promise_has_its_block() -> None:
    for marker in CHECKS:
        assert sum(marker in block for block in BLOCKS) == 1, f"README.md lost (or doubled) its {marker} example"


def test_readme_starts_with_the_two_commands() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.DOTALL)[:2]
    assert commands[0] == 'pip install ".[cuda12]" && gpunn train'
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest'


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 155, "README.md is for users; details belong in docs/"


def test_the_speed_figures_are_those_of_the_committed_runs() -> None:
    """The README's table and scikit-learn ratio are the runs benchmarks/README.md cites."""
    cited = (ROOT / "benchmarks" / "README.md").read_text()
    bench_file = re.search(r"Result: `(results/[^`]+\.json)`", cited).group(1)
    bench = json.loads((ROOT / "benchmarks" / bench_file).read_text())
    rows = re.findall(r"^\| ([\d-]+), (\d+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", README, re.MULTILINE)
    assert len(rows) == 3
    for sizes, batch, samples, over_numpy, over_torch in rows:
        matching = [r for r in bench["results"] if "-".join(map(str, r["sizes"])) == sizes]
        (result,) = [r for r in matching if r["batch"] == int(batch)]
        assert samples == f"{result['gpunn']['samples_per_s']:,.0f}"
        assert (over_numpy, over_torch) == (f"{result['gpunn_over_numpy']:.2f}", f"{result['gpunn_over_torch']:.2f}")
    sklearn_file = re.search(r"--json benchmarks/(results/sklearn-digits[^ `]+\.json)", cited).group(1)
    speedup = json.loads((ROOT / "benchmarks" / sklearn_file).read_text())["speedup_paired"]
    assert f"fit the digits {speedup:.2f}× faster" in README
