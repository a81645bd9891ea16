"""CPU/GPU parity: one seed, one network, the same training on both devices."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn


def _train(model: gn.Sequential, x: np.ndarray, t: np.ndarray, steps: int) -> list[float]:
    dev = model.device
    xd, td = dev.send(x), dev.send(t)
    criterion, optimizer = gn.SoftmaxWithLoss(), gn.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = criterion.forward(model.forward(xd), td)
        model.backward(criterion.backward(), input_grad=False)
        optimizer.step()
        losses.append(loss)
    return [float(v) for v in gn.to_numpy(losses)]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 20)).astype(np.float32)
    t = (x[:, :5].sum(axis=1) > 0).astype(np.int64) + (x[:, 5] > 1).astype(np.int64)
    return x, t


def test_same_seed_same_weights_on_every_device(device: gn.Device) -> None:
    reference = [p.data.copy() for p in gn.mlp([20, 16, 3], seed=7).parameters()]
    moved = gn.mlp([20, 16, 3], seed=7).to(device)
    for ref, p in zip(reference, moved.parameters(), strict=True):
        assert gn.device_of(p.data) == device
        np.testing.assert_array_equal(gn.to_numpy(p.data), ref)  # bit-identical


def test_training_is_reproducible_on_one_device(device: gn.Device) -> None:
    x, t = _data()
    first = _train(gn.mlp([20, 16, 3], seed=1).to(device), x, t, 20)
    second = _train(gn.mlp([20, 16, 3], seed=1).to(device), x, t, 20)
    assert first == second
    assert first[-1] < first[0]


@pytest.mark.gpu
def test_fifty_adam_steps_agree_between_cpu_and_gpu(gpu: gn.Device) -> None:
    x, t = _data()
    cpu_losses = _train(gn.mlp([20, 16, 3], seed=3), x, t, 50)
    gpu_losses = _train(gn.mlp([20, 16, 3], seed=3).to(gpu), x, t, 50)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)


@pytest.mark.gpu
def test_model_moves_to_gpu_and_back_with_its_optimizer(gpu: gn.Device) -> None:
    x, t = _data()
    model = gn.mlp([20, 16, 3], seed=5)
    optimizer = gn.optim.Adam(model.parameters(), lr=1e-2)
    criterion = gn.SoftmaxWithLoss()
    model.to(gpu)
    xd, td = gpu.send(x), gpu.send(t)
    criterion.forward(model.forward(xd), td)
    model.backward(criterion.backward())
    before = gn.to_numpy(model.parameters()[0].data)
    optimizer.step()  # the optimizer follows the model to the GPU
    after = model.parameters()[0].data
    assert gn.device_of(after) == gpu
    assert not np.array_equal(gn.to_numpy(after), before)
    model.to("cpu")
    assert all(gn.device_of(p.data) == gn.Device("cpu") for p in model.parameters())
