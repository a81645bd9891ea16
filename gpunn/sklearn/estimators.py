"""scikit-learn's MLPClassifier and MLPRegressor (its parameters, fitted attributes and training
semantics, plus ``device`` and ``dtype``), trained by gpunn on the best device present. Matched
exactly as :mod:`sklearn.neural_network` does it:

- initial weights: Glorot-uniform, W, b ~ U(−r, r) with r = √(6 / (fan_in + fan_out))
  (√(2 / …) for "logistic"), drawn from ``check_random_state(random_state)`` in scikit-learn's
  order, so a given ``random_state`` starts from scikit-learn's own initial weights;
- the objective of a mini-batch of n_b samples, reported as ``loss_curve_``:
  J = cost + ½·alpha·ΣW² / n_b, with cost the mean log-loss (softmax output for multiclass,
  one logistic output per column for binary and multilabel), half the mean squared error
  over samples *and* outputs, or the mean half Poisson deviance; the weight gradient is
  (∂cost_sum + alpha·W) / n_b, biases are not penalized. With ``sample_weight`` w, cost is
  the weighted mean Σ w_n·ℓ_n / Σ w_n and Σ_b w takes n_b's place (a weight of k counts as k
  copies of the sample, 0 as none; a batch of zero weights is skipped, where scikit-learn
  raises ZeroDivisionError); early stopping's validation score is weighted too;
- the optimizers: Adam with scikit-learn's bias correction (lr·√(1−β2^t)/(1−β1^t) with ε
  outside the square root), SGD with (Nesterov) momentum, "invscaling" and "adaptive"
  learning rates, the per-epoch ``tol`` / ``n_iter_no_change`` stopping rule, early stopping
  on a held-out ``validation_fraction`` with the best weights restored (also after the loss
  diverged to inf or NaN, which without early stopping ends the fit with scikit-learn's ValueError),
  ``t_`` counting samples, and the same warnings (ConvergenceWarning, batch_size clipping);
- "lbfgs": scipy's L-BFGS-B over the flat parameter buffer, with the full-batch objective
  and gradient computed on the device.

In float64 the loss curves agree with scikit-learn's to rounding (tests/sklearn/test_sklearn.py).
Known differences: the reported log-loss does not clip probabilities to [ε, 1 − ε] as
scikit-learn's does (it differs only while some probability underflows, e.g. in the first
epochs on unscaled data); negative sample weights are refused (scikit-learn takes them);
``predict_log_proba`` is computed from the logits, finite where scikit-learn's
log(predict_proba) is −inf; with "lbfgs" a multi-output regressor minimizes the objective
its gradient belongs to (scikit-learn's reported squared error is divided by the number of
outputs, its gradient is not).

The data go to the device once per fit; each epoch reads one small array back, as scikit-learn
evaluates its loss once per epoch too. On the CPU, small networks train with the BLAS on one
thread (see ``network._blas_threads``). Inputs may be NumPy arrays, lists, pandas frames, SciPy
sparse matrices (densified) or CuPy arrays; predictions follow the input: CuPy in, CuPy out
(numeric labels), NumPy otherwise. ``coefs_`` and ``intercepts_`` are NumPy arrays (on the
CPU, views of the live weights, as in scikit-learn; after a GPU fit, host copies — assign new
arrays to change the weights). As in scikit-learn, fitted attributes set by hand (``coefs_``,
``intercepts_``, ``out_activation_``, ``classes_``, ...: a model restored from the user's own storage)
predict and train on with partial_fit. Needs scikit-learn (``pip install "gpunn[sklearn]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from sklearn.base import ClassifierMixin, RegressorMixin
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError('gpunn.sklearn needs scikit-learn: pip install "gpunn[sklearn]"') from exc

from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels

from ..backend.device import Device, array_module, to_numpy
from .base import BaseMultilayerPerceptron
from .network import _Network  # also where pickles of earlier versions look for it

__all__ = ["MLPClassifier", "MLPRegressor"]


class MLPClassifier(ClassifierMixin, BaseMultilayerPerceptron):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by gpunn.

    Softmax output and mean log-loss for multiclass targets; one logistic output per column
    for binary (one column) and multilabel (label indicator matrix) targets. Parameters,
    attributes and methods are scikit-learn's, with the same meanings and defaults (see
    :mod:`gpunn.sklearn`), plus:

    device : "auto" (default), "cpu", "cuda:N" or a gpunn Device. "auto" trains on a CuPy
        input's GPU, else where ``gpunn.device()`` points (GPUNN_DEVICE, else cuda:0 when
        usable, else the CPU).

    dtype : "float32" (default), "float64" or None: the precision the network computes in.
        None follows the input as scikit-learn does (float32 X trains in float32, anything
        else in float64). The default is float32 whatever the input, many times faster on
        GPUs; None or "float64" reproduce scikit-learn's numbers.

    Fitted attributes: ``classes_``, ``loss_``, ``best_loss_``, ``loss_curve_``,
    ``validation_scores_``, ``best_validation_score_``, ``t_``, ``coefs_`` (list of (n_in, n_out)),
    ``intercepts_`` (list of (n_out,)), ``n_features_in_``, ``feature_names_in_``, ``n_iter_``,
    ``n_layers_``, ``n_outputs_``, ``out_activation_``, and ``device_`` (where the last fit ran,
    e.g. "cuda:0").
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
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y), with ``sample_weight`` as in :meth:`fit`. ``classes`` (every
        label of the whole data) is required on the first call. Returns self."""
        self._check_params()
        classes = None if classes is None else to_numpy(classes)  # scikit-learn's checks need host arrays
        if _check_partial_fit_first_call(self, classes):
            multilabel = type_of_target(to_numpy(y)).startswith("multilabel")
            self._label_binarizer = LabelBinarizer().fit(to_numpy(y) if multilabel else classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _network(self) -> _Network:
        if "_label_binarizer" not in vars(self):  # fitted attributes set by hand: from classes_
            k = len(self.intercepts_[-1])
            multilabel = k > 1 and self.out_activation_ == "logistic"
            self._label_binarizer = LabelBinarizer().fit(np.eye(k, dtype=int) if multilabel else self.classes_)
        return super()._network()

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities (n_samples, n_classes), ordered as ``classes_``."""
        out, src = self._output(X)
        if self.n_outputs_ == 1:
            with src:
                out = array_module(out).concatenate([1.0 - out, out], axis=1)
        return out

    def predict_log_proba(self, X: Any) -> Any:
        """log(predict_proba(X)) (n_samples, n_classes), computed from the logits z as log
        softmax(z) or log σ(z): finite where a probability rounds to 0."""
        return self._output(X, log=True)[0]

    def predict(self, X: Any) -> Any:
        """Predicted labels (n_samples,), or a label indicator matrix for multilabel targets."""
        out, src = self._output(X)
        if src.kind == "cpu":
            return self._label_binarizer.inverse_transform(out.ravel() if self.n_outputs_ == 1 else out)
        with src:
            codes = self._codes(out)
            if self._label_binarizer.y_type_.startswith("multilabel"):
                return codes
            if len(self.classes_) == 1:
                codes = codes * 0
            if self.classes_.dtype.kind not in "biuf":
                return self.classes_[to_numpy(codes)]  # CuPy cannot hold these labels: NumPy out
            return src.send(self.classes_)[codes]

    def _codes(self, out: Any) -> Any:
        """Class indices (softmax) or 0/1 decisions (logistic, thresholded at ½) from outputs."""
        if self.out_activation_ == "softmax":
            return out.argmax(axis=1)
        decisions = (out > 0.5).astype(np.int64)
        return decisions[:, 0] if self.n_outputs_ == 1 else decisions

    def _device_score(self, net: _Network, X: Any, T: Any, w: Any = None) -> float:
        """Accuracy on the device (subset accuracy for multilabel), as ``score``; weighted by
        the sample weights ``w`` (N,) unless None."""
        if len(self.classes_) == 1:
            return 1.0
        with net.device:
            predicted = self._codes(net.output(X))
            truth = self._codes(T) if T.ndim == 2 else T  # 0/1 targets of logistic outputs, or class indices
            correct = predicted == truth
            if correct.ndim == 2:
                correct = correct.all(axis=1)
            if w is None:
                return float(correct.mean())
            w = w.astype(np.float64)
            return float((w * correct).sum() / w.sum())

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
        # as in BaseMultilayerPerceptron: each parameter stored, unchecked, as the attribute of its name
        vars(self).update({name: value for name, value in locals().items() if name != "self"})

    def _out_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _encode_targets(self, y: Any, incremental: bool) -> tuple[np.ndarray, None, int]:
        y = np.asarray(y, dtype=np.float64)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        return y, None, y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over (X, y), with ``sample_weight`` as in :meth:`fit`. Returns self."""
        self._check_params()
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X: Any) -> Any:
        """Predicted targets (n_samples,) or (n_samples, n_outputs)."""
        out, _ = self._output(X)
        return out.ravel() if out.shape[1] == 1 else out

    def _device_score(self, net: _Network, X: Any, T: Any, w: Any = None) -> float:
        """R² on the device, averaged over outputs as ``r2_score`` (with the sample weights
        ``w`` (N,) unless None); NaN if a prediction is not finite."""
        with net.device:
            xp = net.device.xp
            predicted = net.output(X).astype(np.float64)
            if not bool(xp.isfinite(predicted).all()):
                return float("nan")
            truth = T.astype(np.float64)
            w = xp.ones((len(truth), 1)) if w is None else w.astype(np.float64)[:, None]
            residual = (w * (truth - predicted) ** 2).sum(axis=0)
            total = (w * (truth - (w * truth).sum(axis=0) / w.sum()) ** 2).sum(axis=0)
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
