"""Checkpoints: exact round trips across devices, atomic writes under SIGKILL, and clear
errors (never code execution) for damaged, foreign or mismatched files."""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import gpunn as gn
from gpunn.io.checkpoint import CheckpointError, load_weights, read

CPU = gn.device("cpu")


def _batch(dev: gn.Device, dtype: str = "float32", seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 8)).astype(dtype)
    t = rng.integers(0, 3, size=32)
    return dev.send(x), dev.send(t)


def _step(model: gn.Sequential, opt: gn.optim.Optimizer, x: Any, t: Any) -> None:
    criterion = gn.SoftmaxWithLoss()
    criterion.forward(model.forward(x), t)
    model.backward(criterion.backward())
    opt.step()


def _trained(dev: gn.Device = CPU, dtype: str = "float32") -> tuple[gn.Sequential, gn.optim.Optimizer]:
    """gn.mlp([8, 16, 3], seed=0) after three Adam steps, on ``dev``."""
    model = gn.mlp([8, 16, 3], seed=0, dtype=dtype).to(dev)
    opt = gn.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    x, t = _batch(dev, dtype)
    for _ in range(3):
        _step(model, opt, x, t)
    return model, opt


def _weights(model: gn.Layer) -> dict[str, np.ndarray]:
    return {p.name: gn.to_numpy(p.data).copy() for p in model.parameters()}


def _assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, array in a.items():
        assert array.dtype == b[name].dtype, name
        np.testing.assert_array_equal(array, b[name], err_msg=name)


# ----------------------------------------------------------------------------- round trips


def test_round_trip_keeps_weights_predictions_and_metadata(device: gn.Device, tmp_path: Path) -> None:
    model, opt = _trained(device)
    metadata = {
        "epoch": 3,
        "history": {"loss": [1.25, 0.5, float("inf")], "note": "späť"},
        "rng": np.random.default_rng(7).bit_generator.state,  # 128-bit integers
    }
    path = gn.save(tmp_path / "m.safetensors", model, opt, metadata=metadata)
    assert path == tmp_path / "m.safetensors"

    ckpt = read(path, device)
    loaded = ckpt.model
    assert isinstance(loaded, gn.Sequential)
    assert loaded.device == device
    _assert_same_weights(_weights(loaded), _weights(model))
    x, _ = _batch(device, seed=1)
    np.testing.assert_array_equal(gn.to_numpy(loaded.eval().forward(x)), gn.to_numpy(model.eval().forward(x)))
    assert ckpt.metadata == metadata
    assert ckpt.format_version == 1
    assert ckpt.gpunn_version == gn.__version__
    assert ckpt.architecture == model.config()
    assert ckpt.optimizer_info["type"] == "Adam"
    assert ckpt.optimizer_info["step"] == 3
    assert "Linear(8 → 16, relu)" in repr(ckpt)
    _assert_same_weights(_weights(gn.load(path, device=device)), _weights(model))


def test_restored_optimizer_continues_identically(device: gn.Device, tmp_path: Path) -> None:
    model, opt = _trained(device)
    gn.save(tmp_path / "m.safetensors", model, opt)
    ckpt = read(tmp_path / "m.safetensors", device)
    opt2 = ckpt.optimizer()
    assert type(opt2) is gn.optim.Adam
    assert opt2.step_count == 3
    assert opt2.hyperparameters() == opt.hyperparameters()  # betas is a tuple again
    assert opt2.params == ckpt.model.parameters()
    for seed in (2, 3):
        x, t = _batch(device, seed=seed)
        _step(model, opt, x, t)
        _step(ckpt.model, opt2, x, t)
    _assert_same_weights(_weights(ckpt.model), _weights(model))
    assert opt2.step_count == opt.step_count == 5


def test_a_trainer_given_the_model_and_the_optimizer_from_two_reads_resumes_with_the_moments(
    tmp_path: Path,
) -> None:
    """gn.load(path) for the model and read(path).optimizer() for the optimizer give two
    model objects; the Trainer binds the optimizer to the one it trains, and the saved moments
    go with it: training goes on exactly as from one read (nothing saved is lost)."""
    model, opt = _trained(CPU)
    path = gn.save(tmp_path / "m.safetensors", model, opt)
    x, t = _batch(CPU, seed=5)
    finished = []
    for two_reads in (True, False):
        ckpt = read(path, "cpu")
        resumed = gn.load(path, device="cpu") if two_reads else ckpt.model
        trainer = gn.Trainer(resumed, gn.SoftmaxWithLoss(), ckpt.optimizer(), device="cpu")
        assert trainer.optimizer.params == resumed.parameters()
        assert trainer.optimizer.state_dict()["state"]["0.W"]["exp_avg"].any()  # the saved moments
        trainer.fit(x, t, epochs=2, batch_size=16, shuffle=False, verbose=False)
        finished.append(_weights(resumed))
    _assert_same_weights(*finished)


