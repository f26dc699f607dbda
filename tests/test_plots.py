"""Figures are written as real PNGs: learning curves, accuracy bars, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnlab import plots
from rnnlab.report import aggregate, collect, write_figures

from test_report import compare_dir  # noqa: F401  (a fixture, shared)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path, min_bytes: int = 5000) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG and path.stat().st_size > min_bytes


def test_report_figures_and_per_run_confusion(compare_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    groups = collect([compare_dir])
    written = write_figures(groups, aggregate(groups), tmp_path / "out")
    assert written == ["learning_curves.png", "accuracy.png"]
    assert _is_png(tmp_path / "out/learning_curves.png") and _is_png(tmp_path / "out/accuracy.png")
    assert _is_png(compare_dir / "runs/dlw-rnn-a/seed0/confusion.png")
    assert not (compare_dir / "runs/dlw-rnn-a/seed2/confusion.png").exists()  # diverged: no matrix


def test_confusion_matrix_png(tmp_path: Path) -> None:
    matrix = [[980 if i == j else (7 if (i, j) == (4, 9) else 0) for j in range(10)] for i in range(10)]
    path = plots.confusion_matrix_png(matrix, tmp_path / "sub/confusion.png", "tiny")
    assert _is_png(path)


def test_nothing_to_draw_returns_none(tmp_path: Path) -> None:
    assert plots.learning_curves_png({"a": [[]]}, tmp_path / "c.png") is None
    assert plots.accuracy_bars_png([{"entry": "a", "test_accuracy_mean": None}], tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())


def test_learning_curves_skip_rows_that_are_not_numbers(tmp_path: Path) -> None:
    rows = [{"iteration": "x", "test_accuracy": "abc"}, [1, 2], {"test_accuracy": 5.0}, {"iteration": None},
            {"iteration": 100, "test_accuracy": float("nan"), "train_loss": True},
            {"iteration": 100, "test_accuracy": 50.0, "train_loss": 1.0},
            {"iteration": 200, "test_accuracy": 60.0, "train_loss": 0.5}]
    its, mean, _, _ = plots._series([rows], "test_accuracy")
    assert its.tolist() == [100, 200] and mean.tolist() == [50.0, 60.0]
    assert plots._series([rows], "train_loss")[1].tolist() == [1.0, 0.5]
    assert _is_png(plots.learning_curves_png({"a": [rows]}, tmp_path / "c.png"))


def test_accuracy_bars_say_each_entrys_difference_from_the_baseline(compare_dir: Path, tmp_path: Path,  # noqa: F811
                                                                    monkeypatch) -> None:
    drawn: list[str] = []
    real_save = plots._save

    def save(fig, path):  # the texts as drawn, then the real file
        drawn.extend(text.get_text() for ax in fig.axes for text in ax.texts)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    assert _is_png(plots.accuracy_bars_png(aggregate(collect([compare_dir])), tmp_path / "bars.png"))
    # dlw-lstm-a has the best mean (97.25): the baseline; dlw-rnn-a is 4.25 points lower, within noise (2 seeds).
    assert "97.25% (2/2 seeds)\nbaseline" in drawn
    assert "93.00% (2/3 seeds)\n-4.25 vs baseline: within noise" in drawn


def test_a_confusion_matrix_of_too_many_classes_is_not_drawn(tmp_path: Path, monkeypatch) -> None:
    """A sequence file may have 1000 classes: its figure would be 74,000 pixels wide (36 GiB). Above
    MAX_CONFUSION_CLASSES nothing is drawn, not even a Figure made; at the limit it still is."""
    many = np.eye(1000, dtype=np.int64) * 5
    many[3, 7] = 2
    drawn: list[int] = []
    real_figure = plots.Figure

    def figure(*args, **kwargs):
        drawn.append(1)
        return real_figure(*args, **kwargs)

    monkeypatch.setattr(plots, "Figure", figure)
    assert plots.confusion_matrix_png(many.tolist(), tmp_path / "many.png") is None
    assert plots.confusion_matrix_png(many[:41, :41], tmp_path / "41.png") is None
    assert drawn == [] and not list(tmp_path.iterdir())
    # At the limit it is drawn (the rendering, seconds for 40 x 40, left out here; the small one above renders).
    monkeypatch.setattr(plots, "_save", lambda fig, path: Path(path))
    limit = plots.MAX_CONFUSION_CLASSES
    assert plots.confusion_matrix_png(many[:limit, :limit], tmp_path / "40.png") == tmp_path / "40.png"
    assert drawn == [1]


@pytest.mark.parametrize("matrix", [5, [1, 2, 3], [[1, 2, 3], [4, 5, 6]]])
def test_a_confusion_matrix_that_is_not_square_is_a_value_error(tmp_path: Path, matrix) -> None:
    with pytest.raises(ValueError, match=r"a confusion matrix must be square \(C x C\), got shape"):
        plots.confusion_matrix_png(matrix, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())
