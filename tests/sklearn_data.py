"""Small data sets shared by the scikit-learn tests (fixed seeds)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification, make_regression
from sklearn.preprocessing import StandardScaler


def multiclass() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(300, 10, n_informative=5, n_classes=3, random_state=0)
    return StandardScaler().fit_transform(x), y


def binary() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(200, 8, random_state=1)
    return StandardScaler().fit_transform(x), y


def regression(n_targets: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_regression(300, 10, n_targets=n_targets, noise=1.0, random_state=0)
    return x, y / 100.0
