"""Device selection, the CPU fallback and its reason, and moving arrays between devices."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import warnings

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend import device as backend

HAS_CUPY = importlib.util.find_spec("cupy") is not None


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pretend CUDA is unusable, with a known reason."""
    reason = "CUDA is not usable (simulated for this test)"
    monkeypatch.setattr(backend, "_probe", lambda: backend._Probe(0, reason))
    monkeypatch.setattr(backend, "_runtime", lambda: backend._Probe(0, reason))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    return reason


# ----------------------------------------------------------------------------- Device


def test_device_names_and_equality() -> None:
    assert str(gn.device("cpu")) == "cpu"
    assert gn.device("cpu") == gn.Device("cpu")
    assert str(gn.Device("cuda", 1)) == "cuda:1"
    assert gn.Device("cuda", 0) == gn.Device("cuda", 0)
    assert gn.Device("cuda", 0) != gn.Device("cuda", 1)
    assert repr(gn.Device("cuda", 2)) == "Device('cuda:2')"
    assert gn.device("cpu").xp is np
    assert gn.device(gn.Device("cpu")) is not None


def test_device_is_frozen() -> None:
    dev = gn.Device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.kind = "cuda"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "index", "match"),
    [("tpu", 0, "kind must be 'cpu' or 'cuda'"), ("cuda", -1, "index must be an integer >= 0"), ("cpu", 1, "index 0")],
)
def test_device_rejects_bad_fields(kind: str, index: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gn.Device(kind, index)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cpu:1", "auto:0", ""])
def test_device_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        gn.device(spec)


def test_device_rejects_non_string_spec() -> None:
    with pytest.raises(TypeError, match="device spec"):
        gn.device(3)  # type: ignore[arg-type]


def test_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUNN_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="GPUNN_DEVICE"):
        gn.device()


# ----------------------------------------------------------------------------- fallback


def test_auto_falls_back_to_cpu_and_says_why(no_gpu: str) -> None:
    assert gn.device() == gn.Device("cpu")
    assert gn.device("auto") == gn.Device("cpu")
    assert gn.why_cpu() == no_gpu
    assert not gn.gpu_available()
    assert gn.available_devices() == [gn.Device("cpu")]


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "gpu", "cuda:3"])
def test_explicit_gpu_without_one_is_an_error_with_the_reason(no_gpu: str, spec: str) -> None:
    with pytest.raises(gn.DeviceUnavailableError) as info:
        gn.device(spec)
    assert no_gpu in str(info.value)
    assert spec in str(info.value)