@pytest.mark.parametrize("name", sorted(gn.optim.OPTIMIZERS))
def test_every_optimizer_round_trips(name: str, tmp_path: Path) -> None:
    model = gn.mlp([8, 16, 3], seed=0)
    opt = gn.optim.create(name, model.parameters(), lr=0.05, max_grad_norm=2.0)
    x, t = _batch(CPU)
    _step(model, opt, x, t)
    gn.save(tmp_path / "m.safetensors", model, opt)
    restored = read(tmp_path / "m.safetensors", "cpu").optimizer()
    assert type(restored) is type(opt)
    assert restored.hyperparameters() == opt.hyperparameters()
    assert restored.max_grad_norm == 2.0
    saved, back = opt.state_dict(), restored.state_dict()
    assert back["step"] == saved["step"] == 1
    assert back["state"].keys() == saved["state"].keys()
    for key, buffers in saved["state"].items():
        _assert_same_weights(back["state"][key], buffers)


def test_unbound_optimizer_and_no_optimizer(tmp_path: Path) -> None:
    model = gn.mlp([8, 16, 3], seed=0)
    gn.save(tmp_path / "unbound.safetensors", model, gn.optim.AdamW(lr=0.25, weight_decay=0.5))
    opt = read(tmp_path / "unbound.safetensors", "cpu").optimizer()
    assert isinstance(opt, gn.optim.AdamW)
    assert (opt.lr, opt.weight_decay, opt.step_count) == (0.25, 0.5, 0)
    assert len(opt.params) == 4

    gn.save(tmp_path / "bare.safetensors", model)
    ckpt = read(tmp_path / "bare.safetensors", "cpu")
    assert ckpt.optimizer_info is None
    assert ckpt.metadata == {}
    with pytest.raises(ValueError, match="holds no optimizer"):
        ckpt.optimizer()


def test_float64_round_trips(tmp_path: Path) -> None:
    model, opt = _trained(dtype="float64")
    gn.save(tmp_path / "m.safetensors", model, opt)
    loaded = gn.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.dtype == np.float64
    _assert_same_weights(_weights(loaded), _weights(model))


def test_architecture_with_dropout_and_leaky_relu_round_trips(tmp_path: Path) -> None:
    model = gn.Sequential(
        gn.Linear(4, 6, init="xavier", seed=1), gn.LeakyReLU(0.2), gn.Dropout(0.3, seed=7), gn.Linear(6, 2, seed=2)
    )
    gn.save(str(tmp_path / "m.safetensors"), model)  # a str path works too
    loaded = gn.load(str(tmp_path / "m.safetensors"), device="cpu")
    assert loaded.config() == model.config()
    assert isinstance(loaded[1], gn.LeakyReLU)
    assert loaded[1].negative_slope == 0.2
    assert loaded[2].p == 0.3
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    np.testing.assert_array_equal(loaded.eval().forward(x), model.eval().forward(x))


# ----------------------------------------------------------------------------- writing safely


