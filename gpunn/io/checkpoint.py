"""Checkpoints: save a model (and its optimizer) to one file, load it on any device.

A checkpoint is a `safetensors <https://github.com/huggingface/safetensors>`_ file (an 8-byte
little-endian header length, a JSON header, the raw tensor bytes) holding the tensors
``model/<parameter name>`` ("model/0.W", ...) and ``optimizer/<state key>/<buffer name>``
("optimizer/0.W/exp_avg"). The header's ``__metadata__`` holds one key, ``"gpunn"``, whose
value is a JSON string::

    {"format_version": 1, "gpunn_version": "0.1.0",
     "architecture": model.config(),                      # rebuilds the layers, no weights
     "optimizer": {"type": "Adam", "step": 120, "hyper": {"lr": 0.001, ...},
                   "keys": ["0.W", ...]} or null,
     "metadata": {...}}                                   # the caller's dict: epoch, history, RNG state

Tensors are stored as host (NumPy) arrays, so a model saved from a GPU loads on the CPU and
the other way round. Reading never unpickles nor evaluates anything: the header is parsed
with ``json`` and the architecture rebuilt from a fixed table of layer classes. Saving is
atomic (:func:`gpunn.io.safe_file.atomic_write`): a killed process never leaves a torn file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from .. import optim
from ..backend.device import Device, to_numpy
from ..backend.device import device as resolve_device
from ..nn.layers import Layer
from ..nn.parameter import Parameter, state_keys
from ..nn.sequential import INIT_ONLY_KEYS, architecture, layer_from_config
from ..optim.base import Optimizer
from .file_format import FORMAT_VERSION, MAX_HEADER_BYTES, METADATA_KEY, CheckpointError, read_file
from .safe_file import atomic_write, writable_target

MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"


class CheckpointWarning(UserWarning):
    """A checkpoint loaded, but holds something suspicious (NaN or infinite weights)."""


def save(
    path: str | os.PathLike[str],
    model: Layer,
    optimizer: Optimizer | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` atomically; return the path.

    ``metadata`` is any JSON-serializable dict (str keys); it comes back as
    :attr:`Checkpoint.metadata`. Tuples come back as lists. The model stays on its device:
    GPU parameters are copied to the host for writing, never moved.

    Through a symbolic link, the link's target is replaced and the link kept; a replaced
    file keeps its permissions. Raises (before anything is written) TypeError for a wrong type
    of ``path``, ``model``, ``optimizer`` or ``metadata``, IsADirectoryError when ``path`` is a
    folder, FileNotFoundError when its folder does not exist, PermissionError when the file is
    read-only, and ValueError when the metadata exceeds safetensors' 100 MB header.
    """
    target = _check_path(path)
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a gpunn model such as gn.Sequential or gn.mlp(...), got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a gpunn optimizer such as gn.optim.Adam, got {type(optimizer).__name__}")
    user_metadata = _check_metadata(metadata)
    writable_target(target)

    tensors = {MODEL_PREFIX + key: _host(p.data) for key, p in _named_parameters(model)}
    optimizer_info, optimizer_tensors = (None, {}) if optimizer is None else _optimizer_payload(optimizer)
    tensors.update(optimizer_tensors)
    from .. import __version__  # noqa: PLC0415 (the package defines it after importing this module)

    header = {
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "architecture": model.config(),
        "optimizer": optimizer_info,
        "metadata": user_metadata,
    }
    text = json.dumps(header)
    try:
        data = safetensors.numpy.save(tensors, metadata={METADATA_KEY: text})
    except safetensors.SafetensorError as exc:  # "header too large": the metadata is too long
        raise ValueError(
            f"cannot save {str(target)!r}: {exc}; its metadata is {len(text.encode()):,} bytes of JSON, and a "
            f"safetensors header holds at most {MAX_HEADER_BYTES:,}: keep large data out of metadata"
        ) from None
    atomic_write(target, data)
    return target


