"""gpunn.History and gpunn.diagnose: per-epoch records and the seed's bias/variance verdict."""

from __future__ import annotations

import json
import math
import re

import pytest
from history_records import record

import gpunn as gn
from gpunn.train.history import FIELDS

MORE_DATA = re.compile(r"more (training )?data")


def history_of(*records) -> gn.History:
    history = gn.History()
    for r in records:
        history.append(r)
    return history


def classified(train_accuracy, dev_accuracy=None) -> gn.History:
    dev_loss = None if dev_accuracy is None else 0.3
    return history_of(record(train_accuracy=train_accuracy, dev_accuracy=dev_accuracy, dev_loss=dev_loss))


def regression(cost, dev_loss=None) -> gn.History:
    return history_of(record(cost=cost, train_accuracy=None, dev_loss=dev_loss))


# ----------------------------------------------------------------------------- History


def test_getitem_returns_one_field_over_the_epochs():
    history = history_of(
        record(epoch=1, cost=1.0, train_accuracy=0.5, dev_loss=1.1, dev_accuracy=0.4),
        record(epoch=2, cost=0.5, train_accuracy=0.8, dev_loss=0.7, dev_accuracy=0.6),
    )
    assert len(history) == 2
    assert history["epoch"] == [1, 2]
    assert history["cost"] == [1.0, 0.5]
    assert history["train_accuracy"] == [0.5, 0.8]
    assert history["dev_loss"] == [1.1, 0.7]
    assert history["dev_accuracy"] == [0.4, 0.6]
    for name in FIELDS:
        assert len(history[name]) == 2
    assert history.last["epoch"] == 2
    assert history.has_dev
    assert repr(history) == "History(2 epochs)"


def test_unknown_field_is_a_key_error_listing_the_fields():
    history = history_of(record())
    with pytest.raises(KeyError, match="accuracy") as info:
        history["accuracy"]
    assert "train_accuracy" in str(info.value) and "dev_accuracy" in str(info.value)
    with pytest.raises(KeyError):
        history["loss"]


def test_append_keeps_exactly_the_known_fields():
    history = gn.History()
    history.append({"epoch": 1, "cost": 0.3, "unexpected": 42})
    (stored,) = history.records
    assert set(stored) == set(FIELDS)
    assert stored["cost"] == 0.3 and stored["dev_loss"] is None
    assert not history.has_dev


def test_records_are_copied_in():
    source = [record(cost=0.25)]
    history = gn.History(source)
    source[0]["cost"] = 99.0
    assert history["cost"] == [0.25]


def test_records_given_to_the_constructor_are_completed():
    # append() fills every field; records handed to History(...) / from_dict (say, written
    # by an older version with fewer fields) should be completed the same way.
    history = gn.History.from_dict({"records": [{"epoch": 1, "cost": 0.5, "train_accuracy": 0.9}]})
    assert history["dev_loss"] == [None]
    assert not history.has_dev


def test_to_dict_from_dict_round_trip_through_json():
    history = history_of(
        record(epoch=1, cost=1.0, dev_loss=1.2, dev_accuracy=0.5),
        record(epoch=2, cost=0.5, train_accuracy=None),
    )
    state = history.to_dict()
    restored = gn.History.from_dict(json.loads(json.dumps(state)))
    assert restored.records == history.records
    for name in FIELDS:
        assert restored[name] == history[name]
    assert len(gn.History.from_dict({})) == 0


def test_last_of_an_empty_history_is_a_value_error():
    history = gn.History()
    with pytest.raises(ValueError, match="empty"):
        history.last  # noqa: B018
    assert not history.has_dev
    assert len(history) == 0


# ----------------------------------------------------------------------------- diagnose


@pytest.mark.parametrize(
    ("train_accuracy", "dev_accuracy", "verdict"),
    [
        (0.80, 0.79, "high bias"),  # train error 0.2 against a target of 0.02
        (1.00, 0.90, "high variance"),  # train 0.0, dev 0.1
        (0.80, 0.60, "high bias and high variance"),
        (0.99, 0.98, "good fit"),
        (0.99, None, "good fit"),  # no dev set: no variance verdict
        (0.70, None, "high bias"),
    ],
)
def test_diagnose_verdicts(train_accuracy, dev_accuracy, verdict):
    diagnosis = gn.diagnose(classified(train_accuracy, dev_accuracy), target_error=0.02)
    assert isinstance(diagnosis, gn.Diagnosis)
    assert diagnosis.verdict == verdict
    assert diagnosis.metric == "error"
    assert diagnosis.train_error == pytest.approx(1.0 - train_accuracy)
    if dev_accuracy is None:
        assert diagnosis.dev_error is None
    else:
        assert diagnosis.dev_error == pytest.approx(1.0 - dev_accuracy)
    assert diagnosis.high_bias == ("bias" in verdict)
    assert diagnosis.high_variance == ("variance" in verdict)
    assert diagnosis.target_error == 0.02 and diagnosis.tolerance == 0.02


