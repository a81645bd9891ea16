"""scikit-learn compatible multilayer perceptrons that train with gpunn on the best device present.

``from gpunn.sklearn import MLPClassifier, MLPRegressor`` gives drop-in replacements for
scikit-learn's estimators of the same names: the same constructor parameters with the same
meanings and defaults, the same fitted attributes, and the same training semantics, plus
``device`` ("auto", "cpu", "cuda:N") and ``dtype`` (float32 by default).

What is matched, exactly as :mod:`sklearn.neural_network` does it:

- initial weights: Glorot-uniform, W, b ~ U(−r, r) with r = √(6 / (fan_in + fan_out))
  (√(2 / …) for "logistic"), drawn from ``check_random_state(random_state)`` in scikit-learn's
  order, so a given ``random_state`` starts from scikit-learn's own initial weights;
- the objective of a mini-batch of n_b samples, reported as ``loss_curve_``:
  J = cost + ½·alpha·ΣW² / n_b, with cost the mean log-loss (softmax output for multiclass,
  one logistic output per column for binary and multilabel), half the mean squared error
  over samples *and* outputs, or the mean half Poisson deviance; the weight gradient is
  (∂cost_sum + alpha·W) / n_b, biases are not penalized;
- the optimizers: Adam with scikit-learn's bias correction (lr·√(1−β2^t)/(1−β1^t) with ε
  outside the square root), SGD with (Nesterov) momentum, "invscaling" and "adaptive"
  learning rates, the per-epoch ``tol`` / ``n_iter_no_change`` stopping rule, early stopping
  on a held-out ``validation_fraction`` with the best weights restored, ``t_`` counting
  samples, and the same warnings (ConvergenceWarning, batch_size clipping);
- "lbfgs": scipy's L-BFGS-B over the flat parameter buffer, with the full-batch objective
  and gradient computed on the device.

In float64 the loss curves agree with scikit-learn's to rounding (tests/test_sklearn.py).
Known differences: the reported log-loss does not clip probabilities to [ε, 1 − ε] as
scikit-learn's does (it differs only while some probability underflows, e.g. in the first
epochs on unscaled data); fit and partial_fit take no ``sample_weight`` (scikit-learn >= 1.7
has one); with "lbfgs" a multi-output regressor minimizes the objective its gradient belongs
to (scikit-learn's reported squared error is divided by the number of outputs, its gradient
is not).

The data go to the device once per fit; each epoch reads one small (2, n_steps) array back
(the step costs and the ΣW² of each step's penalty), as scikit-learn evaluates its loss once
per epoch too. On the CPU, networks whose matrix products are small train with the BLAS held
to one thread: for them a second thread saves little on an idle machine and costs a lot on a
busy one (see ``_blas_threads``).
Inputs may be NumPy arrays, lists, pandas frames, SciPy sparse matrices (densified) or CuPy
arrays; predictions follow the input: CuPy in, CuPy out (numeric labels), NumPy otherwise.
``coefs_`` and ``intercepts_`` are NumPy arrays (on the CPU, views of the live weights, as in
scikit-learn; after a GPU fit, host copies — assign new arrays to change the weights).

This module needs scikit-learn (``pip install "gpunn[sklearn]"``); ``import gpunn`` does not.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError('gpunn.sklearn needs scikit-learn: pip install "gpunn[sklearn]"') from exc

import scipy.optimize
import scipy.sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from . import kernels, optim
from .backend import Device, array_module, device, device_of, to_numpy
from .functional import sigmoid, softmax
from .layers import Linear
from .losses import Loss, MSELoss, SigmoidBCELoss, SoftmaxWithLoss
from .regularizers import L2
from .sequential import Sequential, mlp
from .validation import check_dtype

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.4 and 1.5

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_STOCHASTIC = ("sgd", "adam")
_PREDICT_CHUNK = 65_536  # rows per forward pass when predicting (bounds device memory)


def _is_cupy(x: Any) -> bool:
    return array_module(x) is not np


# Below this many multiply-adds per matrix product a second BLAS thread saves little and can cost
# a lot. Measured on the 2-core development machine, float32 200×64·64×100: 35–50 µs on one
# thread; 33 µs on two when the machine is idle, 150–390 µs when another process keeps a core
# busy (OpenBLAS's threads then wait for each other); a whole digits fit took 0.2–0.3 s on one
# thread against 0.9–9 s on two under such load.
_SINGLE_THREAD_MACS = 1 << 22
_threadpools: list[Any] = []


def _blas_threads(units: list[int], rows: int, dev: Device) -> Any:
    """A context that runs the CPU's BLAS on one thread while the layers' products are small."""
    if dev.kind != "cpu" or rows * max(a * b for a, b in itertools.pairwise(units)) > _SINGLE_THREAD_MACS:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 — a gpunn dependency, needed here only
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if not _threadpools:
        _threadpools.append(ThreadpoolController())
    return _threadpools[0].limit(limits=1, user_api="blas")


# ----------------------------------------------------------------------------- the network


class _HalfPoissonLoss(Loss):
    """Half Poisson deviance with a log link, ŷ = exp(z):
    L = (1/N) Σ_n Σ_k [ŷ − t·z + t·log t − t];  ∂L/∂z = (ŷ − t) / N.  z, t: (N, K)."""

    def forward(self, z: Any, t: Any) -> Any:
        xp = array_module(z)
        t = t.reshape(z.shape)
        y = xp.exp(z)
        t_log_t = xp.where(t > 0, t * xp.log(xp.where(t > 0, t, 1.0)), 0.0)
        self._y, self._t = y, t
        return xp.asarray((y - t * z + t_log_t - t).sum() / z.shape[0])

    def backward(self) -> Any:
        d = self._y - self._t
        d *= 1.0 / d.shape[0]
        return d


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
        self.cache: dict[Any, Any] = {}  # per-device copies of classes_ for CuPy predictions
        self.loss: Loss = {
            "softmax": SoftmaxWithLoss,
            "logistic": SigmoidBCELoss,
            "identity": MSELoss,
            "exp": _HalfPoissonLoss,
        }[out](validate=False)  # targets are checked once per fit, not per step

    def build(self, rng: np.random.RandomState, dev: Device) -> None:
        """A new model with scikit-learn's Glorot-uniform weights drawn from ``rng``."""
        model = mlp(self.units, activation=_ACTIVATIONS[self.activation], dtype=self.dtype, seed=0)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer in _linears(model):
            bound = math.sqrt(factor / (layer.n_in + layer.n_out))
            layer.W.data[...] = rng.uniform(-bound, bound, (layer.n_in, layer.n_out))
            layer.b.data[...] = rng.uniform(-bound, bound, layer.n_out)
        self.model = model.to(dev)
        self.optimizer, self.best, self.host_state, self.exported = None, None, {}, None

    @property
    def flat(self) -> Any:
        return self.model.parameters()[0]._flat

    @property
    def device(self) -> Device:
        return self.model.device

    def sync(self, est: BaseMultilayerPerceptron, dev: Device | None = None) -> Sequential:
        """Make the model hold the estimator's ``coefs_`` and ``intercepts_`` (rebuilding it
        after unpickling, loading arrays the user assigned) and, given ``dev``, move it there."""
        arrays = (*est.coefs_, *est.intercepts_)
        if self.model is None:
            self.model = mlp(self.units, activation=_ACTIVATIONS[self.activation], dtype=self.dtype, seed=0)
            self.model.to(dev if dev is not None else est._device())
            self.exported = None
        if (
            self.exported is None
            or len(arrays) != len(self.exported)
            or any(a is not b for a, b in zip(arrays, self.exported, strict=False))
        ):
            layers = _linears(self.model)
            params = [layer.W for layer in layers] + [layer.b for layer in layers]
            if len(arrays) != len(params) or any(
                tuple(np.shape(a)) != p.shape for a, p in zip(arrays, params, strict=True)
            ):
                raise ValueError(
                    "coefs_ and intercepts_ no longer match the network's layer sizes "
                    f"{self.units}; refit the estimator"
                )
            for a, p in zip(arrays, params, strict=True):
                p.data[...] = self.device.send(np.asarray(a), dtype=self.dtype)
            self.exported = arrays
        if dev is not None and dev != self.device:
            self.model.to(dev)  # the optimizer follows on its next step
        if self.host_state:
            self._restore_host_state()
        return self.model

    def export(self, est: BaseMultilayerPerceptron) -> None:
        """Set ``coefs_`` (n_in, n_out) and ``intercepts_`` (n_out,) per layer, as NumPy arrays."""
        layers = _linears(self.model)
        on_cpu = self.device.kind == "cpu"
        est.coefs_ = [layer.W.data if on_cpu else to_numpy(layer.W.data) for layer in layers]
        est.intercepts_ = [layer.b.data if on_cpu else to_numpy(layer.b.data) for layer in layers]
        self.exported = (*est.coefs_, *est.intercepts_)

    def output(self, x: Any) -> Any:
        """The output layer's activation a = g(z) for x on the model's device: (N, n_outputs)."""
        model, xp = self.model, self.device.xp
        parts = []
        with self.device:
            for i in range(0, max(x.shape[0], 1), _PREDICT_CHUNK):
                z = model.forward(x[i : i + _PREDICT_CHUNK])
                if self.out == "softmax":
                    z = softmax(z, axis=1)
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
        state.update(model=None, optimizer=None, exported=None, best=None, cache={})
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


