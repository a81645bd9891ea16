"""The examples a newcomer reads first must run and reach what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_two_layer_net_learns_the_spiral() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "two_layer_net.py"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    epochs = re.findall(r"^epoch\s+(\d+)\s+cost ([\d.]+)\s+objective ([\d.]+)$", result.stdout, re.MULTILINE)
    assert len(epochs) == 60, "one line per epoch"
    costs = [float(c) for _, c, _ in epochs]
    assert costs[-1] < 0.5 * costs[0], "the cost must fall"
    assert all(float(o) >= float(c) for _, c, o in epochs), "objective = cost + a non-negative penalty"
    accuracy = float(re.search(r"training accuracy: ([\d.]+)", result.stdout).group(1))
    assert accuracy >= 0.95
    assert "W^[1]" in result.stdout and "b^[2]" in result.stdout  # the summary in the seed's notation


def test_train_digits_trains_plots_saves_and_reloads(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), "--device", "cpu", "--epochs", "15"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy ([\d.]+)", result.stdout).group(1))
    assert accuracy >= 0.95
    assert "diagnosis:" in result.stdout
    assert "predicts the same: True" in result.stdout
    assert (tmp_path / "digits_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "digits.safetensors").stat().st_size > 0
