"""Figures as PNG files: learning curves, confusion matrices, accuracy bars, accuracy against a swept setting.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend state), so it
works headless and in worker processes. Each function writes one file and returns its path,
or None when there is nothing to draw.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnlab.atomic import atomic_write
from rnnlab.stats import baseline_of, seed_accuracies

DPI = 120
# A confusion matrix of more classes is not drawn: its cells (0.62 in each, with their counts) cannot
# be read, and it grows as n^2 (1000 classes would be a 74,000-pixel-wide image: 36 GiB to render).
# 40 classes is a 3,300-pixel figure drawn in seconds. The numbers stay in summary.json and `eval --json`.
MAX_CONFUSION_CLASSES = 40
# Learning curves: the height of the two panels with their titles (the legend below them adds its
# own, so that 16 entries do not squeeze the axes to nothing), the characters in a legend line, and
# the number of points up to which a loss line is also marked (a run with one logged window).
CURVES_PANEL_HEIGHT = 5.0
LABEL_WIDTH = 60
FEW_POINTS = 12


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure atomically: a crash never leaves a torn image where the last one was."""
    path = Path(path)
    FigureCanvasAgg(fig)
    file_format = path.suffix[1:].lower() or "png"  # a file object has no name to infer it from
    atomic_write(path, lambda handle: fig.savefig(handle, format=file_format, dpi=DPI, bbox_inches="tight"))
    return path


