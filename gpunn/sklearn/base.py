"""The base of gpunn.sklearn's estimators: scikit-learn's parameters and their checks, the checks
of X and y (on the host for NumPy, lists, pandas and SciPy sparse input, densified; on the device,
without a copy to the host, for CuPy arrays), ``fit`` (the data sent to the device once, then a
training loop) and the forward pass behind predictions."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)

from ..backend.device import Device, array_module, device, device_of, to_numpy
from ..train.batches import check_values
from ..validation import check_dtype
from .network import _blas_threads, _Network
from .training import _NON_FINITE, _TrainingLoops

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.4 and 1.5

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


_STOCHASTIC = ("sgd", "adam")


def _is_cupy(x: Any) -> bool:
    return array_module(x) is not np


def _float_dtype(x: Any) -> np.dtype:
    """x's dtype if float32 or float64, else float64: the dtype scikit-learn computes in for x."""
    dtype = np.dtype(getattr(x, "dtype", np.float64))
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


class BaseMultilayerPerceptron(_TrainingLoops, BaseEstimator):
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
        "dtype": [str, type, np.dtype, None],
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

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> BaseMultilayerPerceptron:
        """Fit the network to X (n_samples, n_features) and y: labels (n_samples,) or a label
        indicator matrix (n_samples, n_classes) for classifiers, targets (n_samples,) or
        (n_samples, n_outputs) for regressors. ``sample_weight`` (n_samples,), >= 0: each
        batch's cost is the weighted mean Σ w_n·ℓ_n / Σ w_n and its L2 term ½·alpha·ΣW² / Σ w_n,
        as scikit-learn's; None weighs every sample 1. Returns self."""
        self._check_params()
        return self._fit(X, y, sample_weight, incremental=False)

    def _check_solver(self) -> bool:
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not.")
        return True

    def _check_params(self) -> None:
        self._validate_params()  # scikit-learn's InvalidParameterError names the parameter
        self._compute_dtype(None)
        if not self._auto_device():
            device(self.device)  # a bad spec, or a GPU that is not usable, fails here with the reason

    def _compute_dtype(self, like: Any) -> np.dtype:
        """The dtype parameter's; for dtype=None, ``like``'s (the input's, as scikit-learn trains)."""
        return _float_dtype(like) if self.dtype is None else check_dtype("dtype", self.dtype)

    def _auto_device(self) -> bool:
        return isinstance(self.device, str) and self.device.strip().lower() == "auto"

    def _device(self, x: Any = None) -> Device:
        """The device to train on. For "auto": a CuPy input's GPU, else ``gn.device()``
        (GPUNN_DEVICE if set, else cuda:0 when usable, else the CPU)."""
        if self._auto_device():
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
        classifier = isinstance(self, ClassifierMixin)
        host_checks = {"accept_sparse": ["csr", "csc"], "dtype": (np.float64, np.float32), "reset": reset}
        if _is_cupy(X):
            X = self._check_cupy_x(X, reset)
            if fitting:
                if y is None:
                    raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
                y = check_array(to_numpy(y), ensure_2d=False, dtype=None if classifier else np.float64)
                check_consistent_length(X, y)  # reads X.shape only: nothing leaves the GPU
        elif fitting:
            X, y = _validate_data(self, X, to_numpy(y), multi_output=True, y_numeric=not classifier, **host_checks)
        else:
            X = _validate_data(self, X, **host_checks)
        if fitting and y.ndim == 2 and y.shape[1] == 1:
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
            return X
        if X.shape[1] != getattr(self, "n_features_in_", X.shape[1]):
            raise ValueError(
                f"X has {X.shape[1]} features, but {name} is expecting {self.n_features_in_} features as input."
            )
        if hasattr(self, "feature_names_in_"):
            warnings.warn(
                f"X does not have valid feature names, but {name} was fitted with feature names", stacklevel=3
            )
        return X

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> BaseMultilayerPerceptron:
        sizes = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        if not first_pass:
            self._network()  # fitted attributes set by hand get their network (and label binarizer)
        X, y = self._check_x(X, y, reset=first_pass)
        if sample_weight is not None:  # a host stand-in for X: the check needs only its length
            sample_weight = _check_sample_weight(
                to_numpy(sample_weight), np.empty((X.shape[0], 0)), dtype=np.float64, ensure_non_negative=True
            )
        targets, stratify, n_outputs = self._encode_targets(y, incremental)
        rng = check_random_state(self.random_state)
        dev = self._device(X)
        if first_pass:
            self._initialize([X.shape[1], *sizes, n_outputs], self._compute_dtype(X), rng, dev)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs but the fitted network has {self.n_outputs_}; refit it")
        net: _Network = self._net
        net.sync(self, dev)
        self.device_ = str(dev)
        check_values(X, "X", net.dtype)  # 1e300 in float64 X would become inf in a float32 network
        check_values(targets, "y", net.dtype)
        with dev:
            Xd = dev.send(X, dtype=net.dtype)
            Td = dev.send(targets) if targets.dtype.kind in "iu" else dev.send(targets, dtype=net.dtype)
        batch = 200 if self.batch_size == "auto" else self.batch_size
        rows = Xd.shape[0] if self.solver == "lbfgs" else min(Xd.shape[0], batch)
        try:
            with _blas_threads(net.units, rows, dev):
                if self.solver == "lbfgs":
                    self._fit_lbfgs(net, Xd, Td, sample_weight)
                else:
                    self._fit_stochastic(net, Xd, Td, sample_weight, stratify, rng, incremental)
        finally:
            net.export(self)
        if not bool(dev.xp.isfinite(net.flat.data).all()):
            raise ValueError(_NON_FINITE)
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
        vars(self).update(self._new_records())

    def _new_records(self) -> dict[str, Any]:
        """The records a stochastic solver keeps across epochs, as a first fit starts them."""
        if self.solver not in _STOCHASTIC:
            return {}
        stopping = self.early_stopping
        return {
            "loss_curve_": [],
            "_no_improvement_count": 0,
            "best_loss_": None if stopping else np.inf,
            "validation_scores_": [] if stopping else None,
            "best_validation_score_": -np.inf if stopping else None,
        }

    def _network(self) -> _Network:
        """The network behind the fitted attributes. Where there is none, or it no longer
        matches them (coefs_, intercepts_ and out_activation_ set by hand: a model restored
        from the user's own storage, which scikit-learn reads straight from its attributes),
        a new one is built from them; missing records start as a first fit starts them."""
        units = [len(self.coefs_[0]), *(len(b) for b in self.intercepts_)]
        net = vars(self).get("_net")
        if net is None or (net.units, net.activation, net.out) != (units, self.activation, self.out_activation_):
            dtype = self._compute_dtype(self.coefs_[0])
            net = self._net = _Network(units, self.activation, self.out_activation_, dtype)
            records = {"n_iter_": 0, "t_": 0, "n_outputs_": units[-1], "n_layers_": len(units), **self._new_records()}
            for name, value in records.items():
                if not hasattr(self, name):
                    setattr(self, name, value)
        return net

    def _output(self, X: Any, log: bool = False) -> tuple[Any, bool, Device]:
        """Output activations for X (their logarithms, computed from the logits, with ``log``),
        and whether and where X was a CuPy array.

        Computed on the model's device in its dtype; returned in X's floating dtype (float64
        for anything else, as scikit-learn's validation would make it): on X's GPU for CuPy
        input, as a NumPy array otherwise."""
        check_is_fitted(self)
        X, _ = self._check_x(X, reset=False)
        net = self._network()
        net.sync(self, net.device if net.model is not None else self._device(X))
        check_values(X, "X", net.dtype)
        with net.device:
            out = net.output(net.device.send(X, dtype=net.dtype), log=log)
        dtype = _float_dtype(X)
        cupy_in = _is_cupy(X)
        src = device_of(X)
        out = src.send(out, dtype=dtype) if cupy_in else to_numpy(out).astype(dtype, copy=False)
        return out, cupy_in, src

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
