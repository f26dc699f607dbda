"""Figures are written as real PNGs: learning curves, accuracy bars, confusion matrices."""

from __future__ import annotations

import math
import warnings
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


def _drawn_curves(monkeypatch, curves: dict, path: Path, partial: dict | None = None):
    """learning_curves_png's figure, saved and drawn again, with warnings as errors (a collapsed
    constrained layout is only a warning)."""
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, target: figures.append(fig) or real_save(fig, target))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _is_png(plots.learning_curves_png(curves, path, partial=partial))
        figures[0].canvas.draw()
    return figures[0]


def _rows(top: float, last: int = 1000, loss: float = 2.0) -> list[dict]:
    return [{"iteration": it, "train_loss": loss / (1 + it / 100), "val_accuracy": top - 40 * math.exp(-it / 200)}
            for it in range(100, last + 1, 100)]


@pytest.mark.parametrize("n", [5, 16])
def test_learning_curves_legend_below_the_panels_that_keep_their_size(tmp_path: Path, monkeypatch, n: int) -> None:
    """16 entries with long labels once collapsed the panels to slivers (and 5 had the legend over the
    curves): one legend below both, the figure growing by its height."""
    names = [f"dlw-rnn-a [train.iterations={60 + i}, train.warmup=10, train.lr=0.0{i % 9 + 1}, model.hidden=64]"
             for i in range(n - 2)] + ["short", "x" * 20 + " [" + ", ".join(f"k{i}=v{i}" for i in range(60)) + "]"]
    curves = {name: [_rows(90 + i / 4), _rows(91 + i / 4)] for i, name in enumerate(names)}
    fig = _drawn_curves(monkeypatch, curves, tmp_path / "c.png", partial={names[0]: [_rows(50, last=300)]})
    (legend,) = fig.legends
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    height = fig.get_figheight()
    for ax in fig.axes:
        inches = ax.get_position().height * height
        assert inches > 3.0 and ax.get_position().height > 0.3
        assert box.y1 <= ax.get_window_extent(renderer).y0  # entirely below the axes, over no curve
    labels = [text.get_text() for text in legend.get_texts()]
    assert max(len(line) for label in labels for line in label.splitlines()) <= plots.LABEL_WIDTH  # wrapped
    words = [" ".join(label.split()) for label in labels]
    assert len(words) == n and words[0] == names[0] + " [val] (n=2, +1 dotted: not completed)"
    # Cut short around an ellipsis, keeping the start and the end of the name (a sweep's entries differ
    # there), and the seed count.
    long_label = labels[-1]
    assert long_label.startswith(names[-1][:20]) and "…" in long_label and len(long_label.splitlines()) <= 3
    assert " ".join(long_label.split()).endswith(names[-1][-10:] + " [val] (n=2)")


@pytest.mark.parametrize("loss", [(2.3, 0.25), (0.39, 0.3), (2.3, 1e-5)])
def test_learning_curves_loss_axis_has_decimal_labels_that_do_not_overlap(tmp_path: Path, monkeypatch,
                                                                          loss: tuple[float, float]) -> None:
    first, last = loss
    rows = [{"iteration": it, "train_loss": first * (last / first) ** (it / 1000), "val_accuracy": 90.0}
            for it in range(0, 1001, 50)]
    ax_loss = _drawn_curves(monkeypatch, {"a": [rows]}, tmp_path / "c.png").axes[1]
    low, high = ax_loss.get_ylim()
    shown = [tick.label1 for tick in ax_loss.yaxis.get_major_ticks() + ax_loss.yaxis.get_minor_ticks()
             if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()]
    values = sorted(float(label.get_text()) for label in shown)  # "0.3", "1", "2": no "$10^{0}$", no "×"
    assert len(values) >= 2 and len(set(values)) == len(values)
    boxes = sorted((label.get_window_extent() for label in shown), key=lambda b: b.y0)
    assert all(lower.y1 <= upper.y0 for lower, upper in zip(boxes, boxes[1:]))


def test_learning_curves_show_a_run_of_one_evaluation_in_both_panels(tmp_path: Path, monkeypatch) -> None:
    """A short run logs one point: a line of one point is invisible unless it has a marker."""
    curves = {"long": [_rows(95.0)], "short": [[{"iteration": 60, "train_loss": 1.2, "val_accuracy": 60.0}]]}
    fig = _drawn_curves(monkeypatch, curves, tmp_path / "c.png",
                        partial={"only-diverged": [[{"iteration": 60, "train_loss": 2.2, "val_accuracy": 30.0}]]})
    for ax in fig.axes:
        ones = [line for line in ax.get_lines() if len(line.get_xdata()) == 1]
        assert len(ones) == 2 and all(line.get_marker() not in (None, "None", "") and line.get_markersize() > 0
                                      for line in ones)
        low, high = ax.get_ylim()
        assert all(low < line.get_ydata()[0] < high for line in ones)  # not zoomed out of view


def test_long_sweep_names_that_differ_at_the_end_keep_distinct_labels() -> None:
    base = "dlw-lstm-a+hidden256+lr0.001+weight_decay0.0001+dropout0.25+batch_size128+clip1.0+"
    a, b = (plots._legend_label(base * 2 + end, " (n=3)") for end in ("cosine", "linear"))
    assert a != b and " ".join(a.split()).endswith("cosine (n=3)") and " ".join(b.split()).endswith("linear (n=3)")
    assert all(len(line) <= plots.LABEL_WIDTH for label in (a, b) for line in label.splitlines())
    assert "- " not in plots._legend_label(base, "")  # not broken at a hyphen with a space put in