def _host(x: Any) -> np.ndarray:
    # a GPU array is copied to the host, a NumPy view of the flat buffer left as it is
    return np.ascontiguousarray(to_numpy(x))


def _optimizer_payload(optimizer: Optimizer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The optimizer's JSON description and its state tensors, named for the file."""
    hyper = optimizer.hyperparameters()  # Python numbers: Optimizer.__setattr__ converts NumPy ones
    if optimizer.max_grad_norm is not None:
        hyper["max_grad_norm"] = float(optimizer.max_grad_norm)  # a constructor argument, not in hyper_names
    state = optimizer.state_dict()["state"] if optimizer.bound else None  # unbound: no state yet
    info = {
        "type": type(optimizer).__name__,
        "step": int(optimizer.step_count),
        "hyper": hyper,
        "keys": None if state is None else list(state),
    }
    tensors = {
        f"{OPTIMIZER_PREFIX}{key}/{name}": _host(array)
        for key, buffers in (state or {}).items()
        for name, array in buffers.items()
    }
    return info, tensors


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values or None, got {type(metadata).__name__}")
    where = _unserializable(dict(metadata), "metadata")
    if where is not None:
        raise TypeError(
            f"metadata must be JSON-serializable (dicts with str keys, lists, str, int, float, bool, None), but {where}"
        )
    return dict(metadata)


def _unserializable(value: Any, where: str, depth: int = 0) -> str | None:
    """Describe the first part of ``value`` that JSON cannot round-trip, or None. NaN and
    infinities pass: Python's json writes and reads them (a diverged loss history)."""
    if depth > 100:
        return f"{where} is nested too deeply (a circular reference?)"
    if isinstance(value, dict):
        bad_keys = [k for k in value if not isinstance(k, str)]
        if bad_keys:  # json.dumps would silently turn them into strings
            return f"{where} has the key {bad_keys[0]!r} of type {type(bad_keys[0]).__name__}, not str"
        children = [(f"{where}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        children = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif value is None or isinstance(value, (str, bool, int, float)):
        children = []
    else:
        hint = "; convert it with .item() or .tolist()" if isinstance(value, (np.generic, np.ndarray)) else ""
        return f"{where} is a {type(value).__name__}{hint}"
    for child_where, child in children:
        found = _unserializable(child, child_where, depth + 1)
        if found:
            return found
    return None


class Checkpoint:
    """A checkpoint read back by :func:`read`.

    Attributes: ``path`` (Path), ``format_version`` (int), ``gpunn_version`` (str),
    ``architecture`` (the model's config dict), ``metadata`` (the dict given to
    :func:`save`), ``optimizer_info`` (dict with "type", "step", "hyper", or None) and
    ``model`` (the model, with the saved weights, on the requested device).
    """

    def __init__(self, path: Path, header: dict[str, Any], model: Layer, tensors: dict[str, np.ndarray]) -> None:
        self.path = path
        self.format_version: int = header["format_version"]
        self.gpunn_version: str = str(header.get("gpunn_version", "unknown"))
        self.architecture: dict[str, Any] = header["architecture"]
        self.metadata: dict[str, Any] = header["metadata"]
        self.optimizer_info: dict[str, Any] | None = header["optimizer"]
        self.model = model
        self._optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}

    def optimizer(self, params: Iterable[Parameter] | Any = None) -> Optimizer:
        """Rebuild the saved optimizer, bound to ``params`` (default: ``self.model``'s
        parameters, on the model's device), with its saved step count and state. Raises
        ValueError when the checkpoint holds no optimizer, CheckpointError when the saved
        state does not fit ``params``."""
        info = self.optimizer_info
        if info is None:
            raise ValueError(f"{self.path} holds no optimizer: it was saved without gn.save(..., optimizer=...)")
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in info["hyper"].items()}  # JSON: no tuples
        target = self.model.parameters() if params is None else params
        try:
            opt = optim.create(str(info["type"]).lower(), target, **hyper)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: cannot rebuild the optimizer {info['type']}: {exc}") from exc
        keys = info.get("keys")
        if keys is None:  # saved before it was bound: there is no state to restore
            opt.step_count = int(info["step"])
            return opt
        by_key = dict(zip(state_keys([p.name for p in opt.params]), opt.params, strict=True))
        state: dict[str, dict[str, np.ndarray]] = {}
        for key in keys:
            state[key] = {}
            for name in opt.state_names:
                tensor_name = f"{OPTIMIZER_PREFIX}{key}/{name}"
                if tensor_name not in self._optimizer_tensors:
                    raise CheckpointError(f"{self.path}: the optimizer state tensor {tensor_name!r} is missing")
                array = state[key][name] = self._optimizer_tensors[tensor_name]
                p = by_key.get(key)  # a key of no parameter: load_state_dict names it below
                if p is not None and array.dtype != p.data.dtype:
                    raise CheckpointError(
                        f"{self.path}: the optimizer state tensor {tensor_name!r} is {array.dtype}, "
                        f"but the parameter {key!r} is {p.data.dtype}"
                    )
        try:
            opt.load_state_dict({"type": type(opt).__name__, "step": info["step"], "hyper": {}, "state": state})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path}: the saved optimizer state does not fit these parameters: {exc}"
            ) from exc
        return opt

    def __repr__(self) -> str:
        info = self.optimizer_info
        opt = "none" if info is None else f"{info['type']} at step {info['step']}"
        return (
            f"Checkpoint({str(self.path)!r}: {describe(self.architecture)}; optimizer: {opt}; "
            f"metadata keys: {sorted(self.metadata)})"
        )


