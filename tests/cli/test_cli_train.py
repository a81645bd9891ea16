"""`gpunn train` and `gpunn evaluate` in fresh processes: every flag, resume, and clean errors.

Each run is ``python -m gpunn ...`` in a subprocess whose working folder is a temporary one;
checkpoints are read back with ``gn.checkpoint.read`` / ``gn.load`` on the CPU. Runs are kept
to a few epochs of the spiral data set except where a requirement needs the defaults, and ask
for ``--device cpu`` unless gpunn's own choice of device is what the test is about (those carry
``default_device``): under ci/gpu-check that choice is cuda:0.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpunn as gn
from gpunn.cli import job

TIMEOUT = 120
NO_GPU = pytest.mark.no_gpu  # about the CPU fallback: skipped where a GPU is usable (tests/conftest.py)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = {
    "device",
    "dataset",
    "epochs",
    "train_accuracy",
    "dev_accuracy",
    "test_accuracy",
    "samples_per_s",
    "seconds",
    "diagnosis",
    "checkpoint",
}
ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "identity"]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]


# ----------------------------------------------------------------------------- helpers


def run_gpunn(
    *args: str, cwd: Path, env: dict[str, str] | None = None, script: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m gpunn ARGS`` (or ``python SCRIPT ARGS``) in ``cwd``, without a TTY, with
    GPUNN_DEVICE unset unless ``env`` sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "GPUNN_DEVICE"}
    full_env.update(env or {})
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "gpunn"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def one_json_object(stdout: str) -> dict[str, Any]:
    """The single JSON object that makes up all of ``stdout`` (nothing before or after it)."""
    text = stdout.strip()
    assert text.startswith("{"), f"stdout does not start with a JSON object:\n{stdout}"
    value, end = json.JSONDecoder().raw_decode(text)
    assert end == len(text), f"stdout holds more than one JSON object:\n{stdout}"
    assert isinstance(value, dict)
    return value


def train_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return one_json_object(ok(run_gpunn("train", "--json", *args, cwd=cwd, env=env)).stdout)


def weights(path: Path) -> list[np.ndarray]:
    model = gn.load(path, device="cpu")
    return [np.array(gn.to_numpy(p.data)) for p in model.parameters()]


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def layer_types(checkpoint: Any) -> list[str]:
    return [layer["type"] for layer in checkpoint.architecture["layers"]]


def linear_sizes(checkpoint: Any) -> list[tuple[int, int]]:
    return [(c["n_in"], c["n_out"]) for c in checkpoint.architecture["layers"] if c["type"] == "Linear"]


def assert_clean_error(result: subprocess.CompletedProcess) -> None:
    """Non-zero exit, exactly one non-empty line on stderr naming an error, no traceback."""
    assert result.returncode != 0, f"expected a failure, got exit 0\nstdout:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got:\n{result.stderr}"
    assert "error" in lines[0], lines[0]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short spiral run with a checkpoint (seed 0, default lr/l2), shared by comparisons."""
    folder = tmp_path_factory.mktemp("baseline")
    result = train_json(
        "--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--save", "base.safetensors", cwd=folder
    )
    path = folder / "base.safetensors"
    return {"json": result, "path": path, "weights": weights(path), "folder": folder}


# ----------------------------------------------------------------------------- the defaults


@pytest.mark.default_device  # every default, the device too: cuda:0 under ci/gpu-check
def test_defaults_reach_97_percent_on_digits(tmp_path: Path) -> None:
    result = train_json(cwd=tmp_path)
    missing = SUMMARY_KEYS - set(result)
    assert not missing, f"--json lacks {sorted(missing)}"
    print(
        f"\ngpunn train (defaults): test accuracy {result['test_accuracy']:.4f} in {result['seconds']:.1f} s "
        f"on {result['device']} ({result['samples_per_s']:,.0f} samples/s) — time reported, not asserted"
    )
    assert result["dataset"] == "digits"
    assert result["epochs"] == 40
    assert result["checkpoint"] is None
    assert result["test_accuracy"] >= 0.97
    assert 0.0 <= result["train_accuracy"] <= 1.0 and 0.0 <= result["dev_accuracy"] <= 1.0
    assert result["samples_per_s"] > 0 and result["seconds"] > 0
    assert isinstance(result["diagnosis"], dict) and result["diagnosis"]["verdict"]
    assert result["device"] == str(gn.device("auto"))  # gpunn's own choice (GPUNN_DEVICE is unset for the run)