def _series(runs: Sequence[list[dict[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Iterations and the mean, min and max of ``key`` over the runs that logged it there."""
    by_iteration: dict[int, list[float]] = {}
    for rows in runs:
        for row in rows:  # a damaged metrics.jsonl may hold anything: draw only the rows that are numbers
            if isinstance(row, dict) and _number(row.get("iteration")) and _number(row.get(key)):
                by_iteration.setdefault(int(row["iteration"]), []).append(float(row[key]))
    its = np.array(sorted(by_iteration))
    values = [by_iteration[i] for i in its]
    return (its, np.array([np.mean(v) for v in values]), np.array([min(v) for v in values]),
            np.array([max(v) for v in values]))


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, a string or None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _accuracy_key(runs: Sequence[list[dict[str, Any]]]) -> str | None:
    """``val_accuracy`` (standard protocol) or ``test_accuracy`` (tutorial protocol)."""
    for key in ("val_accuracy", "test_accuracy"):
        if any(key in row for rows in runs for row in rows):
            return key
    return None


def learning_curves_png(curves: dict[str, Sequence[list[dict[str, Any]]]], path: str | Path,
                        title: str = "Learning curves",
                        partial: dict[str, Sequence[list[dict[str, Any]]]] | None = None) -> Path | None:
    """Accuracy and train loss against iteration, one colour per entry: mean line, min–max seed band.

    ``curves`` maps an entry to its completed seeds' metrics rows (``metrics.jsonl``);
    ``partial`` to its other seeds (diverged, unfinished), drawn as thin dotted lines so that
    they are seen but do not bend the mean. One legend for both panels, below them.
    """
    partial = partial or {}
    entries = [e for e in dict.fromkeys([*curves, *partial]) if any(curves.get(e, [])) or any(partial.get(e, []))]
    if not entries:
        return None
    fig = Figure(figsize=(13, CURVES_PANEL_HEIGHT), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    splits = set()
    legend: dict[str, tuple[Any, str]] = {}  # entry -> its first line and its label, for the shared legend
    in_view: list[Any] = []  # the accuracy lines that each entry needs seen: its mean, else its dotted seeds
    for colour, entry in zip(_colours(len(entries)), entries):
        runs = [rows for rows in curves.get(entry, []) if rows]
        others = [rows for rows in partial.get(entry, []) if rows]
        key = _accuracy_key(runs + others)
        split = "" if key is None else (" [val]" if key.startswith("val") else " [test]")
        counts = f"{split} (n={len(runs)}" + (f", +{len(others)} dotted: not completed)" if others else ")")
        label = _legend_label(entry, counts)
        for ax, metric in ((ax_acc, key), (ax_loss, "train_loss")):
            if metric is None:
                continue
            if runs:
                its, mean, low, high = _series(runs, metric)
                # Evaluations are few: always marked. Loss windows are many, marked only where few
                # (a short run's single point is otherwise no line at all).
                marked = ax is ax_acc or len(its) <= FEW_POINTS
                line = ax.plot(its, mean, color=colour, lw=1.8, marker="o" if marked else None, ms=3)[0]
                legend.setdefault(entry, (line, label))
                in_view += [line] if ax is ax_acc else []
                if len(runs) > 1:
                    ax.fill_between(its, low, high, color=colour, alpha=0.18, lw=0)
            for rows in others:
                its, mean, _, _ = _series([rows], metric)
                line = ax.plot(its, mean, color=colour, lw=1.0, ls=":", ms=2.5,
                               marker="o" if len(its) <= FEW_POINTS else None)[0]
                legend.setdefault(entry, (line, label))
                in_view += [line] if ax is ax_acc and not runs else []
        if key:
            splits.add("val" if key.startswith("val") else "test")
    which = " / ".join(sorted(splits)) or "eval"
    ax_acc.set(title=f"Accuracy ({which} split) during training", xlabel="iteration", ylabel="accuracy (%)")
    _zoom_accuracy(ax_acc, in_view)
    ax_loss.set(title="Train loss (mean over each logging window)", xlabel="iteration",
                ylabel="cross-entropy (log scale)", yscale="log")
    _plain_log_ticks(ax_loss)
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{title} — line: mean over completed seeds; band: min–max over them", fontsize=12)
    _legend_below(fig, list(legend.values()))
    return _save(fig, path)


def _legend_label(entry: str, counts: str) -> str:
    """The entry's name in at most two lines, then ``counts`` (never cut). A longer name keeps its
    start and its end around an ellipsis: the entries of a sweep differ at the end."""
    limit = 2 * LABEL_WIDTH
    if len(entry) > limit:
        entry = entry[:limit // 2 - 1] + "…" + entry[-(limit - limit // 2):]
    lines = textwrap.wrap(entry, LABEL_WIDTH, break_on_hyphens=False) or [entry]
    if len(lines) > 2:  # words that wrap badly: cut the name by characters instead
        lines = [entry[start:start + LABEL_WIDTH] for start in range(0, len(entry), LABEL_WIDTH)]
    return "\n".join(lines[:-1] + textwrap.wrap(lines[-1] + counts, LABEL_WIDTH, break_on_hyphens=False))


def _legend_below(fig: Figure, items: Sequence[tuple[Any, str]]) -> None:
    """One legend for both panels, below them (inside it would cover the curves); the figure grows by
    its height, so that the panels keep theirs however many entries there are."""
    longest = max(len(line) for _, label in items for line in label.splitlines())
    legend = fig.legend([h for h, _ in items], [label for _, label in items], loc="outside lower center",
                        ncol=min(len(items), 3 if longest <= 40 else 2), fontsize=8, frameon=False)
    height = legend.get_window_extent(FigureCanvasAgg(fig).get_renderer()).height / fig.dpi
    fig.set_size_inches(fig.get_figwidth(), CURVES_PANEL_HEIGHT + height)


def _plain_log_ticks(ax: Any) -> None:
    """Decimal labels on a log y axis ("0.3", "1", "2", not "3×10⁻¹"), minor ones too, as many per
    decade as fit without overlapping: all where the axis spans half a decade, none past four."""
    from matplotlib.ticker import FuncFormatter

    low, high = ax.get_ylim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    whole = [m * 10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in range(1, 10) if low <= m * 10.0 ** e <= high] if low > 0 else []
    every = len(whole) < 2  # a narrow axis (0.3 to 0.39): its finer ticks 0.32, 0.34, ... are all there is
    mantissas = next(m for limit, m in ((0.6, range(2, 10)), (1.2, (2, 3, 4, 5, 7)), (2.2, (2, 3, 5)),
                                        (4.0, (2, 5)), (math.inf, ())) if decades < limit)

    def minor(value: float, _: Any) -> str:
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        if every:
            return f"{value:.3g}"
        return f"{value:g}" if round(mantissa) in mantissas and abs(mantissa - round(mantissa)) < 1e-6 else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _zoom_accuracy(ax: Any, in_view: Sequence[Any] = ()) -> None:
    """Show the interesting top part of the accuracy axis, but never hide a curve: each line of
    ``in_view`` keeps at least its best point in view (a short run's only one)."""
    low, _ = ax.get_ylim()
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys:
        top_values = sorted(ys)[len(ys) // 4:]  # ignore the first, very low, evaluations
        floor = min(top_values) - 2 if top_values else low
        floor = min([floor, *(max(line.get_ydata()) - 2 for line in in_view if len(line.get_ydata()))])
        ax.set_ylim(max(0.0, min(floor, 90.0)), 100.5)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def class_labels(names: Sequence[str] | None) -> list[str] | None:
    """Axis labels for named classes, ``"0 T-shirt/top"``; None where the class numbers are the names."""
    return [f"{i} {name}" for i, name in enumerate(names)] if names else None


def confusion_matrix_png(matrix: Sequence[Sequence[int]], path: str | Path, title: str = "Confusion matrix",
                         labels: Sequence[str] | None = None) -> Path | None:
    """A confusion matrix (rows true, columns predicted) with counts in the cells; None, and no
    file, for more than ``MAX_CONFUSION_CLASSES`` classes.

    Colour is the row-normalised rate on a log scale, so the few errors stand out next to the
    large diagonal; the diagonal is drawn in its own colour scale.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:  # a damaged summary.json: a ValueError callers catch
        raise ValueError(f"a confusion matrix must be square (C x C), got shape {counts.shape}")
    n = counts.shape[0]
    if n > MAX_CONFUSION_CLASSES:
        return None
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    totals = counts.sum(axis=1, keepdims=True)
    rates = counts / np.maximum(totals, 1)
    off = np.where(np.eye(n, dtype=bool), np.nan, rates)
    fig = Figure(figsize=(0.62 * n + 2.6, 0.62 * n + 1.6), layout="constrained")
    ax = fig.subplots()
    from matplotlib.colors import LogNorm

    positive = off[np.isfinite(off) & (off > 0)]
    vmin = max(float(positive.min()) if positive.size else 1e-4, 1e-4)
    image = ax.imshow(np.where(off > 0, off, np.nan), cmap="Reds", norm=LogNorm(vmin=vmin, vmax=max(vmin * 10, 1.0)))
    ax.imshow(np.where(np.eye(n, dtype=bool), rates, np.nan), cmap="Greens", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                dark = (i == j and rates[i, j] > 0.6) or (i != j and off[i, j] > 0.2)
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if n > 12 else 8,
                        color="white" if dark else "black")
    accuracy = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels,
           xlabel="predicted class", ylabel="true class",
           title=f"{title}\naccuracy {accuracy:.2f}% of {counts.sum():,} (rows: true, columns: predicted)")
    if max(len(label) for label in labels) > 3:  # class names: slanted, so that they do not overlap
        ax.tick_params(axis="x", labelrotation=40)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    # On one line the label outgrows a short bar (few classes) and runs into its tick labels.
    bar.set_label("error rate within\nthe true class (log)" if n < 8 else "error rate within the true class (log)")
    return _save(fig, path)


def accuracy_bars_png(rows: Sequence[dict[str, Any]], path: str | Path,
                      title: str = "Final test accuracy") -> Path | None:
    """Horizontal bars: mean test accuracy with a ±std error bar, each seed as a dot, the
    accuracy the source reported as a red diamond (hollow where the entry trained for another budget),
    and beside each bar its difference from the baseline. ``rows`` are :func:`rnnlab.report.aggregate` rows.
    """
    rows = [r for r in rows if r.get("test_accuracy_mean") is not None or r.get("reported_test_accuracy") is not None]
    if not rows:
        return None
    n = len(rows)
    fig = Figure(figsize=(10, 0.6 * n + 2.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)[::-1]  # first entry at the top
    means = np.array([r.get("test_accuracy_mean") or np.nan for r in rows], dtype=float)
    stds = np.array([r.get("test_accuracy_std") or 0.0 for r in rows], dtype=float)
    seeds = [seed_accuracies(r) for r in rows]
    reported = np.array([np.nan if r.get("reported_test_accuracy") is None else r["reported_test_accuracy"]
                         for r in rows], dtype=float)
    every = np.concatenate([means[np.isfinite(means)], reported[np.isfinite(reported)],
                            [v for s in seeds for v in s]])
    left = max(0.0, np.floor(every.min() - 2.0)) if every.size else 0.0
    ax.barh(y, np.nan_to_num(means - left), left=left, height=0.6, color="#4C72B0", alpha=0.85,
            xerr=stds, error_kw={"ecolor": "black", "capsize": 4, "lw": 1.2}, label="mean ± std over seeds")
    for yi, values in zip(y, seeds):
        if values:
            ax.scatter(values, np.full(len(values), yi), s=14, color="black", zorder=3)
    ax.scatter([], [], s=14, color="black", label="individual seeds")
    # Hollow where the entry trained for another budget than the tutorial's (rnnlab.budget.reported_note)
    other = np.array([bool(r.get("reported_note")) for r in rows])
    for marks, style, label in ((np.isfinite(reported) & ~other, {"color": "#D62728", "edgecolor": "white"},
                                 "reported by the source tutorial"),
                                (np.isfinite(reported) & other, {"facecolor": "none", "edgecolor": "#D62728"},
                                 "reported by the tutorial after another budget (not comparable)")):
        if marks.any():
            ax.scatter(reported[marks], y[marks], marker="D", s=60, zorder=4, label=label, **style)
    # Values to the right of the axes (x in axes fraction, y in data), so they never hide a bar.
    transform = ax.get_yaxis_transform()
    baseline = baseline_of(rows)
    for yi, m, r in zip(y, means, rows):
        text = f"{m:.2f}%" if np.isfinite(m) else "no completed seed"
        text += f" ({r.get('completed', 0)}/{r.get('seeds', 0)} seeds)"
        if r["entry"] == baseline:
            text += "\nbaseline"
        elif r.get("delta_verdict"):  # against the baseline, 95% over seeds (rnnlab.report.compare_with)
            text += f"\n{r['delta_vs_baseline']:+.2f} vs baseline: {r['delta_verdict']}"
            text += ", other budget" if r.get("delta_budget_note") else ""
            text += ", other test set" if r.get("delta_data_note") else ""
        ax.text(1.01, yi, text, va="center", fontsize=8, transform=transform)
    ax.set_yticks(y, [f"{r['entry']}\n{r.get('architecture') or ''}" for r in rows], fontsize=8)
    ax.set_xlim(left, 100.0)
    ax.set_xlabel(f"test accuracy (%) — axis starts at {left:g}%")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncol=3, frameon=False)
    return _save(fig, path)


def gradient_flow_png(curves: dict[str, np.ndarray], path: str | Path,
                      title: str = "Gradient flow through time") -> Path | None:
    """``||dL/dh_t||`` against the step on a log axis, one line per layer and direction
    (``curves`` maps a label to its ``(T,)`` norms; labels ending in ", c" are an LSTM's cell
    state, dashed): a falling line towards step 1 is a vanishing gradient."""
    from rnnlab.gradients import zero_steps

    curves = {k: np.asarray(v, dtype=float) for k, v in curves.items() if np.any(np.asarray(v) > 0)}
    if not curves:
        return None
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, norms in curves.items():
        steps = np.arange(1, len(norms) + 1)
        # A log axis has no place for 0 (underflowed past float32's 1.4e-45 on 784 steps): the label
        # says which steps are missing, or the line would seem to start where the gradient runs out.
        zero = f" (0 at {zero_steps(norms)}: not drawn)" if np.any(norms == 0) else ""
        ax.semilogy(steps, np.where(norms > 0, norms, np.nan), marker="o" if len(norms) <= 60 else None,
                    markersize=3, label=label + zero, linestyle="--" if label.endswith(", c") else "-")
    ax.set_xlabel("step t (input read at that step)")
    ax.set_ylabel("mean gradient norm (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def sweep_png(key: str, lines: dict[str, list[dict[str, Any]]], path: str | Path) -> Path | None:
    """Test accuracy against the setting ``key``, a line per combination of the other settings:
    mean ± std over seeds, each seed a dot. ``lines`` as :func:`rnnlab.report.sweep_series` gives
    them. The x axis is logarithmic where the values are positive and span 10x or more (a
    learning rate)."""
    if not any(lines.values()):
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    xs = [p["x"] for points in lines.values() for p in points]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    unfinished = []  # (x, colour) of the values where no seed completed: marked, never left out
    for label, points in lines.items():
        done = [p for p in points if p["mean"] is not None]
        if done:
            line = ax.errorbar([p["x"] for p in done], [p["mean"] for p in done], yerr=[p["std"] for p in done],
                               marker="o", capsize=4, label=label)
            colour = line[0].get_color()
        else:
            colour = ax.plot([], [], marker="x", linestyle="", label=label)[0].get_color()
        for p in done:
            ax.scatter(np.full(len(p["seeds"]), p["x"], dtype=float), p["seeds"], s=10, alpha=0.5,
                       color=colour, zorder=3)
            if p.get("completed", 1) < p.get("runs", 1):  # a mean of the seeds that completed: say how many
                ax.annotate(f"{p['completed']}/{p['runs']} seeds", (p["x"], p["mean"]), textcoords="offset points",
                            xytext=(6, -12), fontsize=7, color=colour)
        unfinished += [(p["x"], colour) for p in points if p["mean"] is None]
    if unfinished:
        bottom = ax.get_ylim()[0]
        for x, colour in unfinished:
            ax.scatter([x], [bottom], marker="x", s=60, color=colour, zorder=4, clip_on=False)
            ax.annotate("no completed seed", (x, bottom), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=7, color=colour)
    ax.set_xticks(sorted(set(xs)), [f"{v:g}" for v in sorted(set(xs))])
    ax.minorticks_off()
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy against {key} (mean ± std over seeds; dots: seeds)")
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or next(iter(lines)) != "all entries":
        fig.legend(fontsize=8, loc="outside lower center", ncol=min(len(lines), 2), frameon=False)
    return _save(fig, path)
