"""gpunn.plot_history: learning curves as a PNG (matplotlib is an optional extra)."""

from __future__ import annotations

import sys

import pytest
from history_records import record

import gpunn as gn

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def full_history(epochs=4) -> gn.History:
    """Classification with a regularizer (objective > cost) and a dev set."""
    history = gn.History()
    for e in range(1, epochs + 1):
        cost = 1.0 / e
        history.append(record(e, cost, 0.5 + 0.1 * e, cost + 0.1, 0.45 + 0.1 * e, objective=cost + 0.05))
    return history


def line_labels(axes) -> list[str]:
    return [line.get_label() for line in axes.lines]


def test_plot_writes_a_png_and_returns_a_two_panel_figure(mpl, tmp_path):
    from matplotlib.figure import Figure  # noqa: PLC0415

    path = tmp_path / "c.png"
    figure = gn.plot_history(full_history(), path)
    assert isinstance(figure, Figure)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 1000
    assert len(figure.axes) == 2
    loss_axes, accuracy_axes = figure.axes
    assert loss_axes.get_title() == "loss"
    assert accuracy_axes.get_title() == "accuracy"
    assert len(loss_axes.lines) == 3  # training cost, objective, dev loss
    assert len(accuracy_axes.lines) == 2  # training and dev accuracy
    assert any("dev" in label for label in line_labels(loss_axes))
    assert any("objective" in label for label in line_labels(loss_axes))
    assert list(loss_axes.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert list(loss_axes.lines[0].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3, 0.25])


def test_without_regularizer_or_dev_set_one_line_per_panel(mpl, tmp_path):
    history = gn.History()
    for e in (1, 2, 3):
        history.append(record(e, 1.0 / e, train_accuracy=0.3 * e))
    figure = gn.plot_history(history, str(tmp_path / "plain.png"))  # a str path works too
    loss_axes, accuracy_axes = figure.axes
    assert len(loss_axes.lines) == 1
    assert len(accuracy_axes.lines) == 1
    assert (tmp_path / "plain.png").read_bytes()[:8] == PNG_SIGNATURE


def test_regression_history_still_makes_two_panels(mpl, tmp_path):
    history = gn.History()
    for e in (1, 2):
        history.append(record(e, 1.0 / e, train_accuracy=None, dev_loss=1.2 / e))
    figure = gn.plot_history(history, tmp_path / "r.png")
    assert len(figure.axes) == 2
    loss_axes, accuracy_axes = figure.axes
    assert [loss_axes.get_title(), accuracy_axes.get_title()] == ["loss", "accuracy"]
    assert len(loss_axes.lines) == 2  # training cost and dev loss
    assert len(accuracy_axes.lines) == 0
    assert any("regression" in text.get_text() for text in accuracy_axes.texts)
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_SIGNATURE


def test_title_becomes_the_figure_title(mpl, tmp_path):
    figure = gn.plot_history(full_history(), tmp_path / "t.png", title="digits, 784-100-10")
    assert figure._suptitle is not None
    assert figure._suptitle.get_text() == "digits, 784-100-10"


def test_dev_set_added_in_a_later_fit_is_plotted(mpl, tmp_path):
    history = gn.History()
    history.append(record(1, 1.0))
    history.append(record(2, 0.5, dev_loss=0.6, dev_accuracy=0.55))
    figure = gn.plot_history(history, tmp_path / "m.png")
    assert len(figure.axes[0].lines) == 2
    assert len(figure.axes[1].lines) == 2


def test_plot_a_trained_history(mpl, tmp_path):
    x, y = gn.data.make_spiral(points_per_class=30, classes=3, seed=0)
    trainer = gn.Trainer(
        gn.mlp([2, 8, 3], seed=0), gn.SoftmaxWithLoss(), gn.optim.Adam(lr=1e-2), gn.L2(1e-3), device="cpu"
    )
    history = trainer.fit(x, y, epochs=3, batch_size=32, validation_split=0.2, verbose=False)
    figure = gn.plot_history(history, tmp_path / "fit.png")
    assert [len(a.lines) for a in figure.axes] == [3, 2]
    assert (tmp_path / "fit.png").read_bytes()[:8] == PNG_SIGNATURE


def test_empty_history_is_a_value_error(tmp_path):
    path = tmp_path / "e.png"
    with pytest.raises(ValueError, match="empty"):
        gn.plot_history(gn.History(), path)
    assert not path.exists()


def test_bad_arguments_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match="History"):
        gn.plot_history({"records": []}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="path"):
        gn.plot_history(full_history(), 42)


def test_missing_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "c.png"
    with pytest.raises(ImportError, match=r'pip install "gpunn\[plot\]"'):
        gn.plot_history(full_history(), path)
    assert not path.exists()


def test_history_plot_returns_the_figure_and_saves_only_when_asked(mpl, tmp_path):
    from matplotlib.figure import Figure  # noqa: PLC0415

    history = full_history()
    figure = history.plot()
    assert isinstance(figure, Figure)
    assert [len(a.lines) for a in figure.axes] == [3, 2]
    assert list(tmp_path.iterdir()) == []
    figure = history.plot(tmp_path / "h.png", title="spiral")
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG_SIGNATURE
    assert figure._suptitle.get_text() == "spiral"


def test_history_plot_after_two_fits_draws_one_continuing_curve(mpl):
    x, y = gn.data.make_spiral(points_per_class=30, classes=3, seed=0)
    trainer = gn.Trainer(gn.mlp([2, 8, 3], seed=0), gn.SoftmaxWithLoss(), gn.optim.Adam(lr=1e-2), device="cpu")
    trainer.fit(x, y, epochs=2, verbose=False)
    figure = trainer.fit(x, y, epochs=3, verbose=False).plot()
    assert list(figure.axes[0].lines[0].get_xdata()) == [1, 2, 3, 4, 5]


def test_history_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "gpunn\[plot\]"'):
        full_history().plot()