def test_saving_does_not_move_the_model_and_leaves_one_file(device: gn.Device, tmp_path: Path) -> None:
    model, opt = _trained(device)
    params = model.parameters()
    arrays, flat = [p.data for p in params], params[0].flat
    path = tmp_path / "m.safetensors"
    gn.save(path, model, opt)
    assert model.device == device
    assert params[0].flat is flat and flat.valid  # no repacking: the optimizer's buffer stays live
    assert all(p.data is a for p, a in zip(model.parameters(), arrays, strict=True))
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]

    # Overwriting replaces the old checkpoint whole.
    before = _weights(gn.load(path, device="cpu"))
    x, t = _batch(device, seed=4)
    _step(model, opt, x, t)
    gn.save(path, model, opt, metadata={"epoch": 2})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    ckpt = read(path, "cpu")
    assert ckpt.metadata == {"epoch": 2}
    _assert_same_weights(_weights(ckpt.model), _weights(model))
    assert not np.array_equal(before["0.W"], _weights(ckpt.model)["0.W"])


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_gets_normal_permissions(tmp_path: Path) -> None:
    path = gn.save(tmp_path / "m.safetensors", gn.mlp([2, 2], seed=0))
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    path.chmod(0o640)
    gn.save(path, gn.mlp([2, 2], seed=1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # overwriting keeps the user's choice


_CHILD = """
import sys
import gpunn as gn
model = gn.mlp([2000, 2000, 2000], seed=1)  # about 32 MB of float32
print("ready", flush=True)
i = 0
while True:
    i += 1
    for p in model.parameters():
        p.data[...] = i  # every tensor of save number i holds i: a torn file would show it
    gn.save(sys.argv[1], model, metadata={"iteration": i})
"""


def _kill_while_saving(paths: list[Path], delays: np.ndarray) -> None:
    """Start one saving child per path, then SIGKILL each ``delays[k]`` seconds after all
    are ready. Several children at once put more kills in the middle of a write."""
    env = {**os.environ, "GPUNN_DEVICE": "cpu"}
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env) for path in paths
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == b"ready"
        start = time.monotonic()
        for k in np.argsort(delays):
            time.sleep(max(0.0, start + delays[k] - time.monotonic()))
            children[k].send_signal(signal.SIGKILL)
    finally:
        for child in children:
            child.kill()  # no-op for the killed ones; cleans up after a failed assertion
            child.wait()
            child.stdout.close()
    assert all(child.returncode == -signal.SIGKILL for child in children)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    first = gn.mlp([8, 16, 3], seed=0)
    paths = [tmp_path / f"m{k}.safetensors" for k in range(6)]
    for path in paths:
        gn.save(path, first, metadata={"iteration": 0})
    delays = np.random.default_rng(0).uniform(0.02, 0.6, size=len(paths))
    for group in (slice(0, 3), slice(3, 6)):  # three children at a time: two cores
        _kill_while_saving(paths[group], delays[group])
    child_config = gn.mlp([2000, 2000, 2000], seed=1).config()
    for path in paths:
        ckpt = read(path, "cpu")  # never an error, whatever the moment of the kill
        iteration = ckpt.metadata["iteration"]
        if iteration == 0:
            _assert_same_weights(_weights(ckpt.model), _weights(first))
        else:
            assert ckpt.architecture == child_config
            for p in ckpt.model.parameters():
                assert (p.data == iteration).all(), f"{p.name} mixes saves: expected every value == {iteration}"

    # The temporary files that the killed saves left behind go with the next save to each path.
    for path in paths:
        gn.save(path, first, metadata={"iteration": -1})
        assert read(path, "cpu").metadata == {"iteration": -1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


# ----------------------------------------------------------------------------- refusing bad files


@pytest.fixture
def good(tmp_path: Path) -> Path:
    model, opt = _trained()
    return gn.save(tmp_path / "good.safetensors", model, opt, metadata={"epoch": 1})


def _bad_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    return path


def _with_header(good: Path, edit: Any) -> bytes:
    """``good``'s bytes with its gpunn metadata replaced by ``edit(metadata)``, re-serialized."""
    tensors = safetensors.numpy.load(good.read_bytes())
    ckpt = json.loads(safetensors.safe_open(str(good), framework="numpy").metadata()["gpunn"])
    return safetensors.numpy.save(tensors, metadata={"gpunn": json.dumps(edit(ckpt))})


def test_truncated_file(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*truncated"):
        read(_bad_file(tmp_path, data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated"):  # the header intact, the last tensor cut
        read(_bad_file(tmp_path, data[:-4]))
    with pytest.raises(CheckpointError, match="truncated"):
        read(_bad_file(tmp_path, data[:5]))
    with pytest.raises(CheckpointError, match="truncated"):
        read(_bad_file(tmp_path, b""))


def test_wrong_header(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    with pytest.raises(CheckpointError, match="not a gpunn checkpoint"):
        read(_bad_file(tmp_path, np.random.default_rng(0).bytes(4096)))
    lying = (2**40).to_bytes(8, "little") + data[8:]
    with pytest.raises(CheckpointError, match="header claims"):
        read(_bad_file(tmp_path, lying))
    garbled = data[:8] + b"#" + data[9:]
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read(_bad_file(tmp_path, garbled))


def test_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    class Trap:
        def __init__(self, marker: Path) -> None:
            self.marker = marker

        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(self.marker), "w"))  # unpickling this creates the marker file

    # The trap is live: unpickling it really does run code.
    pickle.loads(pickle.dumps(Trap(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "executed"
    path = _bad_file(tmp_path, pickle.dumps({"model": Trap(marker)}))
    with pytest.raises(CheckpointError, match="pickle"):
        gn.load(path, device="cpu")
    with pytest.raises(CheckpointError, match="pickle"):
        load_weights(gn.mlp([8, 16, 3]), path)
    assert not marker.exists()


def test_other_file_kinds_are_named(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match=r"\.npy"):
        read(tmp_path / "a.npy")
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="zip"):
        read(tmp_path / "a.npz")


def test_safetensors_without_gpunn_metadata(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, safetensors.numpy.save({"weight": np.zeros((2, 2), "float32")}))
    with pytest.raises(CheckpointError, match="without gpunn's metadata"):
        read(path)


def test_future_format_and_damaged_metadata(good: Path, tmp_path: Path) -> None:
    future = _with_header(good, lambda h: {**h, "format_version": 99})
    with pytest.raises(CheckpointError, match=r"format 99.*upgrade gpunn"):
        read(_bad_file(tmp_path, future))
    evil = _with_header(good, lambda h: {**h, "architecture": {"type": "os.system", "command": "touch x"}})
    with pytest.raises(CheckpointError, match=r"unknown layer type 'os\.system'"):
        read(_bad_file(tmp_path, evil))
    assert not (tmp_path / "x").exists()
    huge = {"type": "Sequential", "layers": [{"type": "Linear", "n_in": 10**6, "n_out": 10**6, "dtype": "float32"}]}
    with pytest.raises(CheckpointError, match="needs 1000001000000 weights"):  # refused before allocating
        read(_bad_file(tmp_path, _with_header(good, lambda h: {**h, "architecture": huge})))
    wider = _with_header(good, lambda h: {**h, "architecture": gn.mlp([8, 15, 3]).config()})
    with pytest.raises(CheckpointError, match=r"'model/0\.W' is float32 \(8, 16\).*\(8, 15\)"):
        read(_bad_file(tmp_path, wider))
    no_state = _with_header(good, lambda h: {**h, "optimizer": {**h["optimizer"], "keys": ["0.W", "9.W"]}})
    with pytest.raises(CheckpointError, match=r"'optimizer/9\.W/exp_avg' is missing"):
        read(_bad_file(tmp_path, no_state), "cpu").optimizer()


def test_missing_folder_and_wrong_path_types(good: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        read(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        read(tmp_path)
    model = gn.mlp([2, 2])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        gn.save(tmp_path, model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gn.save(tmp_path / "no" / "m.safetensors", model)
    for bad in (42, None, b"m.safetensors"):
        with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
            gn.save(bad, model)
        with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
            gn.load(bad)
    with pytest.raises(TypeError, match="model must be a gpunn model"):
        gn.save(tmp_path / "m.safetensors", {"W": np.zeros(2)})
    with pytest.raises(TypeError, match="optimizer must be a gpunn optimizer"):
        gn.save(tmp_path / "m.safetensors", model, optimizer="adam")


def test_unserializable_metadata_writes_nothing(good: Path) -> None:
    before = good.read_bytes()
    model = gn.mlp([8, 16, 3], seed=5)
    cases = [
        ({"loss": np.float32(0.5)}, r"metadata\['loss'\] is a float32; convert it with \.item\(\)"),
        ({"history": {"acc": [0.5, object()]}}, r"metadata\['history'\]\['acc'\]\[1\] is a object"),
        ({1: "epoch"}, "has the key 1 of type int"),
        ([("epoch", 1)], "metadata must be a dict"),
    ]
    for metadata, message in cases:
        with pytest.raises(TypeError, match=message):
            gn.save(good, model, metadata=metadata)
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["good.safetensors"]


def test_load_weights_into_an_existing_model(good: Path) -> None:
    saved = _weights(gn.load(good, device="cpu"))
    model = gn.mlp([8, 16, 3], seed=9, init="xavier")  # another draw and init: the weights replace both
    opt_before = gn.optim.SGD(model.parameters())
    ckpt = load_weights(model, good)
    assert ckpt.model is model
    _assert_same_weights(_weights(model), saved)
    assert opt_before.params[0].flat.valid  # loaded in place: an optimizer bound to the model still works
    assert ckpt.optimizer().step_count == 3

    other = gn.mlp([64, 100, 10], seed=0)
    untouched = _weights(other)
    mismatch = r"holds a checkpoint of Linear\(8 → 16, relu\).*but the model is Linear\(64 → 100, relu\)"
    with pytest.raises(CheckpointError, match=mismatch):
        load_weights(other, good)
    _assert_same_weights(_weights(other), untouched)
    with pytest.raises(CheckpointError, match="float64"):
        load_weights(gn.mlp([8, 16, 3], dtype="float64"), good)
    with pytest.raises(CheckpointError, match="tanh"):
        load_weights(gn.mlp([8, 16, 3], activation="tanh"), good)


def test_a_checkpoint_with_separate_activation_layers_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before Linear took an activation hold Linear configs without one,
    each followed by its activation layer: they load as those layers, with their names ("2.W"),
    and compute what a model with the activation in its Linear layers computes."""
    rng = np.random.default_rng(0)
    tensors = {
        "model/0.W": rng.standard_normal((4, 6)).astype(np.float32),
        "model/0.b": rng.standard_normal(6).astype(np.float32),
        "model/2.W": rng.standard_normal((6, 3)).astype(np.float32),
        "model/2.b": rng.standard_normal(3).astype(np.float32),
    }
    linear = {"type": "Linear", "init": "he", "dtype": "float32"}
    architecture = {
        "type": "Sequential",
        "layers": [
            {**linear, "n_in": 4, "n_out": 6},
            {"type": "LeakyReLU", "negative_slope": 0.2},
            {**linear, "n_in": 6, "n_out": 3},
        ],
    }
    header = {
        "format_version": 1,
        "gpunn_version": "0.1.0",
        "architecture": architecture,
        "optimizer": None,
        "metadata": {},
    }
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors, metadata={"gpunn": json.dumps(header)}))
    model = gn.load(path, device="cpu")
    assert [type(layer).__name__ for layer in model] == ["Linear", "LeakyReLU", "Linear"]
    assert model[0].activation is None and model[1].negative_slope == 0.2
    fused = gn.mlp([4, 6, 3], activation="leaky_relu", seed=0)
    fused[0].negative_slope = 0.2
    for layer, i in zip(fused, (0, 2), strict=True):
        layer.W.data[...], layer.b.data[...] = tensors[f"model/{i}.W"], tensors[f"model/{i}.b"]
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), fused.forward(x))
    same = gn.Sequential(gn.Linear(4, 6, seed=1), gn.LeakyReLU(0.2), gn.Linear(6, 3, seed=2))
    load_weights(same, path)  # the same architecture, built today
    np.testing.assert_array_equal(same.forward(x), fused.forward(x))
    with pytest.raises(
        CheckpointError, match=r"Linear\(4 → 6\) → LeakyReLU.*but the model is Linear\(4 → 6, leaky_relu\)"
    ):
        load_weights(fused, path)


# ----------------------------------------------------------------------------- across devices


@pytest.mark.gpu
def test_saved_on_gpu_loads_on_cpu_and_back(gpu: gn.Device, tmp_path: Path) -> None:
    model, opt = _trained(gpu)
    path = gn.save(tmp_path / "m.safetensors", model, opt)
    assert model.device == gpu
    ckpt = read(path, "cpu")
    assert ckpt.model.device == CPU
    _assert_same_weights(_weights(ckpt.model), _weights(model))
    x, _ = _batch(CPU, seed=1)
    np.testing.assert_allclose(
        ckpt.model.eval().forward(x), gn.to_numpy(model.eval().forward(gpu.send(x))), rtol=1e-5, atol=1e-6
    )
    opt_cpu = ckpt.optimizer()
    assert opt_cpu.params[0].device == CPU
    for key, buffers in opt.state_dict()["state"].items():
        _assert_same_weights(gn.to_numpy(opt_cpu.state_dict()["state"][key]), gn.to_numpy(buffers))

    cpu_path = gn.save(tmp_path / "cpu.safetensors", ckpt.model)
    back = gn.load(cpu_path, device=gpu)
    assert back.device == gpu
    _assert_same_weights(_weights(back), _weights(model))
