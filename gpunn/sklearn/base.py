"""The base of gpunn.sklearn's estimators: scikit-learn's parameters, the checks of X and y (CuPy X
on its device, anything else on the host, densified), ``fit`` (the data sent to the device once,
then a training loop) and the forward pass behind predictions."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ..backend.device import Device, array_module, device, device_of, to_numpy
from ..validation import FLOAT_DTYPES, check_dtype, check_values
from .network import _blas_threads, _Network
from .training import _NON_FINITE, _TrainingLoops

_STOCHASTIC = ("sgd", "adam")


def _is_cupy(x: Any) -> bool:
    return array_module(x) is not np


def _float_dtype(x: Any) -> np.dtype:
    """x's dtype if float32 or float64, else float64: the dtype scikit-learn computes in for x."""
    dtype = np.dtype(getattr(x, "dtype", np.float64))
    return dtype if dtype in FLOAT_DTYPES else np.dtype(np.float64)


class BaseMultilayerPerceptron(_TrainingLoops, BaseEstimator):
    """Shared fit / partial_fit machinery; use :class:`MLPClassifier` or :class:`MLPRegressor`."""

    # scikit-learn's constraints on its MLPs' parameters (its InvalidParameterError names the
    # parameter), limited to what gpunn implements, and gpunn's two
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
        # scikit-learn's rule: each parameter is stored, unchecked, as the attribute of its name
        vars(self).update({name: value for name, value in locals().items() if name != "self"})

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
        self._validate_params()
        self._compute_dtype(None)
        if not self._auto_device():
            device(self.device)  # a bad spec, or a GPU that is not usable, fails here with the reason

    def _compute_dtype(self, like: Any) -> np.dtype:
        """The dtype parameter's; for dtype=None, ``like``'s (the input's, as scikit-learn trains)."""
        return _float_dtype(like) if self.dtype is None else check_dtype("dtype", self.dtype)

    def _auto_device(self) -> bool:
        return isinstance(self.device, str) and self.device.strip().lower() == "auto"

    def _device(self, x: Any) -> Device:
        """The device to train on. For "auto": a CuPy input's GPU, else ``gn.device()``
        (GPUNN_DEVICE if set, else cuda:0 when usable, else the CPU)."""
        if self._auto_device():
            return device_of(x) if _is_cupy(x) else device(None)
        return device(self.device)

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(not isinstance(s, Integral) or isinstance(s, bool) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_x(self, X: Any, y: Any = "no_validation", net: _Network | None = None) -> tuple[Any, Any, np.dtype]:
        """Check X (and y, unless "no_validation") like scikit-learn, then X's values against the
        dtype of ``net``, the fitted network (None: a first fit, which resets n_features_in_ and
        trains in ``_compute_dtype(X)``). X comes back as a dense NumPy or CuPy array, y as a NumPy
        array, with the dtype the network computes in. CuPy X is checked on its device, its values in one
        scan, before any attribute changes."""
        fitting = not (isinstance(y, str) and y == "no_validation")
        reset = net is None
        classifier = isinstance(self, ClassifierMixin)
        host_checks = {"accept_sparse": ["csr", "csc"], "dtype": (np.float64, np.float32), "reset": reset}
        cupy = _is_cupy(X)
        if cupy:
            self._check_cupy_x(X)
            if fitting:
                if y is None:
                    raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
                y = check_array(to_numpy(y), ensure_2d=False, dtype=None if classifier else np.float64)
                check_consistent_length(X, y)  # reads X.shape only: nothing leaves the GPU
        elif fitting:
            X, y = validate_data(self, X, to_numpy(y), multi_output=True, y_numeric=not classifier, **host_checks)
        else:
            X = validate_data(self, X, **host_checks)
        if fitting and y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if scipy.sparse.issparse(X):
            X = X.toarray()  # gpunn computes densely; a sparse X is densified once
        # CuPy X's one scan of its values; host X, which scikit-learn has scanned for NaN and infinity,
        # only for values beyond a narrower network dtype (1e300 in float64 X would become inf in a
        # float32 network), or when scikit-learn was told to assume finite values
        dtype = self._compute_dtype(X) if reset else net.dtype
        if cupy or X.dtype.itemsize > dtype.itemsize or get_config()["assume_finite"]:
            check_values(X, "X", dtype)
        if cupy:  # n_features_in_ and feature_names_in_, set or compared as for host X above
            validate_data(self, X, skip_check_array=True, reset=reset)
        return X, y, dtype

    def _check_cupy_x(self, X: Any) -> None:
        """scikit-learn's checks of an (N, F) CuPy array's shape and dtype, on its device."""
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead (shape {tuple(X.shape)}).")
        if X.dtype.kind not in "biuf":
            raise ValueError(f"{type(self).__name__} needs numeric X, got a CuPy array of dtype {X.dtype}.")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(
                f"Found array with shape {tuple(X.shape)} while a minimum of 1 sample and feature is required."
            )

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> BaseMultilayerPerceptron:
        sizes = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        # every check comes before the network changes: a refused fit leaves the fitted model as it was
        net = None if first_pass else self._network()
        X, y, dtype = self._check_x(X, y, net)
        if sample_weight is not None:  # a host stand-in for X: the check needs only its length
            sample_weight = _check_sample_weight(
                to_numpy(sample_weight), np.empty((X.shape[0], 0)), dtype=np.float64, ensure_non_negative=True
            )
        targets, stratify, n_outputs = self._encode_targets(y, incremental)
        if not isinstance(self, ClassifierMixin):  # a classifier's targets are its own labels or 0/1 indicators
            check_values(targets, "y", dtype)
        if not first_pass and n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs but the fitted network has {self.n_outputs_}; refit it")
        rng = check_random_state(self.random_state)
        dev = self._device(X)
        if first_pass:
            net = self._initialize([X.shape[1], *sizes, n_outputs], dtype, rng, dev)
        net.sync(self, dev)
        self.device_ = str(dev)
        with dev:
            Xd = dev.send(X, dtype=dtype)
            Td = dev.send(targets) if targets.dtype.kind in "iu" else dev.send(targets, dtype=dtype)
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

    def _initialize(self, units: list[int], dtype: np.dtype, rng: np.random.RandomState, dev: Device) -> _Network:
        """A new network with scikit-learn's initial weights, and the records of a first fit."""
        self.out_activation_ = self._out_activation()
        net = self._net = _Network(units, self.activation, self.out_activation_, dtype)
        net.build(rng, dev)
        net.export(self)
        vars(self).update(self._new_records(units))
        return net

    def _new_records(self, units: list[int]) -> dict[str, Any]:
        """The records a fit keeps (n_iter_, t_, ..., and a stochastic solver's), as a first fit starts them."""
        records = {"n_iter_": 0, "t_": 0, "n_outputs_": units[-1], "n_layers_": len(units)}
        if self.solver in _STOCHASTIC:
            stopping = self.early_stopping
            records |= {
                "loss_curve_": [],
                "_no_improvement_count": 0,
                "best_loss_": None if stopping else np.inf,
                "validation_scores_": [] if stopping else None,
                "best_validation_score_": -np.inf if stopping else None,
            }
        return records

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
            for name, value in self._new_records(units).items():
                if not hasattr(self, name):
                    setattr(self, name, value)
        return net

    def _output(self, X: Any, log: bool = False) -> tuple[Any, Device]:
        """Output activations for X (their logarithms, computed from the logits, with ``log``),
        and the device X is on. Computed on the model's device in its dtype; returned in X's
        floating dtype (float64 for anything else, as scikit-learn's validation would make it)
        promoted with the network's, as scikit-learn's products promote: on X's GPU for CuPy
        input, as a NumPy array otherwise."""
        check_is_fitted(self)
        net = self._network()
        X, _, _ = self._check_x(X, net=net)
        net.sync(self, net.device if net.model is not None else self._device(X))
        with net.device:
            out = net.output(net.device.send(X, dtype=net.dtype), log=log)
        src = device_of(X)
        dtype = np.result_type(_float_dtype(X), net.dtype)
        if src.kind == "cuda":
            return src.send(out, dtype=dtype), src
        return to_numpy(out).astype(dtype, copy=False), src

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
