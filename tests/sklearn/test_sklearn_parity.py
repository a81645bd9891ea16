"""gpunn.sklearn against scikit-learn's own MLP estimators where they once differed: a
diverging loss with early stopping, the non-finite weights error, training in the input's
dtype (dtype=None), fitted attributes set by hand, a stable predict_log_proba, and sample_weight."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import neural_network as sk
from sklearn.datasets import make_multilabel_classification, make_regression
from sklearn_data import binary, multiclass, regression

from gpunn.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

OURS = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}
NON_FINITE = (
    "Solver produced non-finite parameter weights. The input data may contain large values and need to be preprocessed."
)


def _weights(n: int) -> np.ndarray:
    return np.random.RandomState(0).uniform(0.2, 3.0, n)


def _fitted_attributes(est) -> dict:
    """The public fitted attributes (name_), what a user stores to restore a model."""
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}


# ----------------------------------------------------------------------------- a diverging loss


def _diverging() -> tuple[np.ndarray, np.ndarray, dict]:
    x, y = make_regression(200, 5, random_state=0)
    return x * 1e3, y, {"solver": "sgd", "learning_rate_init": 1.0, "max_iter": 30, "random_state": 0}


def test_a_diverging_loss_with_early_stopping_trains_on_and_restores_the_best_weights():
    x, y, params = _diverging()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow, in scikit-learn as here
        theirs = sk.MLPRegressor(early_stopping=True, **params).fit(x, y)
        ours = MLPRegressor(early_stopping=True, dtype="float64", device="cpu", **params).fit(x, y)
    assert ours.n_iter_ == theirs.n_iter_ == 30
    assert np.isnan(ours.validation_scores_[-1]) and not np.isfinite(ours.loss_curve_[-1])
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-9)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)  # the best epoch's weights, all finite
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x), rtol=1e-9)


def test_non_finite_weights_raise_scikit_learns_message_first():
    x, y, params = _diverging()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=re.escape(NON_FINITE)) as theirs:
            sk.MLPRegressor(**params).fit(x, y)
        with pytest.raises(ValueError, match="^" + re.escape(NON_FINITE)) as ours:
            MLPRegressor(device="cpu", **params).fit(x, y)
    assert str(theirs.value) == NON_FINITE
    assert "iteration" in str(ours.value)  # the detail follows scikit-learn's words


# ----------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("x_dtype", "expected"), [("float32", "float32"), ("float64", "float64"), ("int64", "float64")]
)
def test_dtype_none_trains_in_the_inputs_dtype_as_sklearn(x_dtype, expected):
    x, y = multiclass()
    x = np.round(x * 3).astype(x_dtype) if x_dtype == "int64" else x.astype(x_dtype)
    theirs = sk.MLPClassifier(max_iter=5, random_state=0).fit(x, y)
    ours = MLPClassifier(max_iter=5, random_state=0, dtype=None, device="cpu").fit(x, y)
    assert [w.dtype for w in ours.coefs_ + ours.intercepts_] == [w.dtype for w in theirs.coefs_ + theirs.intercepts_]
    assert ours.coefs_[0].dtype == expected
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4 if expected == "float32" else 1e-9)
    default = MLPClassifier(max_iter=1, random_state=0, device="cpu").fit(x, y)
    assert default.coefs_[0].dtype == np.float32  # the default: float32, whatever comes in
    assert MLPClassifier().get_params()["dtype"] == "float32"


@pytest.mark.parametrize("fit_dtype", ["float32", "float64"])
@pytest.mark.parametrize("predict_dtype", ["float32", "float64"])
def test_outputs_have_sklearns_dtype_the_inputs_promoted_with_the_weights(fit_dtype, predict_dtype):
    x, y = multiclass()
    xr, yr = regression()
    theirs = sk.MLPClassifier(max_iter=3, random_state=0).fit(x.astype(fit_dtype), y)
    ours = MLPClassifier(max_iter=3, random_state=0, dtype=None, device="cpu").fit(x.astype(fit_dtype), y)
    their_reg = sk.MLPRegressor(max_iter=3, random_state=0).fit(xr.astype(fit_dtype), yr)
    our_reg = MLPRegressor(max_iter=3, random_state=0, dtype=None, device="cpu").fit(xr.astype(fit_dtype), yr)
    xp, xrp = x.astype(predict_dtype), xr.astype(predict_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert ours.predict_proba(xp).dtype == theirs.predict_proba(xp).dtype
        assert ours.predict_log_proba(xp).dtype == theirs.predict_log_proba(xp).dtype
        assert our_reg.predict(xrp).dtype == their_reg.predict(xrp).dtype


# ----------------------------------------------------------------------------- attributes set by hand


def test_attributes_copied_from_sklearn_predict_and_partial_fit_as_sklearn():
    x, y = multiclass()
    params = {"hidden_layer_sizes": (12, 7), "solver": "sgd", "random_state": 0, "max_iter": 20}
    source = sk.MLPClassifier(**params).fit(x, y)
    ours = MLPClassifier(dtype=None, device="cpu", **params)
    for name, value in _fitted_attributes(source).items():
        setattr(ours, name, value.copy() if hasattr(value, "copy") else value)
    np.testing.assert_array_equal(ours.predict(x), source.predict(x))
    np.testing.assert_allclose(ours.predict_proba(x), source.predict_proba(x), rtol=1e-12)
    # scikit-learn's partial_fit also needs two private attributes; from the same start both
    # take the same epoch (a fresh optimizer, the same shuffle)
    theirs = sk.MLPClassifier(**params)
    for name, value in _fitted_attributes(source).items():
        setattr(theirs, name, value.copy() if hasattr(value, "copy") else value)
    theirs._label_binarizer, theirs._no_improvement_count = source._label_binarizer, 0
    ours.partial_fit(x, y)
    theirs.partial_fit(x, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression"])
def test_attributes_copied_from_gpunn_predict_and_partial_fit(kind):
    if kind == "multilabel":
        x, y = make_multilabel_classification(200, 10, n_classes=4, random_state=0)
    else:
        x, y = {"binary": binary, "multiclass": multiclass, "regression": regression}[kind]()
    cls = MLPRegressor if kind == "regression" else MLPClassifier
    source = cls(max_iter=10, random_state=0, device="cpu").fit(x, y)
    restored = cls(random_state=0, device="cpu")
    for name, value in _fitted_attributes(source).items():
        setattr(restored, name, value.copy() if hasattr(value, "copy") else value)
    assert "_net" not in vars(restored)
    np.testing.assert_array_equal(restored.predict(x), source.predict(x))
    if cls is MLPClassifier:
        np.testing.assert_array_equal(restored.predict_proba(x), source.predict_proba(x))
    restored.partial_fit(x, y)
    assert restored.n_iter_ == 1 and len(restored.loss_curve_) == 11 and restored.t_ == 11 * len(x)
    assert np.isfinite(restored.loss_curve_[-1]) and not np.array_equal(restored.coefs_[0], source.coefs_[0])


def test_partial_fit_on_bare_coefficients():
    x, y = regression()
    source = MLPRegressor(max_iter=10, random_state=0, device="cpu").fit(x, y)
    bare = MLPRegressor(random_state=0, device="cpu")
    bare.coefs_, bare.intercepts_, bare.out_activation_ = source.coefs_, source.intercepts_, "identity"
    np.testing.assert_array_equal(bare.predict(x), source.predict(x))
    bare.partial_fit(x, y)  # no records: they start as a first fit starts them
    assert bare.n_iter_ == 1 and len(bare.loss_curve_) == 1 and bare.n_outputs_ == 1 and bare.n_layers_ == 3


# ----------------------------------------------------------------------------- predict_log_proba


def test_predict_log_proba_is_finite_where_sklearn_gives_minus_inf():
    x, y = binary()
    source = sk.MLPClassifier(max_iter=50, random_state=0).fit(x, y)
    ours = MLPClassifier(dtype=None, device="cpu")
    for name, value in _fitted_attributes(source).items():
        setattr(ours, name, value)
    far = x * 1000.0  # logits far beyond where σ rounds to 0 or 1 in float64
    with np.errstate(divide="ignore"):
        theirs = source.predict_log_proba(far)
    assert not np.isfinite(theirs).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        log_proba = ours.predict_log_proba(far)
    assert np.isfinite(log_proba).all()
    # below ~1e-10, scikit-learn's 1 − p has lost its digits to cancellation (ours has them)
    reliable = theirs > np.log(1e-10)
    np.testing.assert_allclose(log_proba[reliable], theirs[reliable], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.predict_log_proba(x), source.predict_log_proba(x), rtol=1e-9)


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_predict_log_proba_in_float32_has_no_log_of_zero(kind):
    if kind == "multilabel":
        x, y = make_multilabel_classification(200, 10, n_classes=4, random_state=0)
    else:
        x, y = multiclass()
        x = x * 30.0
    clf = MLPClassifier(max_iter=100, learning_rate_init=0.01, random_state=0, device="cpu").fit(x, y)
    proba = clf.predict_proba(x * 10.0)
    assert (proba == 0).any()  # where log(predict_proba) would be -inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        log_proba = clf.predict_log_proba(x * 10.0)
    assert np.isfinite(log_proba).all() and log_proba.dtype == np.float64
    ok = proba > 1e-30
    np.testing.assert_allclose(log_proba[ok], np.log(proba[ok]), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- sample_weight

WEIGHTED_AS_SKLEARN = [
    ("MLPClassifier", multiclass, {}),
    ("MLPClassifier", multiclass, {"solver": "sgd", "learning_rate_init": 0.05, "alpha": 0.1}),
    ("MLPClassifier", multiclass, {"early_stopping": True, "alpha": 0.01}),
    ("MLPClassifier", binary, {"early_stopping": True, "batch_size": 64}),
    ("MLPClassifier", multiclass, {"solver": "lbfgs", "alpha": 0.1}),
    ("MLPRegressor", lambda: regression(2), {"early_stopping": True}),
    ("MLPRegressor", regression, {"loss": "poisson", "solver": "sgd"}),
]


@pytest.mark.parametrize(("name", "data", "params"), WEIGHTED_AS_SKLEARN)
def test_sample_weight_follows_sklearn(name, data, params):
    x, y = data()
    y = np.exp(y) if params.get("loss") == "poisson" else y
    w = _weights(len(y))
    params = {"random_state": 0, "max_iter": 30, **params}
    theirs = getattr(sk, name)(**params).fit(x, y, sample_weight=w)
    ours = OURS[name](dtype="float64", device="cpu", **params).fit(x, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_
    if params.get("solver") == "lbfgs":
        np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)
    else:
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    if params.get("early_stopping"):  # weighted validation scores
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    unweighted = OURS[name](dtype="float64", device="cpu", **params).fit(x, y)
    assert not np.allclose(unweighted.coefs_[0], ours.coefs_[0])


@pytest.mark.parametrize(("name", "data"), [("MLPClassifier", multiclass), ("MLPRegressor", regression)])
def test_partial_fit_with_sample_weight_follows_sklearn(name, data):
    x, y = data()
    w = _weights(len(y))
    theirs = getattr(sk, name)(solver="sgd", random_state=0)
    ours = OURS[name](solver="sgd", random_state=0, dtype="float64", device="cpu")
    extra = {"classes": np.unique(y)} if name == "MLPClassifier" else {}
    for part in np.array_split(np.arange(len(y)), 3):
        theirs.partial_fit(x[part], y[part], sample_weight=w[part], **extra)
        ours.partial_fit(x[part], y[part], sample_weight=w[part], **extra)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(ours.coefs_[0], theirs.coefs_[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_a_weight_of_two_is_a_duplicated_sample_and_zero_a_dropped_one(solver):
    x, y = multiclass()
    x, y = x[:150], y[:150]  # one batch of "auto" size: the same batches either way
    w = np.ones(len(y))
    w[:20], w[20:40] = 2.0, 0.0
    twice = np.r_[np.arange(20), np.arange(20), np.arange(40, len(y))]
    params = {"solver": solver, "random_state": 0, "max_iter": 50, "dtype": "float64", "device": "cpu"}
    weighted = MLPClassifier(**params).fit(x, y, sample_weight=w)
    repeated = MLPClassifier(**params).fit(x[twice], y[twice])
    for a, b in zip(weighted.coefs_ + weighted.intercepts_, repeated.coefs_ + repeated.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(weighted.predict_proba(x), repeated.predict_proba(x), rtol=1e-9)


def test_a_batch_of_zero_weights_is_skipped():
    # scikit-learn divides by the batch's weight sum, 0 here (ZeroDivisionError); no sample of it counts
    x, y = regression()
    w = np.ones(len(y))
    w[:50] = 0.0
    params = {"solver": "sgd", "batch_size": 50, "shuffle": False, "max_iter": 10, "dtype": "float64", "device": "cpu"}
    weighted = MLPRegressor(random_state=0, **params).fit(x, y, sample_weight=w)
    dropped = MLPRegressor(random_state=0, **params).fit(x[50:], y[50:])
    assert np.isfinite(weighted.loss_curve_).all()
    np.testing.assert_allclose(weighted.coefs_[0], dropped.coefs_[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(299), r"sample_weight\.shape"),
        (np.r_[-1.0, np.ones(299)], "Negative values in data passed to `sample_weight`"),
        (np.r_[np.nan, np.ones(299)], "sample_weight contains NaN"),
        (np.ones((300, 2)), "Sample weights must be 1D"),
        (np.zeros(300), "Sample weights must contain at least one non-zero"),
    ],
)
def test_bad_sample_weight(weights, message):
    x, y = multiclass()
    for est in (MLPClassifier(max_iter=2, device="cpu"), MLPRegressor(solver="lbfgs", max_iter=2, device="cpu")):
        with pytest.raises(ValueError, match=message):
            est.fit(x, y, sample_weight=weights)
    with pytest.raises(ValueError, match=message):
        MLPClassifier(device="cpu").partial_fit(x, y, sample_weight=weights, classes=[0, 1, 2])


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("name", "data"), [("MLPClassifier", multiclass), ("MLPClassifier", binary), ("MLPRegressor", regression)]
)
def test_sample_weight_and_log_proba_on_the_gpu_as_on_the_cpu(gpu, name, data):
    x, y = data()
    w = _weights(len(y))
    params = {"random_state": 0, "max_iter": 5, "early_stopping": True, "dtype": "float64"}
    on_gpu = OURS[name](device=str(gpu), **params).fit(x, y, sample_weight=w)
    on_cpu = OURS[name](device="cpu", **params).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(on_gpu.loss_curve_, on_cpu.loss_curve_, rtol=1e-7)
    np.testing.assert_allclose(on_gpu.validation_scores_, on_cpu.validation_scores_, rtol=1e-7)
    if name == "MLPClassifier":
        np.testing.assert_allclose(on_gpu.predict_log_proba(x), on_cpu.predict_log_proba(x), rtol=1e-7, atol=1e-12)
    lbfgs = {"solver": "lbfgs", "max_iter": 5, "random_state": 0, "dtype": "float64"}
    on_gpu = OURS[name](device=str(gpu), **lbfgs).fit(x, y, sample_weight=w)
    on_cpu = OURS[name](device="cpu", **lbfgs).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(on_gpu.loss_, on_cpu.loss_, rtol=1e-7)


@pytest.mark.parametrize("name", sorted(OURS))
def test_float64_values_beyond_a_float32_network_are_named_not_blamed_on_the_solver(name: str) -> None:
    x, y = binary() if name == "MLPClassifier" else regression()
    huge = x.copy()
    huge[4, 1] = 1e300  # finite in float64, infinite once sent to the float32 network
    with pytest.raises(ValueError, match=r"X holds values beyond the range of the model's float32.*row 4"):
        OURS[name](device="cpu", max_iter=3).fit(huge, y)
    model = OURS[name](device="cpu", max_iter=3).fit(x, y)
    with pytest.raises(ValueError, match=r"X holds values beyond.*row 4"):
        model.predict(huge)
