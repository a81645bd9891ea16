"""README.md must stay true: its Python example runs and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gpunn as gn

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


# The README's examples leave the device to gpunn ("the best one present"): cuda:0 under ci/gpu-check.
@pytest.mark.default_device
def test_readme_python_example_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert len(blocks) == 3, "README.md lost a Python example"
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert float(namespace["objective"]) < 0.9  # log(3) ≈ 1.10 at the start; it must have learned
    assert "W^[1]" in capsys.readouterr().out


@pytest.mark.default_device
def test_readme_trainer_example_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    block = re.findall(r"```python\n(.*?)```", README, re.DOTALL)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["trainer"].evaluate(namespace["x_test"], namespace["y_test"])["accuracy"] >= 0.95
    assert "diagnosis:" in capsys.readouterr().out
    assert (tmp_path / "digits.safetensors").is_file()
    assert namespace["model"].device == namespace["model"].parameters()[0].device


def test_readme_starts_with_the_two_commands() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.DOTALL)[:2]
    assert commands[0] == 'pip install ".[cuda12]" && gpunn train'
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest'


@pytest.mark.default_device
def test_readme_sklearn_example_runs() -> None:
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415 — an optional extra

    block = re.findall(r"```python\n(.*?)```", README, re.DOTALL)[2]
    x, y = gn.data.load_digits()
    (x_train, y_train), (x_test, y_test) = gn.data.split(x / 16.0, y, fractions=(0.75, 0.25), seed=0)
    namespace: dict = {"X_train": x_train, "y_train": y_train, "X_test": x_test, "y_test": y_test}
    # On digits scaled to [0, 1] the default 200 epochs end before the tol rule stops the fit,
    # with scikit-learn's own MLPClassifier too: the same ConvergenceWarning, expected here.
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["clf"].n_iter_ == 200
    assert namespace["clf"].score(x_test, y_test) >= 0.95
