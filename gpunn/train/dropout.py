"""The random streams of a model's Dropout layers in training: saved with a checkpoint and loaded back
(NumPy's generators, for a bit-exact resume on the CPU), and made distinct on each rank."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.device import Device
from ..nn.layers import Dropout
from ..nn.sequential import Sequential


def states(model: Sequential, device: Device) -> dict[str, Any]:
    """The NumPy generator state of each Dropout layer on ``device``, keyed by the layer's index."""
    found = {}
    for i, layer in enumerate(model.layers):
        gen = layer.generators.get(device) if isinstance(layer, Dropout) else None
        if isinstance(gen, np.random.Generator):
            found[str(i)] = gen.bit_generator.state
    return found


def load_states(model: Sequential, device: Device, saved: dict[str, Any]) -> None:
    """Continue each Dropout layer's stream from ``saved`` (from :func:`states`), on the CPU only."""
    for key, state in saved.items():
        layer = model.layers[int(key)]
        if isinstance(layer, Dropout) and device.kind == "cpu":
            gen = np.random.default_rng()
            gen.bit_generator.state = state
            layer.generators[device] = gen


def decorrelate(model: Sequential, device: Device, rank: int) -> None:
    """Give each seeded Dropout layer its own mask stream on rank ``rank`` > 0 (seeded from
    (seed, rank)), so that ranks do not draw the same masks for different rows."""
    for layer in model.layers:
        if isinstance(layer, Dropout) and layer.seed is not None:
            seed = int(np.random.SeedSequence([layer.seed, rank]).generate_state(1)[0])
            with device:
                layer.generators[device] = device.xp.random.default_rng(seed)