@pytest.mark.default_device  # the device line names gpunn's own choice, and says why when it is the CPU
def test_text_output_without_tty_has_accuracy_and_diagnosis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)  # as for the run: gn.device() and gn.why_cpu() answer for it
    result = ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", cwd=tmp_path))
    lines = result.stdout.splitlines()
    assert any(line.startswith("diagnosis:") for line in lines), result.stdout
    assert any(line.startswith("accuracy: train ") and "test " in line for line in lines), result.stdout
    assert result.stderr == "", f"no progress bar or warnings without a TTY, got:\n{result.stderr}"
    assert not result.stdout.lstrip().startswith("{")  # text, not JSON
    reason = gn.why_cpu()  # None where gpunn picks a GPU
    assert f"device: {gn.device()}" + (f" (the CPU, because {reason})" if reason else "") in lines, result.stdout


# ----------------------------------------------------------------------------- resume


def test_resume_in_new_process_is_bit_identical(tmp_path: Path) -> None:
    common = ("--device", "cpu", "--quiet")
    ok(run_gpunn("train", "--epochs", "10", "--save", "a.safetensors", *common, cwd=tmp_path))
    ok(run_gpunn("train", "--epochs", "5", "--save", "b.safetensors", *common, cwd=tmp_path))
    halfway = gn.checkpoint.read(tmp_path / "b.safetensors", "cpu")
    assert len(halfway.metadata["history"]["records"]) == 5
    ok(run_gpunn("train", "--epochs", "10", "--resume", "b.safetensors", *common, cwd=tmp_path))

    straight, resumed = weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors")
    assert len(straight) == 4
    for i, (x, y) in enumerate(zip(straight, resumed, strict=True)):
        assert x.dtype == y.dtype and np.array_equal(x, y), f"parameter {i} differs after resume"

    checkpoint = gn.checkpoint.read(tmp_path / "b.safetensors", "cpu")
    history = gn.History.from_dict(checkpoint.metadata["history"])
    assert len(history) == 10
    assert history["epoch"] == list(range(1, 11))
    assert checkpoint.metadata["epoch"] == 10
    reference = gn.checkpoint.read(tmp_path / "a.safetensors", "cpu")
    assert checkpoint.optimizer_info["step"] == reference.optimizer_info["step"]
    assert history["cost"] == gn.History.from_dict(reference.metadata["history"])["cost"]


# ----------------------------------------------------------------------------- --dataset


def test_dataset_spiral(baseline: dict[str, Any]) -> None:
    result = baseline["json"]
    assert result["dataset"] == "spiral"
    checkpoint = gn.checkpoint.read(baseline["path"], "cpu")
    assert linear_sizes(checkpoint) == [(2, 100), (100, 3)]  # 2-D points, 3 arms
    assert checkpoint.metadata["config"]["dataset"] == "spiral"


def test_dataset_digits_explicit(tmp_path: Path) -> None:
    args = ("--dataset", "digits", "--epochs", "2", "--device", "cpu")
    result = train_json(*args, "--save", "d.safetensors", cwd=tmp_path)
    assert result["dataset"] == "digits"
    assert linear_sizes(gn.checkpoint.read(tmp_path / "d.safetensors", "cpu")) == [(64, 100), (100, 10)]


def write_tiny_mnist(path: Path, n_train: int = 200, n_test: int = 50) -> None:
    rng = np.random.default_rng(7)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train, dtype=np.uint8) % 10,
        x_test=rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8) % 10,
    )