def load(path: str | os.PathLike[str], device: str | Device | None = None) -> Layer:
    """The model saved at ``path``, rebuilt with its weights on ``device`` (None: auto);
    CheckpointError when the file is not a readable gpunn checkpoint, and a CheckpointWarning
    naming the tensors when weights are NaN or infinite."""
    return read(path, device).model


def read(path: str | os.PathLike[str], device: str | Device | None = None) -> Checkpoint:
    """Everything saved at ``path``: the model on ``device`` (None: ``gn.device()``, i.e.
    ``GPUNN_DEVICE`` or auto), the metadata, and the optimizer via :meth:`Checkpoint.optimizer`."""
    source = _check_path(path)
    dev = resolve_device(device)  # an unusable device fails before the file is read
    header, tensors = read_file(source)
    try:
        _check_size(source, header["architecture"], tensors)
        model = layer_from_config(header["architecture"])
    except CheckpointError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # a damaged or hand-edited config
        raise CheckpointError(f"{source}: cannot rebuild the saved architecture: {exc}") from exc
    _copy_weights(model, source, tensors)
    model.to(dev)
    return Checkpoint(source, header, model, tensors)


def load_weights(model: Layer, path: str | os.PathLike[str]) -> Checkpoint:
    """Copy the weights saved at ``path`` into ``model`` in place, on the model's device.

    The saved architecture must equal ``model.config()`` up to how fresh weights are drawn
    (``init``, dropout ``seed``). On any mismatch nothing is copied and CheckpointError says
    what the file holds and what the model is. Returns the :class:`Checkpoint`, whose
    ``model`` is ``model`` (so ``.optimizer()`` and ``.metadata`` resume training).
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a gpunn model such as gn.Sequential or gn.mlp(...), got {type(model).__name__}")
    source = _check_path(path)
    header, tensors = read_file(source)
    saved = header["architecture"]
    if architecture(saved) != architecture(model.config()):  # init and seed: replaced by the weights
        raise CheckpointError(
            f"{source} holds a checkpoint of {describe(saved)}, but the model is {describe(model.config())}; "
            f"gn.load({str(source)!r}) rebuilds the saved model"
        )
    _copy_weights(model, source, tensors)
    return Checkpoint(source, header, model, tensors)


def describe(config: Any) -> str:
    """A one-line summary of a layer config: "Linear(64 → 100, relu) → Linear(100 → 10), float32"."""
    dtypes: list[str] = []

    def one(c: Any) -> str:
        if not isinstance(c, dict):
            return repr(c)
        kind = str(c.get("type", "?"))
        if kind == "Sequential":
            layers = c.get("layers")
            return " → ".join(one(layer) for layer in layers) if isinstance(layers, list) and layers else "Sequential()"
        if kind == "Linear":
            dtypes.append(str(c.get("dtype")))
            activation = f", {c['activation']}" if c.get("activation") is not None else ""
            return f"Linear({c.get('n_in')} → {c.get('n_out')}{activation})"
        args = ", ".join(f"{k}={v!r}" for k, v in c.items() if k != "type" and k not in INIT_ONLY_KEYS)
        return f"{kind}({args})" if args else kind

    text = one(config)
    return f"{text}, {', '.join(sorted(set(dtypes)))}" if dtypes else text


def _named_parameters(model: Layer) -> list[tuple[str, Parameter]]:
    """(key, parameter) pairs under :func:`~gpunn.nn.parameter.state_keys`, the optimizer's rule."""
    named = model.named_parameters()
    return list(zip(state_keys([name for name, _ in named]), [p for _, p in named], strict=True))


