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
