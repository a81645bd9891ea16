"""Input and target checks of gpunn.sklearn's estimators: scikit-learn's validation of X and y,
on the host for NumPy, lists, pandas and SciPy sparse input (densified), and on the device,
without a copy to the host, for CuPy arrays.

Private to :mod:`gpunn.sklearn`, which needs scikit-learn; ``import gpunn`` does not import it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse
from sklearn.base import ClassifierMixin
from sklearn.utils.validation import check_array, column_or_1d

from ..backend.device import array_module, to_numpy

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.4 and 1.5

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


def _is_cupy(x: Any) -> bool:
    return array_module(x) is not np


class _InputChecks:
    """The X and y checks of :class:`~gpunn.sklearn.BaseMultilayerPerceptron` (a mixin)."""

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