# ----------------------------------------------------------------------------- the estimators


class BaseMultilayerPerceptron(BaseEstimator):
    """Shared fit / partial_fit machinery; use :class:`MLPClassifier` or :class:`MLPRegressor`."""

    _parameter_constraints: dict = {  # noqa: RUF012 — scikit-learn's convention
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "device": [str, Device],
        "dtype": [str, type, np.dtype],
    }

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        max_fun: int = 15000,
        device: str | Device = "auto",
        dtype: Any = "float32",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype

    # ------------------------------------------------------------------ public API

    def fit(self, X: Any, y: Any) -> BaseMultilayerPerceptron:
        """Fit the network to X (n_samples, n_features) and y: labels (n_samples,) or a label
        indicator matrix (n_samples, n_classes) for classifiers, targets (n_samples,) or
        (n_samples, n_outputs) for regressors. Returns self."""
        self._check_params()
        return self._fit(X, y, incremental=False)

    def _check_solver(self) -> bool:
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not.")
        return True

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        if hasattr(self, "_validate_params"):
            self._validate_params()  # scikit-learn's InvalidParameterError names the parameter
        check_dtype("dtype", self.dtype)
        if not (isinstance(self.device, str) and self.device.strip().lower() == "auto"):
            device(self.device)  # a bad spec, or a GPU that is not usable, fails here with the reason

    def _device(self, x: Any = None) -> Device:
        """The device to train on. For "auto": a CuPy input's GPU, else ``gn.device()``
        (GPUNN_DEVICE if set, else cuda:0 when usable, else the CPU)."""
        if isinstance(self.device, str) and self.device.strip().lower() == "auto":
            return device_of(x) if x is not None and _is_cupy(x) else device(None)
        return device(self.device)

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(not isinstance(s, Integral) or isinstance(s, bool) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_x(self, X: Any, y: Any = "no_validation", reset: bool = True) -> tuple[Any, Any]:
        """Check X (and y, unless "no_validation") like scikit-learn; CuPy X is checked on its
        device. X comes back as a dense NumPy or CuPy array; y as a NumPy array."""
        fitting = not (isinstance(y, str) and y == "no_validation")
        if _is_cupy(X):
            X = self._check_cupy_x(X, reset)
            if fitting:
                if y is None:
                    raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
                y = self._validate_y(to_numpy(y), X.shape[0])
            return X, y
        if not fitting:
            X = _validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=reset)
        else:
            X, y = _validate_data(
                self,
                X,
                to_numpy(y),
                accept_sparse=["csr", "csc"],
                multi_output=True,
                y_numeric=not isinstance(self, ClassifierMixin),
                dtype=(np.float64, np.float32),
                reset=reset,
            )
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
        if scipy.sparse.issparse(X):
            X = X.toarray()  # gpunn computes densely; a sparse X is densified once
        return X, y

    def _check_cupy_x(self, X: Any, reset: bool) -> Any:
        """scikit-learn's checks for an (N, F) CuPy array, without copying it to the host."""
        name = type(self).__name__
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead (shape {tuple(X.shape)}).")
        if X.dtype.kind not in "biuf":
            raise ValueError(f"{name} needs numeric X, got a CuPy array of dtype {X.dtype}.")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(
                f"Found array with shape {tuple(X.shape)} while a minimum of 1 sample and feature is required."
            )
        if X.dtype.kind == "f" and not bool(array_module(X).isfinite(X).all()):
            raise ValueError("Input X contains NaN or infinity.")
        if reset:
            self.n_features_in_ = int(X.shape[1])
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {name} is expecting {self.n_features_in_} features as input."
                )
            if hasattr(self, "feature_names_in_"):
                warnings.warn(
                    f"X does not have valid feature names, but {name} was fitted with feature names", stacklevel=3
                )
        return X

    def _validate_y(self, y: Any, n: int) -> Any:
        y = check_array(y, ensure_2d=False, dtype=None if isinstance(self, ClassifierMixin) else np.float64)
        if y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n}, {y.shape[0]}]")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return y

    # ------------------------------------------------------------------ fitting

    def _fit(self, X: Any, y: Any, incremental: bool) -> BaseMultilayerPerceptron:
        sizes = self._hidden_sizes()
        dtype = check_dtype("dtype", self.dtype)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._check_x(X, y, reset=first_pass)
        targets, stratify, n_outputs = self._encode_targets(y, incremental)
        rng = check_random_state(self.random_state)
        dev = self._device(X)
        if first_pass:
            self._initialize([X.shape[1], *sizes, n_outputs], dtype, rng, dev)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs but the fitted network has {self.n_outputs_}; refit it")
        net: _Network = self._net
        net.sync(self, dev)
        self.device_ = str(dev)
        with dev:
            Xd = dev.send(X, dtype=net.dtype)
            Td = dev.send(targets) if targets.dtype.kind in "iu" else dev.send(targets, dtype=net.dtype)
        batch = 200 if self.batch_size == "auto" else self.batch_size
        rows = Xd.shape[0] if self.solver == "lbfgs" else min(Xd.shape[0], batch)
        try:
            with _blas_threads(net.units, rows, dev):
                if self.solver == "lbfgs":
                    self._fit_lbfgs(net, Xd, Td)
                else:
                    self._fit_stochastic(net, Xd, Td, stratify, rng, incremental)
        finally:
            net.export(self)
        if not bool(dev.xp.isfinite(net.flat.data).all()):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain large values "
                "and need to be preprocessed."
            )
        return self

    def _initialize(self, units: list[int], dtype: np.dtype, rng: np.random.RandomState, dev: Device) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = units[-1]
        self.n_layers_ = len(units)
        self.out_activation_ = self._out_activation()
        self._net = _Network(units, self.activation, self.out_activation_, dtype)
        self._net.build(rng, dev)
        self._net.export(self)
        if self.solver in _STOCHASTIC:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _loss_scale(self) -> float:
        """Reported cost / gpunn loss: scikit-learn averages the squared error over outputs too."""
        return 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0

    def _make_optimizer(self, net: _Network) -> optim.Optimizer:
        params = net.model.parameters()
        if self.solver == "adam":
            return optim.Adam(params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        if self.momentum == 0:
            return optim.SGD(params, lr=self.learning_rate_init)
        cls = optim.Nesterov if self.nesterovs_momentum else optim.Momentum
        opt = cls(params, lr=self.learning_rate_init, momentum=0.0)
        opt.momentum = float(self.momentum)  # gpunn's constructor refuses μ = 1, which scikit-learn allows
        return opt

    def _fit_stochastic(
        self, net: _Network, X: Any, T: Any, stratify: Any, rng: np.random.RandomState, incremental: bool
    ) -> None:
        """Epochs of mini-batch updates until max_iter, the tol / n_iter_no_change rule or,
        for partial_fit, one epoch; scikit-learn's bookkeeping after each epoch."""
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or net.optimizer is None:
            net.optimizer = self._make_optimizer(net)
        X, T, validation = self._split_validation(net, X, T, stratify, rng)
        n = X.shape[0]
        batch_size = self._batch_size(n)
        n_steps = -(-n // batch_size)
        sizes = np.full(n_steps, float(batch_size))
        sizes[-1] = n - batch_size * (n_steps - 1)
        flat, dev = net.flat, net.device
        scratch = None
        if dev.kind == "cpu" and flat.n_decay:
            small = flat.n_decay <= kernels.CHUNK
            scratch = np.empty(flat.n_decay, flat.dtype) if small else kernels.scratch(flat.n_decay, flat.dtype)
        sample_idx = np.arange(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                order = None
                if self.shuffle:
                    # what sklearn.utils.shuffle(sample_idx, random_state=rng) draws, without its checks
                    permutation = np.arange(n)
                    rng.shuffle(permutation)
                    sample_idx = sample_idx[permutation]
                    with dev:
                        order = dev.send(sample_idx)
                record = self._epoch(net, X, T, order, batch_size, scratch)
                self._end_epoch(float(record[0] @ sizes) / n, float(record[1].sum()) / n, n)
                self._update_no_improvement_count(net, validation)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    _set_lr(net.optimizer, self.learning_rate_init / (self.t_ + 1) ** self.power_t)
                if self._no_improvement_count > self.n_iter_no_change and self._stop_or_slow_down(net.optimizer):
                    break
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                        "optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=4,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if self.early_stopping:
            flat.data[...] = net.best  # restore the weights of the best validation score

    def _split_validation(
        self, net: _Network, X: Any, T: Any, stratify: Any, rng: np.random.RandomState
    ) -> tuple[Any, Any, tuple[Any, Any] | None]:
        """With early_stopping, set aside validation_fraction of the samples as scikit-learn
        does (stratified for single-output classifiers); returns (X_train, T_train, (X_val, T_val))."""
        if not self.early_stopping:
            return X, T, None
        should_stratify = isinstance(self, ClassifierMixin) and self.n_outputs_ == 1
        train_idx, val_idx = train_test_split(
            np.arange(X.shape[0]),
            random_state=rng,
            test_size=self.validation_fraction,
            stratify=stratify if should_stratify else None,
        )
        if val_idx.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' or the size of your dataset."
            )
        dev = net.device
        if net.best is None:
            net.best = net.flat.data.copy()
        with dev:
            train_idx, val_idx = dev.send(train_idx), dev.send(val_idx)
            return X[train_idx], T[train_idx], (X[val_idx], T[val_idx])

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped", stacklevel=5
            )
        return int(np.clip(self.batch_size, 1, n))

    def _end_epoch(self, cost: float, mean_sum_sq: float, n: int) -> None:
        """Record the epoch's loss: the sample-weighted mean of the batch objectives,
        cost·scale + ½·alpha·(Σ_steps ΣW²)/n."""
        loss = cost * self._loss_scale() + 0.5 * self.alpha * mean_sum_sq
        if not math.isfinite(loss):
            raise ValueError(
                f"Solver produced non-finite parameter weights (the loss became {loss} in iteration "
                f"{self.n_iter_ + 1}). The input data may contain large values and need to be "
                "preprocessed, or the learning rate is too high."
            )
        self.n_iter_ += 1
        self.loss_ = loss
        self.t_ += n
        self.loss_curve_.append(loss)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")

    def _stop_or_slow_down(self, opt: optim.Optimizer) -> bool:
        """No improvement for n_iter_no_change epochs: stop (True), or with the 'adaptive'
        learning rate divide it by 5 and go on while it stays above 1e-6."""
        what = "Validation score" if self.early_stopping else "Training loss"
        msg = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
        if not (self.solver == "sgd" and self.learning_rate == "adaptive"):
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if opt.lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        _set_lr(opt, opt.lr / 5.0)
        if self.verbose:
            print(f"{msg} Setting learning rate to {opt.lr:f}")
        self._no_improvement_count = 0
        return False

    def _epoch(self, net: _Network, X: Any, T: Any, order: Any, batch_size: int, scratch: Any) -> np.ndarray:
        """One pass over (X, T) in mini-batches; returns, read once, (2, n_steps): each step's
        mean cost and the ΣW² its penalty used (the weights before the step's update).

        Per step: z = model(x_b); cost, ∂cost/∂z; backward writes every grad; then the L2
        gradient (alpha / n_b)·W is added to the flat weight gradient in one pass, and the
        optimizer updates the flat buffer in one operation."""
        model, loss, dev, opt = net.model, net.loss, net.device, net.optimizer
        flat = net.flat
        n_steps = -(-X.shape[0] // batch_size)
        weights, weight_grads = flat.data[: flat.n_decay], flat.grad[: flat.n_decay]
        alpha, n = self.alpha, X.shape[0]
        adam = isinstance(opt, optim.Adam)
        beta2, beta2_t = self.beta_2, self.beta_2**opt.step_count
        small = dev.kind == "cpu" and flat.n_decay <= kernels.CHUNK
        with dev:
            record = dev.xp.zeros((2, n_steps), dtype=net.dtype)
            for step in range(n_steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                if order is None:
                    xb, tb = X[start:stop], T[start:stop]
                else:
                    idx = order[start:stop]
                    xb, tb = X[idx], T[idx]
                record[0, step] = loss.forward(model.forward(xb), tb)
                model.backward(loss.backward(), input_grad=False)
                if alpha:
                    record[1, step] = weights @ weights
                    if small:  # two NumPy calls cost less than the piecewise runner's overhead
                        np.multiply(weights, alpha / (stop - start), out=scratch)
                        weight_grads += scratch
                    else:
                        kernels.axpy_update(weight_grads, weights, scratch, a=alpha / (stop - start))
                if adam:
                    # scikit-learn's Adam adds ε to √v, not to √v̂: ε' = ε / √(1 − β2^t) in gpunn's form
                    beta2_t *= beta2
                    opt.eps = self.epsilon / math.sqrt(1.0 - beta2_t)
                opt.step()
            return to_numpy(record).astype(np.float64)

    def _update_no_improvement_count(self, net: _Network, validation: tuple[Any, Any] | None) -> None:
        if validation is not None:
            score = self._device_score(net, *validation)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                net.best[...] = net.flat.data
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    def _fit_lbfgs(self, net: _Network, X: Any, T: Any) -> None:
        """Full-batch L-BFGS-B (scipy) on J = cost + ½·alpha·ΣW²/N and its exact gradient."""
        model, loss, dev, flat = net.model, net.loss, net.device, net.flat
        params = model.parameters()
        n = X.shape[0]
        weights = flat.data[: flat.n_decay]
        grad = L2(self.alpha / n)
        scale = self._loss_scale()

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            with dev:
                flat.data[...] = dev.send(w, dtype=flat.dtype)
                cost = loss.forward(model.forward(X), T)
                model.backward(loss.backward(), input_grad=False)
                grad.backward(params)
                value = float(cost) + 0.5 * self.alpha * float(weights @ weights) / n
                return value, to_numpy(flat.grad).astype(np.float64)

        result = scipy.optimize.minimize(
            objective,
            to_numpy(flat.data).astype(np.float64),
            method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )
        with dev:
            flat.data[...] = dev.send(result.x, dtype=flat.dtype)
        self.n_iter_ = int(result.nit)
        if result.status != 0:
            message = result.message.decode() if isinstance(result.message, bytes) else result.message
            warnings.warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}):\n"
                f"{message}\n\nIncrease the number of iterations to improve the convergence "
                f"(max_iter={self.max_iter}).",
                ConvergenceWarning,
                stacklevel=3,
            )
        if scale != 1.0:  # report scikit-learn's cost (squared error averaged over outputs too)
            penalty = 0.5 * self.alpha * float(weights @ weights) / n
            self.loss_ = (float(result.fun) - penalty) * scale + penalty
        else:
            self.loss_ = float(result.fun)

    # ------------------------------------------------------------------ predicting

    def _output(self, X: Any) -> tuple[Any, bool, Device]:
        """Output activations for X, and whether and where X was a CuPy array.

        Computed on the model's device in its dtype; returned in X's floating dtype (float64
        for anything else, as scikit-learn's validation would make it): on X's GPU for CuPy
        input, as a NumPy array otherwise."""
        check_is_fitted(self)
        X, _ = self._check_x(X, reset=False)
        net: _Network = self._net
        net.sync(self, net.device if net.model is not None else self._device(X))
        with net.device:
            out = net.output(net.device.send(X, dtype=net.dtype))
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        cupy_in = _is_cupy(X)
        src = device_of(X)
        out = src.send(out, dtype=dtype) if cupy_in else to_numpy(out).astype(dtype, copy=False)
        return out, cupy_in, src

    def _device_score(self, net: _Network, X: Any, T: Any) -> float:
        raise NotImplementedError

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {}