def test_environment_asks_for_gpu_without_one(no_gpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUNN_DEVICE", "cuda")
    with pytest.raises(gn.DeviceUnavailableError, match="GPUNN_DEVICE"):
        gn.device()
    assert gn.why_cpu() is None  # an explicit GPU never falls back, so there is no CPU to explain


@pytest.mark.default_device  # about gpunn's own choice, asserted on either kind of machine
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_environment_variable_means_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    unset = (gn.device(), gn.why_cpu())
    monkeypatch.setenv("GPUNN_DEVICE", value)
    assert (gn.device(), gn.why_cpu()) == unset


def test_environment_asks_for_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUNN_DEVICE", "cpu")
    assert gn.device() == gn.Device("cpu")
    assert "GPUNN_DEVICE=cpu" in gn.why_cpu()


def test_gpu_that_fails_its_test_kernel_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = "a test kernel failed on cuda:0 (simulated)"
    monkeypatch.setattr(backend, "_probe", lambda: backend._Probe(1, failure))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert gn.device() == gn.Device("cpu")
    assert gn.why_cpu() == failure
    with pytest.raises(gn.DeviceUnavailableError, match="test kernel failed"):
        gn.device("cuda:0")


def test_gpu_index_beyond_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_probe", lambda: backend._Probe(2, None))
    monkeypatch.setattr(backend, "_runtime", lambda: backend._Probe(2, None))
    with pytest.raises(gn.DeviceUnavailableError, match="reports 2 GPU"):
        gn.device("cuda:5")


def test_missing_cupy_reason_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cupy() -> None:
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(backend, "_import_cupy", no_cupy)
    probe = inspect.unwrap(backend._runtime)()
    assert probe.count == 0
    assert 'pip install "gpunn[cuda12]"' in probe.reason


@pytest.mark.no_gpu  # the real fallback, so skipped where a GPU is usable (and never simulated)
def test_laptop_case_cupy_installed_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing, no simulation: CuPy is installed, no GPU is usable, the CPU is chosen."""
    if not HAS_CUPY:
        if os.environ.get("GPUNN_EXPECT_CUPY"):
            pytest.fail("GPUNN_EXPECT_CUPY is set but CuPy is not installed: CI must install gpunn[cuda12]")
        pytest.skip("CuPy is not installed here")
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    assert gn.device() == gn.Device("cpu")
    reason = gn.why_cpu()
    assert reason is not None and "CuPy" in reason and "CUDA" in reason
    assert gn.available_devices() == [gn.Device("cpu")]


# ----------------------------------------------------------------------------- arrays


def test_to_numpy_and_to_device_on_cpu_do_not_copy() -> None:
    a = np.arange(6.0).reshape(2, 3)
    assert gn.to_numpy(a) is a
    assert gn.to_device(a, "cpu") is a
    assert gn.device("cpu").send(a) is a
    assert gn.array_module(a) is np
    assert gn.device_of(a) == gn.Device("cpu")


def test_transfers_walk_through_containers() -> None:
    a, b = np.ones(3), np.zeros((2, 2))
    moved = gn.to_device({"a": a, "pair": (b, 3), "items": [a, "text", None]}, "cpu")
    assert moved["a"] is a and moved["pair"][0] is b and moved["pair"][1] == 3
    assert isinstance(moved["pair"], tuple) and moved["items"][1] == "text" and moved["items"][2] is None
    back = gn.to_numpy([a, {"b": b}])
    assert back[0] is a and back[1]["b"] is b


def test_send_converts_array_likes_and_dtype() -> None:
    cpu = gn.device("cpu")
    out = cpu.send([[1, 2], [3, 4]], dtype="float32")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 2)


@pytest.mark.gpu
def test_round_trip_through_the_gpu(gpu: gn.Device) -> None:
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    on_gpu = gn.to_device(a, gpu)
    assert gn.array_module(on_gpu) is gpu.xp and gn.device_of(on_gpu) == gpu
    assert gn.to_device(on_gpu, gpu) is on_gpu  # already there: no copy
    np.testing.assert_array_equal(gn.to_numpy(on_gpu), a)
    moved = gn.to_device({"x": [a]}, gpu)
    assert gn.device_of(moved["x"][0]) == gpu
    gpu.synchronize()


@pytest.mark.gpu
def test_gpu_selected_automatically_when_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    assert gn.device() == gn.Device("cuda", 0)
    assert gn.why_cpu() is None
    assert gn.Device("cuda", 0) in gn.available_devices()


# With CuPy imported and a GPU present, the switch also sets CuPy's compute type: it runs on the
# real machine (the simulated GPU of tests/simulated_gpu.py has no CuPy behind it).
@pytest.mark.default_device
def test_matmul_precision_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert gn.matmul_precision() == "highest"
    gn.set_matmul_precision("tf32")
    assert gn.matmul_precision() == "tf32" and os.environ["CUPY_TF32"] == "1"
    gn.set_matmul_precision("highest")
    assert gn.matmul_precision() == "highest" and os.environ["CUPY_TF32"] == "0"
    with pytest.raises(ValueError, match="precision must be 'highest' or 'tf32'"):
        gn.set_matmul_precision("fast")
    # read as CuPy reads it (any integer above 0 is TF32), so the report matches what runs
    for value, expected in (("2", "tf32"), ("0", "highest"), ("yes", "highest"), ("", "highest")):
        monkeypatch.setenv("CUPY_TF32", value)
        assert gn.matmul_precision() == expected, value


def test_setting_the_precision_runs_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank bound to cuda:N must not make a context on cuda:0 to set the precision: with CuPy
    imported and CUDA counting GPUs, CuPy's float32 compute type is reset to "to be decided"
    (CuPy then reads CUPY_TF32 at its next product, on the GPU running it) without a probe;
    setting TF32 directly would check the current device's compute capability."""
    linalg = pytest.importorskip("cupy._core._routines_linalg")
    switched: list[object] = []
    monkeypatch.setattr(backend, "_runtime", lambda: backend._Probe(1, None))
    monkeypatch.setattr(backend, "_probe", lambda: pytest.fail("cuda:0 was probed"))
    monkeypatch.setattr(linalg, "set_compute_type", lambda dtype, kind: switched.append(kind))
    monkeypatch.setenv("CUPY_TF32", "0")
    gn.set_matmul_precision("tf32")
    gn.set_matmul_precision("highest")
    assert switched == [linalg.COMPUTE_TYPE_TBD, linalg.COMPUTE_TYPE_TBD]
    assert os.environ["CUPY_TF32"] == "0"  # what CuPy will read: "highest", set last


def test_a_named_gpu_is_probed_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:1 must not run a kernel (and create a context) on cuda:0."""
    probed: list[int] = []
    monkeypatch.setattr(backend, "_runtime", lambda: backend._Probe(2, None))
    monkeypatch.setattr(backend, "_probe", lambda: pytest.fail("cuda:0 was probed"))
    monkeypatch.setattr(backend, "_kernel_failure", probed.append)
    assert gn.device("cuda:1") == gn.Device("cuda", 1)
    assert probed == [1]


def test_transfers_keep_namedtuples():
    from collections import namedtuple  # noqa: PLC0415

    Batch = namedtuple("Batch", "x y")
    batch = Batch(np.ones(2), {"t": [np.zeros(3)]})
    for moved in (gn.to_numpy(batch), gn.to_device(batch, "cpu")):
        assert type(moved) is Batch
        np.testing.assert_array_equal(moved.x, batch.x)
        np.testing.assert_array_equal(moved.y["t"][0], batch.y["t"][0])


def test_a_gpu_arrays_computation_runs_with_its_gpu_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy launches and allocates on the current GPU, whatever device the arguments are on: a
    model's forward and backward and a loss's forward make the input's GPU current for the call
    (switching only when it is not, and back after), NumPy input passes straight through."""
    import sys  # noqa: PLC0415
    import types  # noqa: PLC0415

    current, switches = [0], []

    def set_device(index: int) -> None:
        switches.append(index)
        current[0] = index

    class FakeArray:  # a CuPy array on cuda:1
        data = types.SimpleNamespace(device_id=1)

    runtime = types.SimpleNamespace(getDevice=lambda: current[0], setDevice=set_device)
    fake_cupy = types.SimpleNamespace(ndarray=FakeArray, cuda=types.SimpleNamespace(runtime=runtime))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)

    class Method:
        @backend.on_input_device
        def run(self, x, scale=1):
            return current[0], scale

    assert Method().run(FakeArray(), scale=2) == (1, 2)  # computed with cuda:1 current
    assert switches == [1, 0] and current == [0]  # and cuda:0 current again after
    current[0] = 1
    assert Method().run(FakeArray()) == (1, 1) and switches == [1, 0]  # already current: no switch
    assert Method().run(np.ones(2))[0] == 1 and switches == [1, 0]  # NumPy: nothing touched
    wrapper = backend.on_input_device(lambda self, x: x).__code__
    for method in (gn.Sequential.forward, gn.Sequential.backward, gn.SoftmaxWithLoss.forward, gn.MSELoss.forward,
                   gn.SigmoidBCELoss.forward):  # fmt: skip
        assert method.__code__ is wrapper, method  # run through on_input_device


@pytest.mark.gpu
def test_a_model_on_a_second_gpu_computes_there_outside_a_with() -> None:
    devices = [d for d in gn.available_devices() if d.kind == "cuda"]
    if len(devices) < 2:
        pytest.skip("needs two usable GPUs")
    dev = devices[1]
    model = gn.mlp([3, 5, 2], seed=0).to(dev)
    loss = gn.SoftmaxWithLoss()
    opt = gn.optim.Adam(model.parameters(), max_grad_norm=1.0)
    x = dev.send(np.ones((4, 3), dtype=np.float32))
    t = dev.send(np.array([0, 1, 0, 1]))
    value = loss.forward(model.forward(x), t)
    model.backward(loss.backward())
    opt.step()
    assert value.device.id == dev.index and all(p.data.device.id == dev.index for p in model.parameters())
    trainer = gn.Trainer(gn.mlp([3, 5, 2], seed=0), gn.SoftmaxWithLoss(), gn.optim.Adam(), gn.L2(1e-4), device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CuPy warns when it enables peer access across GPUs
        trainer.fit(np.ones((8, 3), np.float32), np.array([0, 1] * 4), epochs=2, batch_size=4, verbose=False)
    assert all(p.data.device.id == dev.index for p in trainer.model.parameters())