def test_dataset_mnist_npz_trains_and_evaluates(tmp_path: Path) -> None:
    write_tiny_mnist(tmp_path / "tiny.npz")
    spec = f"mnist:{tmp_path / 'tiny.npz'}"
    result = train_json(
        "--dataset", spec, "--epochs", "2", "--hidden", "16", "--device", "cpu", "--save", "m.safetensors", cwd=tmp_path
    )
    assert result["dataset"] == spec
    assert result["epochs"] == 2
    for key in ("train_accuracy", "dev_accuracy", "test_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert linear_sizes(gn.checkpoint.read(tmp_path / "m.safetensors", "cpu")) == [(784, 16), (16, 10)]
    # the test part is the .npz's own 50 images: accuracy is a multiple of 1/50
    assert math.isclose(result["test_accuracy"] * 50, round(result["test_accuracy"] * 50), abs_tol=1e-9)
    evaluated = run_gpunn("evaluate", "--model", "m.safetensors", "--device", "cpu", "--json", cwd=tmp_path)
    evaluated = one_json_object(ok(evaluated).stdout)
    assert evaluated["dataset"] == spec
    assert abs(evaluated["accuracy"] - result["test_accuracy"]) <= 1e-9


# ----------------------------------------------------------------------------- architecture flags


def test_hidden_sizes_in_summary_and_checkpoint(tmp_path: Path) -> None:
    args = ("train", "--dataset", "spiral", "--hidden", "32,16", "--epochs", "2", "--device", "cpu")
    result = ok(run_gpunn(*args, "--save", "h.st", cwd=tmp_path))
    for layer in ("Linear(2 → 32, relu)", "Linear(32 → 16, relu)", "Linear(16 → 3)"):
        assert layer in result.stdout, result.stdout
    checkpoint = gn.checkpoint.read(tmp_path / "h.st", "cpu")
    assert linear_sizes(checkpoint) == [(2, 32), (32, 16), (16, 3)]
    assert checkpoint.metadata["config"]["hidden"] == [32, 16]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_runs(tmp_path: Path, activation: str) -> None:
    args = ("--dataset", "spiral", "--epochs", "1", "--device", "cpu", "--hidden", "8,8", "--activation", activation)
    result = train_json(*args, "--save", "act.st", cwd=tmp_path)
    assert result["epochs"] == 1
    checkpoint = gn.checkpoint.read(tmp_path / "act.st", "cpu")
    assert checkpoint.metadata["config"]["activation"] == activation
    assert layer_types(checkpoint) == ["Linear"] * 3  # gn.mlp fuses each hidden activation into its Linear
    activations = [layer["activation"] for layer in checkpoint.architecture["layers"]]
    assert activations == [activation, activation, None]  # the output layer's logits: none


def test_bad_activation_is_rejected_in_one_line(tmp_path: Path) -> None:
    result = run_gpunn("train", "--dataset", "spiral", "--epochs", "1", "--activation", "swish", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_error(result)
    assert "--activation" in result.stderr and "swish" in result.stderr


def test_dropout_adds_dropout_layers(baseline: dict[str, Any], tmp_path: Path) -> None:
    result = train_json(
        "--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--dropout", "0.5", "--save", "d.st", cwd=tmp_path
    )
    assert result["config"]["dropout"] == 0.5
    checkpoint = gn.checkpoint.read(tmp_path / "d.st", "cpu")
    dropouts = [c for c in checkpoint.architecture["layers"] if c["type"] == "Dropout"]
    assert [c["p"] for c in dropouts] == [0.5]  # one hidden layer → one Dropout after it
    assert "Dropout" not in layer_types(gn.checkpoint.read(baseline["path"], "cpu"))
    # same seed, same everything else: only dropout differs, so the weights do too
    assert not same_weights(weights(tmp_path / "d.st"), baseline["weights"])


# ----------------------------------------------------------------------------- optimization flags


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_runs_one_epoch_on_spiral(tmp_path: Path, optimizer: str) -> None:
    args = ("--dataset", "spiral", "--epochs", "1", "--device", "cpu", "--optimizer", optimizer)
    result = train_json(*args, "--save", "o.st", cwd=tmp_path)
    assert result["epochs"] == 1
    assert 0.0 <= result["test_accuracy"] <= 1.0
    checkpoint = gn.checkpoint.read(tmp_path / "o.st", "cpu")
    assert checkpoint.metadata["config"]["optimizer"] == optimizer
    assert checkpoint.optimizer_info["type"] == type(gn.optim.create(optimizer, lr=0.1)).__name__
    assert checkpoint.optimizer_info["step"] > 0


def test_bad_optimizer_is_rejected(tmp_path: Path) -> None:
    result = run_gpunn("train", "--dataset", "spiral", "--epochs", "1", "--optimizer", "lbfgs", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_error(result)


def test_lr_is_used(baseline: dict[str, Any], tmp_path: Path) -> None:
    result = train_json(
        "--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--lr", "0.05", "--save", "lr.st", cwd=tmp_path
    )
    assert result["config"]["lr"] == 0.05
    checkpoint = gn.checkpoint.read(tmp_path / "lr.st", "cpu")
    assert checkpoint.optimizer_info["hyper"]["lr"] == 0.05
    assert gn.History.from_dict(checkpoint.metadata["history"])["lr"] == [0.05] * 3
    assert not same_weights(weights(tmp_path / "lr.st"), baseline["weights"])


def test_l2_zero_and_positive(baseline: dict[str, Any], tmp_path: Path) -> None:
    result = train_json(
        "--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--l2", "0", "--save", "l0.st", cwd=tmp_path
    )
    assert result["config"]["l2"] == 0.0
    history = gn.History.from_dict(gn.checkpoint.read(tmp_path / "l0.st", "cpu").metadata["history"])
    assert history["objective"] == history["cost"]  # no penalty
    assert baseline["json"]["config"]["l2"] == 1e-4
    base_history = gn.History.from_dict(gn.checkpoint.read(baseline["path"], "cpu").metadata["history"])
    assert all(o > c for o, c in zip(base_history["objective"], base_history["cost"], strict=True))
    # everything else equal: the penalty's gradient changes the trained weights
    assert not same_weights(weights(tmp_path / "l0.st"), baseline["weights"])


def test_epochs_sets_history_length(tmp_path: Path) -> None:
    result = train_json("--dataset", "spiral", "--epochs", "4", "--device", "cpu", "--save", "e.st", cwd=tmp_path)
    assert result["epochs"] == 4
    checkpoint = gn.checkpoint.read(tmp_path / "e.st", "cpu")
    history = gn.History.from_dict(checkpoint.metadata["history"])
    assert len(history) == 4 and history["epoch"] == [1, 2, 3, 4]
    assert checkpoint.metadata["epoch"] == 4


def test_batch_size_sets_steps_per_epoch(tmp_path: Path) -> None:
    from gpunn.cli.job import raw_splits  # noqa: PLC0415

    n_train = len(raw_splits("spiral", 0)["train"][1])
    args = ("--dataset", "spiral", "--epochs", "2", "--device", "cpu", "--batch-size", "50")
    result = train_json(*args, "--save", "bs.st", cwd=tmp_path)
    assert result["config"]["batch_size"] == 50
    checkpoint = gn.checkpoint.read(tmp_path / "bs.st", "cpu")
    assert checkpoint.optimizer_info["step"] == 2 * math.ceil(n_train / 50)


def test_seed_reproduces_and_varies(baseline: dict[str, Any], tmp_path: Path) -> None:
    args = ("--dataset", "spiral", "--epochs", "3", "--device", "cpu")
    again = train_json(*args, "--seed", "0", "--save", "s0.st", cwd=tmp_path)
    other = train_json(*args, "--seed", "1", "--save", "s1.st", cwd=tmp_path)
    assert again["test_accuracy"] == baseline["json"]["test_accuracy"]
    assert same_weights(weights(tmp_path / "s0.st"), baseline["weights"])
    assert other["config"]["seed"] == 1
    assert not same_weights(weights(tmp_path / "s1.st"), baseline["weights"])


# ----------------------------------------------------------------------------- devices


def test_device_cpu(baseline: dict[str, Any]) -> None:
    assert baseline["json"]["device"] == "cpu"
    assert gn.load(baseline["path"], device="cpu").device == gn.device("cpu")


@NO_GPU
def test_device_cuda_without_gpu_fails_in_one_line(tmp_path: Path) -> None:
    result = run_gpunn("train", "--dataset", "spiral", "--epochs", "1", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_error(result)
    assert gn.why_cpu() in result.stderr  # says why there is no GPU
    assert result.stdout == ""


# ----------------------------------------------------------------------------- output flags


SPY = textwrap.dedent(
    """
    import os
    import sys

    import gpunn
    import gpunn.cli.job
    import gpunn.io.checkpoint as checkpoint

    original = checkpoint.save

    def spy(path, model, optimizer=None, metadata=None):
        written = original(path, model, optimizer, metadata)
        on_disk = checkpoint.read(path, "cpu").metadata
        print("saved epoch", metadata["epoch"], "on disk", on_disk["epoch"], file=sys.stderr)
        return written

    checkpoint.save = gpunn.save = gpunn.cli.job.save = spy
    gpunn.cli.job.SAVE_INTERVAL_S = float(os.environ.get("SPY_SAVE_INTERVAL_S", gpunn.cli.job.SAVE_INTERVAL_S))
    from gpunn.cli.main import main

    sys.exit(main(sys.argv[1:]))
    """
)


def test_save_writes_a_loadable_checkpoint_every_few_seconds_and_at_the_end(tmp_path: Path) -> None:
    """Each save fsyncs: a quick run saves once, after its last epoch; with the interval at 0 s,
    after every epoch, each checkpoint whole on disk when the next epoch starts."""
    spy = tmp_path / "spy.py"
    spy.write_text(SPY)
    args = ["train", "--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--save", "every.st", "--json"]
    quick = ok(run_gpunn(*args, cwd=tmp_path, script=spy))
    assert quick.stderr.splitlines() == ["saved epoch 3 on disk 3"]
    result = ok(run_gpunn(*args, cwd=tmp_path, script=spy, env={"SPY_SAVE_INTERVAL_S": "0"}))
    assert result.stderr.splitlines() == [f"saved epoch {e} on disk {e}" for e in (1, 2, 3)]
    summary = one_json_object(result.stdout)
    assert summary["checkpoint"] == str((tmp_path / "every.st").resolve())
    model = gn.load(tmp_path / "every.st", device="cpu")
    assert isinstance(model, gn.Sequential)
    assert gn.checkpoint.read(tmp_path / "every.st", "cpu").metadata["epoch"] == 3
    assert not list(tmp_path.glob(".every.st.*.tmp"))  # no temporary files left behind


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = train_json("--dataset", "spiral", "--epochs", "2", "--device", "cpu", "--plot", "curves.png", cwd=tmp_path)
    png = tmp_path / "curves.png"
    assert result["plot"] == str(png.resolve())
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 1000


def test_json_is_exactly_one_object(baseline: dict[str, Any], tmp_path: Path) -> None:
    result = ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", "--device", "cpu", "--json", cwd=tmp_path))
    value = one_json_object(result.stdout)
    assert len(result.stdout.strip().splitlines()) == 1
    assert set(value) >= SUMMARY_KEYS
    assert "model" not in value  # the summary table is text, not part of the JSON
    assert result.stderr == ""
    json.dumps(value, allow_nan=False)  # plain JSON values only


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    args = ("train", "--dataset", "spiral", "--epochs", "2", "--device", "cpu", "--quiet", "--save", "q.st")
    result = ok(run_gpunn(*args, cwd=tmp_path))
    assert result.stdout == ""
    assert result.stderr == ""
    assert (tmp_path / "q.st").is_file()  # it did train


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_matches_train_test_accuracy(baseline: dict[str, Any]) -> None:
    folder = baseline["folder"]
    # on the CPU, where the baseline trained: the figures agree to rounding only on the same device
    evaluate = ("evaluate", "--model", "base.safetensors", "--device", "cpu")
    evaluated = one_json_object(ok(run_gpunn(*evaluate, "--json", cwd=folder)).stdout)
    assert evaluated["dataset"] == "spiral"
    assert evaluated["device"] == "cpu"
    assert abs(evaluated["accuracy"] - baseline["json"]["test_accuracy"]) <= 1e-9
    assert abs(evaluated["loss"] - baseline["json"]["test_loss"]) <= 1e-6

    text = ok(run_gpunn(*evaluate, "--dataset", "spiral", cwd=folder)).stdout
    assert f"accuracy {baseline['json']['test_accuracy']:.4f}" in text


def test_evaluate_warns_in_one_line_about_nan_weights(baseline: dict[str, Any], tmp_path: Path) -> None:
    saved = gn.checkpoint.read(baseline["path"], "cpu")
    saved.model[0].W.data[0, 0] = np.nan
    gn.save(tmp_path / "nan.st", saved.model, metadata=saved.metadata)
    result = ok(run_gpunn("evaluate", "--model", "nan.st", "--device", "cpu", cwd=tmp_path))
    assert result.stderr.splitlines() == [
        "gpunn evaluate: warning: nan.st: 'model/0.W' holds NaN or infinite values; the model's outputs will be "
        "NaN (saved from a run that diverged?)"
    ]


def test_evaluate_checkpoint_without_scaler_fails_cleanly(tmp_path: Path) -> None:
    """A checkpoint with a run config but no standardization statistics (hand-written with
    gn.save) must be refused with one line, not a KeyError traceback."""
    model = gn.mlp([2, 4, 3])
    gn.save(tmp_path / "noscaler.st", model, metadata={"config": {"dataset": "spiral"}})
    assert_clean_error(run_gpunn("evaluate", "--model", "noscaler.st", "--device", "cpu", cwd=tmp_path))


# ----------------------------------------------------------------------------- errors


def _corrupt(folder: Path) -> str:
    (folder / "corrupt.safetensors").write_bytes(np.random.default_rng(3).bytes(4096))
    return "corrupt.safetensors"


def _truncated(folder: Path) -> str:
    model = gn.mlp([2, 8, 3])
    full = gn.save(folder / "full.safetensors", model, metadata={"epoch": 1}).read_bytes()
    (folder / "cut.safetensors").write_bytes(full[: len(full) - 40])
    return "cut.safetensors"


SPIRAL_1 = ("--dataset", "spiral", "--epochs", "1")
ERROR_CASES = {
    "lr-not-a-number": lambda _: ["train", *SPIRAL_1, "--lr", "abc"],
    "lr-negative": lambda _: ["train", *SPIRAL_1, "--lr", "-1"],
    "epochs-zero": lambda _: ["train", "--dataset", "spiral", "--epochs", "0"],
    "hidden-not-integers": lambda _: ["train", *SPIRAL_1, "--hidden", "10,x"],
    "dataset-unknown": lambda _: ["train", "--epochs", "1", "--dataset", "foo"],
    "dataset-mnist-without-path": lambda _: ["train", "--epochs", "1", "--dataset", "mnist"],
    "dataset-mnist-missing": lambda _: ["train", "--epochs", "1", "--dataset", "mnist:/nonexistent"],
    "resume-missing": lambda _: ["train", *SPIRAL_1, "--resume", "/nonexistent"],
    "evaluate-model-missing": lambda _: ["evaluate", "--model", "/nonexistent"],
    "evaluate-corrupt-checkpoint": lambda folder: ["evaluate", "--model", _corrupt(folder)],
    "evaluate-truncated-checkpoint": lambda folder: ["evaluate", "--model", _truncated(folder)],
    "evaluate-without-model": lambda _: ["evaluate"],
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_print_one_line_without_traceback(tmp_path: Path, case: str) -> None:
    result = run_gpunn(*ERROR_CASES[case](tmp_path), cwd=tmp_path)
    assert_clean_error(result)
    assert result.returncode == 2


def test_resume_missing_file_names_it(tmp_path: Path) -> None:
    result = run_gpunn("train", *SPIRAL_1, "--resume", "gone.safetensors", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_error(result)
    assert "gone.safetensors" in result.stderr
    assert not (tmp_path / "gone.safetensors").exists()


# ----------------------------------------------------------------------------- resume and output checks


def test_resume_refuses_settings_that_differ_from_the_saved_run(tmp_path: Path) -> None:
    cpu = ("--device", "cpu", "--quiet")
    ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", "--save", "s.st", *cpu, cwd=tmp_path))
    result = run_gpunn("train", "--resume", "s.st", "--epochs", "4", "--lr", "0.5", *cpu, cwd=tmp_path)
    assert_clean_error(result)
    assert "--lr 0.5 conflicts" in result.stderr
    # repeating a saved setting is fine
    ok(run_gpunn("train", "--resume", "s.st", "--epochs", "3", "--dataset", "spiral", *cpu, cwd=tmp_path))
    assert gn.checkpoint.read(tmp_path / "s.st", "cpu").metadata["epoch"] == 3


def test_resume_says_where_it_started_and_without_epochs_trains_a_fresh_runs_count(tmp_path: Path) -> None:
    cpu = ("--device", "cpu")
    ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", "--save", "s.st", "--quiet", *cpu, cwd=tmp_path))
    more = train_json("--resume", "s.st", *cpu, cwd=tmp_path)  # no --epochs: 40 more, as a fresh run trains
    assert (more["start_epoch"], more["epochs_trained"], more["epochs"]) == (2, 40, 42)
    assert gn.checkpoint.read(tmp_path / "s.st", "cpu").metadata["epoch"] == 42
    text = ok(run_gpunn("train", "--resume", "s.st", "--epochs", "45", *cpu, cwd=tmp_path)).stdout
    assert "resumed at epoch 42, trained 3 epochs in " in text, text
    fresh = train_json("--dataset", "spiral", "--epochs", "2", *cpu, cwd=tmp_path)
    assert (fresh["start_epoch"], fresh["epochs_trained"], fresh["epochs"]) == (0, 2, 2)


def test_resume_may_save_to_its_own_file_through_any_name(tmp_path: Path) -> None:
    cpu = ("--device", "cpu", "--quiet")
    ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", "--save", "s.st", *cpu, cwd=tmp_path))
    (tmp_path / "link.st").symlink_to("s.st")
    ok(run_gpunn("train", "--resume", "s.st", "--epochs", "3", "--save", "link.st", *cpu, cwd=tmp_path))
    assert (tmp_path / "link.st").is_symlink()
    assert gn.checkpoint.read(tmp_path / "s.st", "cpu").metadata["epoch"] == 3


def test_resume_needs_more_epochs_than_already_trained(tmp_path: Path) -> None:
    cpu = ("--device", "cpu", "--quiet")
    ok(run_gpunn("train", "--dataset", "spiral", "--epochs", "2", "--save", "s.st", *cpu, cwd=tmp_path))
    result = run_gpunn("train", "--resume", "s.st", "--epochs", "2", *cpu, cwd=tmp_path)
    assert_clean_error(result)
    assert "must exceed the 2 epochs" in result.stderr


def test_output_folders_are_checked_before_training(tmp_path: Path) -> None:
    for flag in ("--plot", "--save"):
        result = run_gpunn("train", "--epochs", "1", flag, str(tmp_path / "missing" / "out"), cwd=tmp_path)
        assert_clean_error(result)
        assert f"{flag}: the folder" in result.stderr
        assert "device:" not in result.stdout  # nothing started


def test_graph_flag_trains_the_same_weights_and_refuses_dropout(tmp_path: Path) -> None:
    common = ("--dataset", "spiral", "--epochs", "3", "--device", "cpu")
    eager = train_json(*common, "--save", "eager.st", cwd=tmp_path)
    replayed = train_json(*common, "--graph", "--save", "graph.st", cwd=tmp_path)
    assert replayed["test_accuracy"] == eager["test_accuracy"]
    assert same_weights(weights(tmp_path / "graph.st"), weights(tmp_path / "eager.st"))
    refused = run_gpunn("train", *common, "--graph", "--dropout", "0.3", cwd=tmp_path)
    assert_clean_error(refused)
    assert "graph" in refused.stderr and "Dropout" in refused.stderr


def test_the_diagnosis_is_of_the_final_model_whose_accuracy_is_printed() -> None:
    """The history's training accuracy ran through dropout as the weights moved; the verdict
    uses the final model's, the one printed beside it ("accuracy: train ...")."""
    result = job.train({"dataset": "spiral", "epochs": 3, "dropout": 0.8}, "cpu", verbose=False)
    assert result["diagnosis"]["train_error"] == pytest.approx(1.0 - result["train_accuracy"])