def _set_lr(opt: optim.Optimizer, lr: float) -> None:
    """Change the learning rate the way scikit-learn's SGD does: its velocity holds −lr·Σ…
    with the old rates, gpunn's holds the plain gradient sum, so gpunn's is rescaled."""
    velocity = opt._state.get("velocity")  # gpunn's Momentum/Nesterov buffer (same package)
    if velocity is not None and lr > 0:
        velocity *= opt.lr / lr
    opt.lr = float(lr)


class MLPClassifier(ClassifierMixin, BaseMultilayerPerceptron):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by gpunn.

    Softmax output and mean log-loss for multiclass targets; one logistic output per column
    for binary (one column) and multilabel (label indicator matrix) targets. Parameters,
    attributes and methods are scikit-learn's, with the same meanings and defaults (see
    :mod:`gpunn.sklearn`), plus:

    device : "auto" (default), "cpu", "cuda:N" or a gpunn Device. "auto" trains on a CuPy
        input's GPU, else where ``gpunn.device()`` points (GPUNN_DEVICE, else cuda:0 when
        usable, else the CPU).
    dtype : "float32" (default) or "float64", the precision the network computes in.

    Fitted attributes: classes_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, coefs_ (list of (n_in, n_out)), intercepts_ (list of
    (n_out,)), n_features_in_, feature_names_in_, n_iter_, n_layers_, n_outputs_,
    out_activation_, and device_ (where the last fit ran, e.g. "cuda:0").
    """

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _encode_targets(self, y: Any, incremental: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Labels → (integer classes (N,) for softmax, or 0/1 targets (N, K)); also the
        binarized labels scikit-learn stratifies its early-stopping split by, and the number
        of network outputs."""
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the previous "
                        f"call to fit. Previously got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. 'y' has {classes}."
                )
        binary = self._label_binarizer.transform(y).astype(bool)
        if self._label_binarizer.y_type_ == "multiclass":
            return binary.argmax(axis=1).astype(np.int64), binary, binary.shape[1]
        return binary.astype(np.float32), binary, binary.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y). ``classes`` (every label of the whole data) is required on
        the first call. Returns self."""
        self._check_params()
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(to_numpy(y)).startswith("multilabel"):
                self._label_binarizer.fit(to_numpy(y))
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities (n_samples, n_classes), ordered as ``classes_``."""
        out, _, src = self._output(X)
        if self.n_outputs_ == 1:
            with src:
                out = array_module(out).concatenate([1.0 - out, out], axis=1)
        return out

    def predict_log_proba(self, X: Any) -> Any:
        """log(predict_proba(X))."""
        proba = self.predict_proba(X)
        return array_module(proba).log(proba, out=proba)

    def predict(self, X: Any) -> Any:
        """Predicted labels (n_samples,), or a label indicator matrix for multilabel targets."""
        out, cupy_in, src = self._output(X)
        if not cupy_in:
            return self._label_binarizer.inverse_transform(out.ravel() if self.n_outputs_ == 1 else out)
        with src:
            return self._labels_on_device(out, src)

    def _codes(self, out: Any) -> Any:
        """Class indices (softmax) or 0/1 decisions (logistic, thresholded at ½) from outputs."""
        if self.out_activation_ == "softmax":
            return out.argmax(axis=1)
        decisions = (out > 0.5).astype(np.int64)
        return decisions[:, 0] if self.n_outputs_ == 1 else decisions

    def _labels_on_device(self, out: Any, src: Device) -> Any:
        codes = self._codes(out)
        if self._label_binarizer.y_type_.startswith("multilabel"):
            return src.send(codes)
        if len(self.classes_) == 1:
            codes = codes * 0
        if self.classes_.dtype.kind not in "biuf":
            return self.classes_[to_numpy(codes)]  # CuPy cannot hold these labels: NumPy out
        cache = self._net.cache
        classes = cache.get(src)
        if classes is None:
            classes = cache[src] = src.send(self.classes_)
        return classes[codes]

    def _device_score(self, net: _Network, X: Any, T: Any) -> float:
        """Accuracy on the device (subset accuracy for multilabel), as ``score``."""
        with net.device:
            predicted = self._codes(net.output(X))
            if len(self.classes_) == 1:
                return 1.0
            if T.ndim == 2:
                truth = (T > 0.5).astype(np.int64)
                truth = truth[:, 0] if self.n_outputs_ == 1 else truth
            else:
                truth = T
            correct = predicted == truth
            if correct.ndim == 2:
                correct = correct.all(axis=1)
            return float(correct.mean())

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on (X, y) (subset accuracy for multilabel targets)."""
        predicted = self.predict(X)
        return float(accuracy_score(to_numpy(y), to_numpy(predicted), sample_weight=to_numpy(sample_weight)))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, BaseMultilayerPerceptron):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor, trained by gpunn.

    Identity output with half the mean squared error (``loss="squared_error"``), or an
    exponential output with the mean half Poisson deviance (``loss="poisson"``, y >= 0).
    Parameters, attributes and methods are scikit-learn's (see :mod:`gpunn.sklearn`), plus
    ``device`` and ``dtype`` as for :class:`MLPClassifier`. Single- and multi-output
    targets. Fitted attributes as scikit-learn's, plus ``device_``.
    """

    _parameter_constraints: dict = {  # noqa: RUF012
        **BaseMultilayerPerceptron._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        loss: str = "squared_error",
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        max_fun: int = 15000,
        device: str | Device = "auto",
        dtype: Any = "float32",
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            device=device,
            dtype=dtype,
        )
        self.loss = loss

    def _out_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _encode_targets(self, y: Any, incremental: bool) -> tuple[np.ndarray, None, int]:
        y = np.asarray(y, dtype=np.float64)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        return y, None, y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over (X, y). Returns self."""
        self._check_params()
        return self._fit(X, y, incremental=True)

    def predict(self, X: Any) -> Any:
        """Predicted targets (n_samples,) or (n_samples, n_outputs)."""
        out, _, _ = self._output(X)
        return out.ravel() if out.shape[1] == 1 else out

    def _device_score(self, net: _Network, X: Any, T: Any) -> float:
        """R² on the device, averaged over outputs as ``r2_score``; NaN if a prediction is not finite."""
        with net.device:
            xp = net.device.xp
            predicted = net.output(X).astype(np.float64)
            if not bool(xp.isfinite(predicted).all()):
                return float("nan")
            truth = T.astype(np.float64)
            residual = ((truth - predicted) ** 2).sum(axis=0)
            total = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
            safe = xp.where(total == 0, 1.0, total)
            r2 = xp.where(total == 0, xp.where(residual == 0, 1.0, 0.0), 1.0 - residual / safe)
            return float(r2.mean())

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Coefficient of determination R² of the prediction (uniform average over outputs)."""
        predicted = self.predict(X)
        return float(r2_score(to_numpy(y), to_numpy(predicted), sample_weight=to_numpy(sample_weight)))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"multioutput": True}