def _copy_weights(model: Layer, source: Path, tensors: dict[str, np.ndarray]) -> None:
    """Check every saved weight against ``model``, then copy them all (all or nothing)."""
    expected = _named_parameters(model)
    saved = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    missing = [key for key, _ in expected if key not in saved]
    unexpected = sorted(set(saved) - {key for key, _ in expected})
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the saved weights do not match the model's parameters: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for key, p in expected:
        array = saved[key]
        if tuple(array.shape) != p.shape or array.dtype != p.data.dtype:
            raise CheckpointError(
                f"{source}: tensor {MODEL_PREFIX + key!r} is {array.dtype} {tuple(array.shape)}, "
                f"but the model's parameter {key!r} is {p.data.dtype} {p.shape}"
            )
    # One pass over the host copies: a diverged run's checkpoint loads, with a warning.
    bad = [MODEL_PREFIX + key for key, _ in expected if not np.isfinite(saved[key]).all()]
    if bad:
        warnings.warn(
            f"{source}: {', '.join(map(repr, bad))} hold{'s' if len(bad) == 1 else ''} NaN or infinite values; "
            "the model's outputs will be NaN (saved from a run that diverged?)",
            CheckpointWarning,
            stacklevel=4,
        )
    for key, p in expected:
        p.data[...] = p.device.send(saved[key])


def _check_path(path: Any) -> Path:
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):  # bytes paths too
        raise TypeError(f"path must be a str or os.PathLike such as 'model.safetensors', got {type(path).__name__}")
    if not text:
        raise ValueError("path must name a file such as 'model.safetensors', got ''")
    return Path(text)


def _check_size(source: Path, architecture: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Refuse an architecture whose Linear layers need more weights than the file holds,
    before building it: a damaged header must not make us allocate terabytes."""

    def linear_size(c: Any) -> int:
        if not isinstance(c, dict):
            return 0
        if c.get("type") == "Sequential" and isinstance(c.get("layers"), list):
            return sum(linear_size(layer) for layer in c["layers"])
        n_in, n_out = c.get("n_in"), c.get("n_out")
        if c.get("type") == "Linear" and isinstance(n_in, int) and isinstance(n_out, int):
            return n_in * n_out + n_out
        return 0

    held = sum(int(v.size) for k, v in tensors.items() if k.startswith(MODEL_PREFIX))
    needed = linear_size(architecture)
    if needed > held:
        raise CheckpointError(
            f"{source}: the architecture {describe(architecture)} needs {needed} weights but the file holds {held}"
        )


__all__ = ["Checkpoint", "CheckpointError", "CheckpointWarning", "describe", "load", "load_weights", "read", "save"]
