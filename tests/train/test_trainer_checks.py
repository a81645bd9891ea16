"""gpunn.Trainer: what fit, evaluate and predict check once, before training, and what a diverged fit
leaves in the model."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gpunn as gn
from gpunn.cli.job import TrainConfig


@pytest.fixture(scope="module")
def spiral() -> tuple[np.ndarray, np.ndarray]:
    return gn.data.make_spiral(points_per_class=60, classes=3, seed=0)


def classifier(device="cpu", loss=None, outputs=3, dtype="float32", optimizer=None) -> gn.Trainer:
    model = gn.mlp([2, 16, outputs], seed=0, dtype=dtype)
    optimizer = optimizer if optimizer is not None else gn.optim.Adam(lr=1e-2)
    return gn.Trainer(model, loss or gn.SoftmaxWithLoss(), optimizer, device=device)


def weights(trainer: gn.Trainer) -> list[np.ndarray]:
    return [gn.to_numpy(p.data).copy() for p in trainer.model.parameters()]


def untrained(trainer: gn.Trainer, before: list[np.ndarray]) -> bool:
    """Nothing was trained: no epoch recorded and the weights unchanged."""
    after = weights(trainer)
    return len(trainer.history) == 0 and all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def refused(trainer: gn.Trainer, error: type[Exception], match: str, *args, **kwargs) -> None:
    """fit(*args, **kwargs) raises ``error`` matching ``match`` before any training."""
    before = weights(trainer)
    with pytest.raises(error, match=match):
        trainer.fit(*args, epochs=2, verbose=False, **kwargs)
    assert untrained(trainer, before)


# ----------------------------------------------------------------------------- values the model's dtype cannot hold


def test_float64_inputs_too_large_for_a_float32_model_are_refused_naming_the_row(device, spiral):
    x, y = spiral
    big = x.astype(np.float64)
    big[7, 1] = 1e300  # finite in float64, infinite once converted to the model's float32
    trainer = classifier(device)
    refused(trainer, ValueError, r"x holds values beyond the range of the model's float32.*row 7", big, y)
    with pytest.raises(ValueError, match=r"x holds values beyond.*row 7"):
        trainer.evaluate(big, y)
    for predict in (trainer.predict, trainer.predict_proba, trainer.predict_output):
        with pytest.raises(ValueError, match=r"x holds values beyond.*row 7"):
            predict(big)
    with pytest.raises(ValueError, match=r"x_dev holds values beyond.*row 7"):
        trainer.fit(x, y, epochs=1, validation_data=(big, y), verbose=False)
    # a float64 model holds them
    assert classifier(device, dtype="float64").predict(big).shape == (len(x),)


def test_float_targets_too_large_or_not_finite_are_refused_up_front(spiral):
    x, _ = spiral
    targets = np.c_[x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]].astype(np.float64)  # regression targets
    regression = classifier(loss=gn.MSELoss(), outputs=2)
    big = targets.copy()
    big[4, 1] = -1e300
    refused(regression, ValueError, r"y holds values beyond the range of the model's float32.*row 4", x, big)
    missing = targets.copy()
    missing[9, 0] = np.nan
    # caught before training, not blamed on the learning rate as a diverged loss
    refused(regression, ValueError, r"y contains NaN or infinity \(first in row 9\)", x, missing)
    with pytest.raises(ValueError, match=r"y contains NaN.*row 9"):
        regression.evaluate(x, missing)
    with pytest.raises(ValueError, match=r"y_dev contains NaN.*row 9"):
        regression.fit(x, targets, epochs=1, validation_data=(x, missing), verbose=False)


# ----------------------------------------------------------------------------- targets for SoftmaxWithLoss


def test_one_hot_targets_that_are_not_distributions_are_refused(spiral):
    x, y = spiral
    onehot = np.eye(3)[y]
    trainer = classifier()
    refused(trainer, ValueError, r"^y must hold one-hot or probability rows .*row 0 summing to 2", x, 2 * onehot)
    refused(trainer, ValueError, r"^y must hold one-hot .*negative entry \(-0.5\), first in row 0", x, onehot - 0.5)
    missing = onehot.copy()
    missing[2, 0] = np.nan
    refused(trainer, ValueError, r"y contains NaN or infinity \(first in row 2\)", x, missing)
    refused(trainer, ValueError, r"^y_dev must hold one-hot", x, onehot, validation_data=(x, 2 * onehot))
    with pytest.raises(ValueError, match="summing to 1"):
        trainer.evaluate(x, 2 * onehot)


def test_label_smoothed_float32_targets_are_distributions(spiral):
    x, y = spiral
    smoothed = (0.9 * np.eye(3)[y] + 0.1 / 3).astype(np.float32)  # rows sum to 1 up to float32 rounding
    history = classifier().fit(x, smoothed, epochs=2, verbose=False)
    assert len(history) == 2 and np.isfinite(history["cost"]).all()


def test_the_trainer_accepts_the_targets_its_loss_accepts(spiral):
    """One rule for both: float32 rows that sum to 1 up to float32 rounding train a float64
    model (the loss accepts them on every call), and rows off by more than the loss's
    tolerance are refused by the Trainer and by the loss alike."""
    x, y = spiral
    rows = np.full((len(y), 3), 1 / 3, dtype=np.float32)  # each row sums to 1 + 3e-8 in float32
    assert abs(rows.sum(axis=1, dtype=np.float64) - 1.0).max() > 1e-8
    history = classifier(dtype="float64").fit(x, rows, epochs=1, verbose=False)
    assert np.isfinite(history["cost"]).all()
    off = rows.copy()
    off[5] *= 1.003
    message = r"^y must hold one-hot .*within 0\.001, got row 5 summing to 1\.003"
    refused(classifier(dtype="float64"), ValueError, message, x, off)
    with pytest.raises(ValueError, match=r"^t must hold one-hot .*within 0\.001, got row 5"):
        gn.SoftmaxWithLoss()(np.zeros((len(y), 3)), off)


def test_one_hot_targets_of_the_wrong_width_name_y(spiral):
    x, y = spiral
    trainer = classifier()
    refused(trainer, ValueError, r"y must have shape \(180, 3\), or integer labels of shape \(180,\).*\(180, 4\)",
            x, np.eye(4)[y])  # fmt: skip
    refused(trainer, ValueError, r"y must have shape \(180, 3\).*got shape \(180, 1\)", x, y[:, None].astype(float))


def test_a_column_of_integer_labels_is_taken_as_labels(spiral):
    x, y = spiral
    flat, column = classifier(), classifier()
    flat.fit(x, y, epochs=2, verbose=False)
    column.fit(x, y[:, None], epochs=2, verbose=False)  # (N, 1), as y.reshape(-1, 1) or a DataFrame column gives
    assert column.history["cost"] == flat.history["cost"]
    assert column.history["train_accuracy"] == flat.history["train_accuracy"]
    assert column.evaluate(x, y[:, None]) == flat.evaluate(x, y)


def test_targets_of_the_wrong_shape_for_regression_and_binary_losses_name_y(spiral):
    x, y = spiral
    regression = classifier(loss=gn.MSELoss(), outputs=2)
    refused(regression, ValueError, r"y must have shape \(180, 2\) for MSELoss on a model with 2 outputs", x, x[:, 0])
    binary = classifier(loss=gn.SigmoidBCELoss(), outputs=1)
    refused(binary, ValueError, r"y must have shape \(180, 1\) or \(180,\) for SigmoidBCELoss", x, np.eye(3)[y])
    missing = (y == 1).astype(np.float64)
    missing[5] = np.nan  # min and max of a NaN column pass a [0, 1] range test
    refused(binary, ValueError, r"y contains NaN or infinity \(first in row 5\)", x, missing)


# ----------------------------------------------------------------------------- callbacks, splits


def test_callbacks_are_checked_before_the_first_epoch(spiral):
    x, y = spiral
    trainer = classifier()
    refused(trainer, TypeError, r"callbacks\[1\] must be callable as callback\(trainer, record\), got 42",
            x, y, callbacks=[print, 42])  # fmt: skip
    refused(trainer, TypeError, r"callbacks must be a list of functions", x, y, callbacks=print)
    refused(trainer, TypeError, r"callbacks must be a list of functions", x, y, callbacks=42)


def test_validation_split_too_small_gives_advice_that_works(spiral):
    x, y = spiral
    trainer = classifier()
    with pytest.raises(ValueError, match=r"validation_split=0.5 of 2 samples.*empty") as info:
        trainer.fit(x[[0, 100]], y[[0, 100]], validation_split=0.5, epochs=1, verbose=False)
    message = str(info.value)
    assert "validation_data=(x_dev, y_dev)" in message
    assert "stratify" not in message.replace("stratified", "")  # fit takes no stratify argument


# ----------------------------------------------------------------------------- pandas


def test_dataframes_and_series_are_taken_as_their_values(spiral):
    pd = pytest.importorskip("pandas")
    x, y = spiral
    frame, labels = pd.DataFrame(x, columns=["a", "b"]), pd.Series(y, name="label")
    plain, framed = classifier(), classifier()
    plain.fit(x, y, epochs=2, verbose=False)
    framed.fit(frame, labels, epochs=2, validation_data=(frame, labels), verbose=False)
    assert framed.history["cost"] == plain.history["cost"]
    np.testing.assert_array_equal(framed.predict(frame), plain.predict(x))
    np.testing.assert_array_equal(framed.predict_proba(frame), plain.predict_proba(x))
    np.testing.assert_array_equal(framed.predict_output(frame), plain.predict_output(x))
    assert framed.evaluate(frame, labels) == plain.evaluate(x, y)
    assert framed.evaluate(frame, pd.DataFrame({"label": y})) == plain.evaluate(x, y)  # a one-column frame
    nullable = pd.DataFrame({"a": pd.array(x[:, 0], dtype="Float64"), "b": x[:, 1]})
    assert framed.evaluate(nullable, pd.Series(y, dtype="Int64")) == plain.evaluate(x, y)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        framed.predict(frame.assign(a="text"))


def test_missing_labels_in_a_pandas_series_name_y_and_the_row(spiral):
    pd = pytest.importorskip("pandas")
    x, y = spiral
    labels = pd.Series(y, dtype="Int64")
    labels[3] = pd.NA
    refused(classifier(), ValueError, r"y has missing values \(NaN or NA\), first in row 3", x, labels)
    frame = pd.DataFrame(x)
    frame.iloc[11, 1] = np.nan
    with pytest.raises(ValueError, match=r"x has missing values.*row 11"):
        classifier().predict(frame)


# ----------------------------------------------------------------------------- divergence


def diverge_after(epoch: int):
    """A callback that sets an absurd learning rate after ``epoch``: the next epoch's loss is NaN."""

    def callback(trainer, record):
        if record["epoch"] == epoch:
            trainer.optimizer.lr = 1e30

    return callback


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_restores_the_best_epoch_and_says_so(device, spiral):
    x, y = spiral
    trainer = classifier(device)
    seen = {}

    def keep(t, record):
        seen[record["epoch"]] = (weights(t), {k: gn.to_numpy(v).copy() for k, v in t.optimizer.state.items()})

    with pytest.raises(gn.TrainingDivergedError, match=r"epoch 4, step \d+ of 2") as info:
        trainer.fit(x, y, epochs=8, validation_data=(x, y), callbacks=[keep, diverge_after(3)], verbose=False)
    best = int(np.argmin(trainer.history["dev_loss"])) + 1
    assert f"restored the weights and optimizer state of epoch {best} (restore_best=True)" in str(info.value)
    saved_weights, saved_state = seen[best]
    assert all(np.array_equal(a, b) for a, b in zip(weights(trainer), saved_weights, strict=True))
    assert all(np.array_equal(gn.to_numpy(v), saved_state[k]) for k, v in trainer.optimizer.state.items())
    # the model trains on from there once the learning rate is sane again
    trainer.optimizer.lr = 1e-2
    history = trainer.fit(x, y, epochs=2, verbose=False)
    assert history["epoch"][-2:] == [4, 5]
    assert np.isfinite(history["cost"]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_in_the_first_epoch_restores_the_starting_weights(spiral):
    x, y = spiral
    trainer = classifier(optimizer=gn.optim.SGD(lr=1e30))
    before = weights(trainer)
    with pytest.raises(gn.TrainingDivergedError, match="restored the weights and optimizer state the fit started from"):
        trainer.fit(x, y, epochs=3, verbose=False)
    assert untrained(trainer, before)
    assert trainer.optimizer.step_count == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_restore_best_false_leaves_the_diverged_weights(spiral):
    x, y = spiral
    trainer = classifier()
    with pytest.raises(gn.TrainingDivergedError) as info:
        trainer.fit(x, y, epochs=5, restore_best=False, callbacks=[diverge_after(2)], verbose=False)
    assert "restored" not in str(info.value)
    assert not all(np.isfinite(w).all() for w in weights(trainer))


# ----------------------------------------------------------------------------- defaults


def test_fit_docstring_explains_its_defaults_against_the_cli():
    defaults = inspect.signature(gn.Trainer.fit).parameters
    doc = " ".join(gn.Trainer.fit.__doc__.split())
    trainer_says = f"{defaults['epochs'].default} epochs of batches of {defaults['batch_size'].default}"
    cli_says = f"``gpunn train`` defaults to {TrainConfig.epochs} epochs of {TrainConfig.batch_size}"
    assert trainer_says in doc and cli_says in doc
