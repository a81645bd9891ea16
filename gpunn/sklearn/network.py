"""The network behind gpunn.sklearn's estimators: :class:`_Network` (a gpunn Sequential with
scikit-learn's initialization, output activations and pickling), its half Poisson loss, the
BLAS thread limit for small CPU networks, and scikit-learn's learning-rate change for SGD."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import optim
from ..backend.device import Device, array_module, to_numpy
from ..nn.functional import binary_cross_entropy_with_logits, log_softmax, sigmoid, softmax
from ..nn.layers import Linear
from ..nn.losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from ..nn.sequential import Sequential, mlp

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_PREDICT_CHUNK = 65_536  # rows per forward pass when predicting (bounds device memory)

# Below this many multiply-adds per matrix product a second BLAS thread saves little and can cost
# a lot: on 2 cores, one kept busy by another process, OpenBLAS's threads wait for each other
# (float32 200×64·64×100: 35–50 µs on one thread, 150–390 µs on two; a digits fit: 0.2–0.3 s
# on one, 0.9–9 s on two).
_SINGLE_THREAD_MACS = 1 << 22


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_threads(units: list[int], rows: int, dev: Device) -> Any:
    """A context that runs the CPU's BLAS on one thread while the layers' products are small."""
    if dev.kind != "cpu" or rows * max(a * b for a, b in itertools.pairwise(units)) > _SINGLE_THREAD_MACS:
        return contextlib.nullcontext()
    return _threadpools().limit(limits=1, user_api="blas")


def _half_poisson(z: Any, t: Any) -> tuple[Any, Any]:
    """The half Poisson deviance with a log link per element, ŷ − t·z + t·log t − t, and ŷ = exp(z)."""
    xp = array_module(z)
    y = xp.exp(z)
    t_log_t = xp.where(t > 0, t * xp.log(xp.where(t > 0, t, 1.0)), 0.0)
    return y - t * z + t_log_t - t, y


class _HalfPoissonLoss(Loss):
    """Half Poisson deviance with a log link, ŷ = exp(z):
    L = (1/N) Σ_n Σ_k [ŷ − t·z + t·log t − t];  ∂L/∂z = (ŷ − t) / N.  z, t: (N, K)."""

    def forward(self, z: Any, t: Any) -> Any:
        t = t.reshape(z.shape)
        per_element, self._y = _half_poisson(z, t)
        self._t = t
        return array_module(z).asarray(per_element.sum() / z.shape[0])

    def backward(self) -> Any:
        d = self._y - self._t
        d *= 1.0 / d.shape[0]
        return d


_LOSSES = {"softmax": SoftmaxWithLoss, "logistic": SigmoidBCELoss, "identity": MSELoss, "exp": _HalfPoissonLoss}


class _WeightedLoss(Loss):
    """The loss of an output with sample weights, as scikit-learn weighs it: over a batch whose
    ``weights`` w (N,) are already divided by their sum, J = Σ_n w_n·ℓ_n and
    ∂J/∂z_n = w_n·(g(z_n) − t_n), g the output activation (each loss is its output's canonical
    pair). ℓ_n: −log softmax(z_n)[t_n] (t: class indices); Σ_k softplus(z) − z·t (logistic);
    ½‖z − t‖² (identity); Σ_k e^z − t·z + t·log t − t (exp). z: (N, K)."""

    def __init__(self, out: str) -> None:
        super().__init__(validate=False)
        self.out, self.weights = out, None

    def forward(self, z: Any, t: Any) -> Any:
        xp = array_module(z)
        if self.out == "softmax":
            grad = log_softmax(z, axis=1)
            rows = xp.arange(z.shape[0])
            per_sample = -grad[rows, t]
            xp.exp(grad, out=grad)
            grad[rows, t] -= 1.0
        else:
            t = t.reshape(z.shape)
            if self.out == "logistic":
                per_element = binary_cross_entropy_with_logits(z, t)
                grad = sigmoid(z) - t
            elif self.out == "identity":
                grad = z - t
                per_element = 0.5 * grad * grad
            else:
                per_element, grad = _half_poisson(z, t)
                grad -= t
            per_sample = per_element.sum(axis=1)
        grad *= self.weights[:, None]
        self._grad = grad
        return per_sample @ self.weights

    def backward(self) -> Any:
        return self._grad


class _Network:
    """What an estimator fitted: a gpunn Sequential (hidden layers and the output layer's
    logits z) on a device, the output activation applied to z, the optimizer of the last fit,
    and the best weights seen by early stopping.

    Pickling keeps the optimizer state and best weights as host arrays and drops the model;
    the next use rebuilds it from the estimator's ``coefs_`` and ``intercepts_``, on any machine.
    """

    def __init__(self, units: list[int], activation: str, out: str, dtype: np.dtype) -> None:
        self.units, self.activation, self.out, self.dtype = list(units), activation, out, dtype
        self.model: Sequential | None = None
        self.optimizer: optim.Optimizer | None = None
        self.exported: tuple[Any, ...] | None = None  # the arrays last put in coefs_/intercepts_
        self.best: Any = None  # flat weights of the best validation score (early stopping)
        self.host_state: dict[str, Any] = {}  # optimizer state and best weights while pickled
        self.loss: Loss = _LOSSES[out](validate=False)  # targets are checked once per fit, not per step

    def _new_model(self) -> Sequential:
        return mlp(self.units, activation=_ACTIVATIONS[self.activation], dtype=self.dtype, seed=0)

    def build(self, rng: np.random.RandomState, dev: Device) -> None:
        """A new model with scikit-learn's Glorot-uniform weights drawn from ``rng``."""
        model = self._new_model()
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer in _linears(model):
            bound = math.sqrt(factor / (layer.n_in + layer.n_out))
            layer.W.data[...] = rng.uniform(-bound, bound, (layer.n_in, layer.n_out))
            layer.b.data[...] = rng.uniform(-bound, bound, layer.n_out)
        self.model = model.to(dev)
        self.optimizer, self.best, self.host_state, self.exported = None, None, {}, None

    @property
    def flat(self) -> Any:
        return self.model.parameters()[0].flat

    @property
    def device(self) -> Device:
        return self.model.device

    def sync(self, est: Any, dev: Device) -> None:
        """Make the model, on ``dev``, hold the estimator's ``coefs_`` and ``intercepts_``
        (rebuilding it after unpickling, loading arrays the user assigned)."""
        arrays = (*est.coefs_, *est.intercepts_)
        if self.model is None:
            self.model = self._new_model().to(dev)
            self.exported = None
        # by identity: any array other than those last exported was assigned by the user
        if self.exported is None or [id(a) for a in arrays] != [id(a) for a in self.exported]:
            layers = _linears(self.model)
            params = [layer.W for layer in layers] + [layer.b for layer in layers]
            if len(arrays) != len(params) or any(
                tuple(np.shape(a)) != p.shape  # host: scikit-learn's attributes are NumPy arrays
                for a, p in zip(arrays, params, strict=True)
            ):
                raise ValueError(
                    "coefs_ and intercepts_ no longer match the network's layer sizes "
                    f"{self.units}; refit the estimator"
                )
            for a, p in zip(arrays, params, strict=True):
                p.data[...] = self.device.send(a, dtype=self.dtype)  # NumPy, lists or CuPy
            self.exported = arrays
        if dev != self.device:
            self.model.to(dev)  # the optimizer follows on its next step
        if self.host_state:
            self._restore_host_state()

    def export(self, est: Any) -> None:
        """Set ``coefs_`` (n_in, n_out) and ``intercepts_`` (n_out,) per layer, as NumPy arrays."""
        layers = _linears(self.model)
        on_cpu = self.device.kind == "cpu"
        est.coefs_ = [layer.W.data if on_cpu else to_numpy(layer.W.data) for layer in layers]
        est.intercepts_ = [layer.b.data if on_cpu else to_numpy(layer.b.data) for layer in layers]
        self.exported = (*est.coefs_, *est.intercepts_)

    def output(self, x: Any, log: bool = False) -> Any:
        """The output layer's activation a = g(z) for x on the model's device: (N, n_outputs).
        With ``log``, the classifier's log-probabilities computed from the logits z, finite
        where a probability rounds to 0: log softmax(z), log σ(z) = −log(1 + e^−z), and for one
        logistic output the two classes' [log σ(−z), log σ(z)] (N, 2)."""
        model, xp = self.model, self.device.xp
        parts = []
        with self.device:
            for i in range(0, max(x.shape[0], 1), _PREDICT_CHUNK):
                z = model.forward(x[i : i + _PREDICT_CHUNK])
                if self.out == "softmax":
                    z = log_softmax(z, axis=1) if log else softmax(z, axis=1)
                elif self.out == "logistic" and log:
                    z = -xp.logaddexp(0.0, xp.concatenate([z, -z], axis=1) if z.shape[1] == 1 else -z)
                elif self.out == "logistic":
                    z = sigmoid(z, out=z)
                elif self.out == "exp":
                    z = xp.exp(z, out=z)
                parts.append(z)
            return parts[0] if len(parts) == 1 else xp.concatenate(parts)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.model is not None:
            host: dict[str, Any] = {}
            if self.optimizer is not None:
                host["optimizer"] = (type(self.optimizer).__name__, to_numpy(self.optimizer.state_dict()))
            if self.best is not None:
                host["best"] = to_numpy(self.best)
            state["host_state"] = host
        # the loss keeps the last step's arrays (CuPy after a GPU fit): a fresh one pickles as nothing
        state.update(model=None, optimizer=None, exported=None, best=None, loss=type(self.loss)(validate=False))
        return state

    def _restore_host_state(self) -> None:
        host, self.host_state = self.host_state, {}
        if "best" in host:
            self.best = self.device.send(host["best"])
        if "optimizer" in host:
            name, state = host["optimizer"]
            self.optimizer = getattr(optim, name)(self.model.parameters())
            self.optimizer.load_state_dict(state)


def _linears(model: Sequential) -> list[Linear]:
    return [layer for layer in model.layers if isinstance(layer, Linear)]


def _set_lr(opt: optim.Optimizer, lr: float) -> None:
    """Change the learning rate the way scikit-learn's SGD does: its velocity holds −lr·Σ…
    with the old rates, gpunn's holds the plain gradient sum, so gpunn's is rescaled."""
    velocity = opt.state.get("velocity")  # gpunn's Momentum/Nesterov buffer
    if velocity is not None and lr > 0:
        velocity *= opt.lr / lr
    opt.lr = float(lr)
