"""The training loops of gpunn.sklearn's estimators: scikit-learn's mini-batch epochs ("sgd",
"adam") with its bookkeeping, stopping rules and early stopping, and full-batch L-BFGS-B ("lbfgs")
over the flat parameter buffer."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.optimize
from sklearn.base import ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from .. import optim
from ..backend.device import device_of, to_numpy
from ..nn.regularizers import L2
from .network import _Network, _set_lr, _WeightedLoss

# scikit-learn's words, which code in the wild matches; any detail goes after them
_NON_FINITE = (
    "Solver produced non-finite parameter weights. The input data may contain large values and need to be preprocessed."
)


class _TrainingLoops:
    """The fitting loops of :class:`~gpunn.sklearn.BaseMultilayerPerceptron` (a mixin)."""

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
        self,
        net: _Network,
        X: Any,
        T: Any,
        sample_weight: np.ndarray | None,
        stratify: Any,
        rng: np.random.RandomState,
        incremental: bool,
    ) -> None:
        """Epochs of mini-batch updates until max_iter, the tol / n_iter_no_change rule or,
        for partial_fit, one epoch; scikit-learn's bookkeeping after each epoch.
        ``sample_weight``: (N,) on the host, or None."""
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or net.optimizer is None:
            net.optimizer = self._make_optimizer(net)
        X, T, sample_weight, validation = self._split_validation(net, X, T, sample_weight, stratify, rng)
        n = X.shape[0]
        batch_size = self._batch_size(n)
        starts = np.arange(0, n, batch_size)
        sizes = np.diff(starts, append=n).astype(np.float64)  # host: each batch's size n_b
        dev = net.device
        penalty = L2(self.alpha) if self.alpha else None  # its coefficient is set per batch (alpha / Σ_b w)
        loss = net.loss if sample_weight is None else _WeightedLoss(net.out)
        with dev:
            sw = None if sample_weight is None else dev.send(sample_weight, dtype=net.dtype)
        sample_idx = np.arange(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                order = None
                if self.shuffle:
                    # what sklearn.utils.shuffle(sample_idx, random_state=rng) draws, without its checks
                    sample_idx = sample_idx[rng.permutation(n)]
                    with dev:
                        order = dev.send(sample_idx)
                # each batch's weight sum Σ_b w (its size n_b unweighted) divides its gradient and L2 term
                divisors = sizes
                if sw is not None:
                    divisors = np.add.reduceat(sample_weight[sample_idx], starts)  # host: the weights
                record = self._epoch(net, loss, penalty, X, T, sw, order, batch_size, divisors)
                # scikit-learn's epoch loss: Σ_b n_b·(cost_b + ½·alpha·ΣW²/Σ_b w) / n
                l2_terms = record[1] * (sizes / np.where(divisors > 0, divisors, 1.0))  # host: host divisors
                self._end_epoch(float(record[0] @ sizes) / n, float(l2_terms.sum()) / n, n)
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
            net.flat.data[...] = net.best  # restore the weights of the best validation score

    def _split_validation(
        self, net: _Network, X: Any, T: Any, sample_weight: Any, stratify: Any, rng: np.random.RandomState
    ) -> tuple[Any, Any, Any, tuple[Any, Any, Any] | None]:
        """With early_stopping, set aside validation_fraction of the samples as scikit-learn
        does (stratified for single-output classifiers); returns (X_train, T_train,
        sample_weight_train, (X_val, T_val, sample_weight_val on the device)), the weights
        None without sample_weight."""
        if not self.early_stopping:
            return X, T, sample_weight, None
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
        if net.best is None or device_of(net.best) != dev:  # a warm start may have moved the model
            net.best = net.flat.data.copy()
        with dev:
            sw_val = None if sample_weight is None else dev.send(sample_weight[val_idx], dtype=net.dtype)
            sw_train = None if sample_weight is None else sample_weight[train_idx]
            train_idx, val_idx = dev.send(train_idx), dev.send(val_idx)
            return X[train_idx], T[train_idx], sw_train, (X[val_idx], T[val_idx], sw_val)

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped", stacklevel=5
            )
        return int(np.clip(self.batch_size, 1, n))  # host: Python ints

    def _end_epoch(self, cost: float, mean_sum_sq: float, n: int) -> None:
        """Record the epoch's loss: the mean of the batch objectives weighted by batch size,
        cost·scale + ½·alpha·mean_sum_sq. A loss that is not finite ends the fit, except with
        early stopping, where scikit-learn trains on (recording NaN validation scores) and
        restores the best weights at the end (it raises only once the epochs are done otherwise)."""
        loss = cost * self._loss_scale() + 0.5 * self.alpha * mean_sum_sq
        if not (math.isfinite(loss) or self.early_stopping):
            raise ValueError(
                f"{_NON_FINITE} The loss became {loss} in iteration {self.n_iter_ + 1}; the learning "
                "rate may be too high."
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
        adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
        if not adaptive or opt.lr <= 1e-6:
            if self.verbose:
                print(msg + (" Learning rate too small. Stopping." if adaptive else " Stopping."))
            return True
        _set_lr(opt, opt.lr / 5.0)
        if self.verbose:
            print(f"{msg} Setting learning rate to {opt.lr:f}")
        self._no_improvement_count = 0
        return False

    def _epoch(
        self,
        net: _Network,
        loss: Any,
        penalty: L2 | None,
        X: Any,
        T: Any,
        sw: Any,
        order: Any,
        batch_size: int,
        divisors: np.ndarray,
    ) -> np.ndarray:
        """One pass over (X, T) in mini-batches, in ``order`` (device indices; None: as they
        are); returns, read once, (2, n_steps): each step's (weighted) mean cost and the ΣW²
        its penalty used (the weights before the step's update). ``penalty``: the fit's L2,
        None without alpha. ``sw``: the sample weights on the device (None: unweighted, with
        ``loss`` the network's), ``divisors``: each batch's weight sum Σ_b w, or its size n_b.

        Per step: z = model(x_b); cost, ∂cost/∂z; backward writes every grad; then the
        optimizer updates the flat buffer in one operation that also adds the L2 gradient
        (alpha / Σ_b w)·W to the weights' gradient (the same rounding as adding it first).
        A batch whose weights are all zero holds no sample that counts: it is skipped."""
        model, opt, flat, dev = net.model, net.optimizer, net.flat, net.device
        divisors = divisors.tolist()  # Python floats: a NumPy float64 would promote float32 arrays
        n_steps = len(divisors)
        weights = flat.data[: flat.n_decay]
        alpha, n = self.alpha, X.shape[0]
        adam = isinstance(opt, optim.Adam)
        beta2, beta2_t = self.beta_2, self.beta_2**opt.step_count
        on_cpu = dev.kind == "cpu"
        with dev:
            record = dev.xp.zeros((2, n_steps), dtype=net.dtype)
            for step in range(n_steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                rows = slice(start, stop) if order is None else order[start:stop]
                if order is not None and on_cpu:
                    # NumPy's take copies whole rows; X[idx] goes through the general fancy-index
                    # machinery, 2–3× slower for a 200-row batch (same rows, same result)
                    xb, tb = X.take(rows, axis=0), T.take(rows, axis=0)
                else:
                    xb, tb = X[rows], T[rows]
                if sw is not None:
                    if divisors[step] == 0.0:
                        continue
                    loss.weights = sw[rows] * (1.0 / divisors[step])
                if penalty is not None:
                    record[1, step] = weights @ weights  # before the step's update
                    penalty.lam = alpha / divisors[step]
                if adam:
                    # scikit-learn's Adam adds ε to √v, not to √v̂: ε' = ε / √(1 − β2^t) in gpunn's form
                    beta2_t *= beta2
                    opt.eps = self.epsilon / math.sqrt(1.0 - beta2_t)
                record[0, step] = loss.forward(model.forward(xb), tb)
                model.backward(loss.backward())
                opt.step(penalty)
            return to_numpy(record).astype(np.float64)

    def _update_no_improvement_count(self, net: _Network, validation: tuple[Any, Any, Any] | None) -> None:
        if validation is not None:
            score = self._device_score(net, *validation)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            no_improvement = score < self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                net.best[...] = net.flat.data
        else:
            no_improvement = self.loss_curve_[-1] > self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
        self._no_improvement_count = self._no_improvement_count + 1 if no_improvement else 0

    def _fit_lbfgs(self, net: _Network, X: Any, T: Any, sample_weight: np.ndarray | None) -> None:
        """Full-batch L-BFGS-B (scipy) on J = cost + ½·alpha·ΣW²/N and its exact gradient;
        with ``sample_weight`` (N,) on the host, the weighted mean cost and Σ w in place of N."""
        model, loss, dev, flat = net.model, net.loss, net.device, net.flat
        params = model.parameters()
        n = X.shape[0]
        if sample_weight is not None:
            n = float(sample_weight.sum())
            loss = _WeightedLoss(net.out)
            with dev:
                loss.weights = dev.send(sample_weight / n, dtype=net.dtype)
        weights = flat.data[: flat.n_decay]
        grad = L2(self.alpha / n)
        scale = self._loss_scale()

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            with dev:
                flat.data[...] = dev.send(w, dtype=flat.dtype)
                cost = loss.forward(model.forward(X), T)
                model.backward(loss.backward())
                grad.backward(params)
                cost, sum_sq = to_numpy(dev.xp.stack([cost, weights @ weights])).tolist()  # one host read
                value = cost + 0.5 * self.alpha * sum_sq / n
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
            warnings.warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}):\n"
                f"{result.message}\n\nIncrease the number of iterations to improve the convergence "
                f"(max_iter={self.max_iter}).",
                ConvergenceWarning,
                stacklevel=3,
            )
        if scale != 1.0:  # report scikit-learn's cost (squared error averaged over outputs too)
            penalty = 0.5 * self.alpha * float(weights @ weights) / n
            self.loss_ = (float(result.fun) - penalty) * scale + penalty
        else:
            self.loss_ = float(result.fun)