def test_remedies_follow_the_verdict():
    bias = gn.diagnose(classified(0.80, 0.79))
    assert any("bigger network" in r for r in bias.remedies)
    assert not any(MORE_DATA.search(r) for r in bias.remedies)

    variance = gn.diagnose(classified(1.00, 0.90))
    assert any(MORE_DATA.search(r) for r in variance.remedies)
    assert any("L2" in r and "dropout" in r for r in variance.remedies)
    assert not any("bigger network" in r for r in variance.remedies)

    both = gn.diagnose(classified(0.80, 0.60))
    assert any("bigger network" in r for r in both.remedies)
    assert any(MORE_DATA.search(r) for r in both.remedies)

    assert gn.diagnose(classified(0.99, 0.98)).remedies == []


def test_diagnosis_text_and_dict():
    diagnosis = gn.diagnose(classified(1.00, 0.90))
    text = str(diagnosis)
    assert text.startswith("diagnosis: high variance")
    assert "0.1000" in text and MORE_DATA.search(text)
    as_dict = diagnosis.to_dict()
    assert as_dict["verdict"] == "high variance"
    assert as_dict["remedies"] == diagnosis.remedies
    json.dumps(as_dict)
    assert "n/a (no dev set)" in str(gn.diagnose(classified(0.99)))


def test_diagnose_reads_the_last_epoch():
    history = history_of(
        record(epoch=1, train_accuracy=0.5, dev_accuracy=0.4, dev_loss=1.0),
        record(epoch=2, train_accuracy=0.99, dev_accuracy=0.985, dev_loss=0.1),
    )
    assert gn.diagnose(history).verdict == "good fit"


def test_target_error_moves_the_bias_line():
    history = classified(0.90, 0.89)
    assert gn.diagnose(history, target_error=0.02).verdict == "high bias"
    assert gn.diagnose(history, target_error=0.15).verdict == "good fit"


@pytest.mark.parametrize(
    ("cost", "dev_loss", "target", "verdict"),
    [
        (0.5, 0.51, 0.02, "high bias"),
        (0.01, 0.2, 0.02, "high variance"),
        (0.5, 0.9, 0.02, "high bias and high variance"),
        (0.01, 0.011, 0.02, "good fit"),
        # the dev − train gap allowed for regression is max(tolerance, tolerance × train loss)
        (10.0, 10.1, 20.0, "good fit"),
        (10.0, 10.5, 20.0, "high variance"),
    ],
)
def test_regression_is_diagnosed_on_losses(cost, dev_loss, target, verdict):
    diagnosis = gn.diagnose(regression(cost, dev_loss), target_error=target)
    assert diagnosis.metric == "loss"
    assert diagnosis.train_error == cost and diagnosis.dev_error == dev_loss
    assert diagnosis.verdict == verdict


def test_diagnose_a_trained_history():
    x, y = gn.data.make_spiral(points_per_class=40, classes=3, seed=0)
    trainer = gn.Trainer(gn.mlp([2, 16, 3], seed=0), gn.SoftmaxWithLoss(), gn.optim.Adam(lr=1e-2), device="cpu")
    history = trainer.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, verbose=False)
    diagnosis = gn.diagnose(history)
    assert diagnosis.train_error == pytest.approx(1.0 - history.last["train_accuracy"])
    assert diagnosis.dev_error == pytest.approx(1.0 - history.last["dev_accuracy"])
    assert diagnosis.high_bias  # 3 epochs on the spiral cannot reach 2 % error


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"target_error": -0.1}, ValueError, "target_error"),
        ({"target_error": math.nan}, ValueError, "target_error"),
        ({"target_error": "0.1"}, TypeError, "target_error"),
        ({"tolerance": -0.01}, ValueError, "tolerance"),
    ],
)
def test_diagnose_checks_its_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        gn.diagnose(classified(0.9, 0.9), **kwargs)


def test_diagnose_needs_a_history():
    with pytest.raises(TypeError, match="History"):
        gn.diagnose({"records": []})
    with pytest.raises(TypeError, match="History"):
        gn.diagnose([record()])


def test_diagnose_an_empty_history_is_a_value_error():
    with pytest.raises(ValueError, match="empty"):
        gn.diagnose(gn.History())


def test_diagnose_refuses_a_non_finite_training_error():
    with pytest.raises(ValueError, match="finite"):
        gn.diagnose(regression(math.nan))
