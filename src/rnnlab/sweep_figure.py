"""What a sweep figure draws: test accuracy against the numeric setting the entries vary, a line
per combination of the other settings (see :func:`sweep_series`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlab.config import DATA_LOCATION
from rnnlab.run_records import RunRecord, result_settings
from rnnlab.stats import seed_accuracies

__all__ = ["MAX_SWEEP_LINES", "sweep_series"]

MAX_SWEEP_LINES = 8  # more lines than this on one plot cannot be told apart


def sweep_series(groups: dict[str, list[RunRecord]], rows: list[dict[str, Any]]
                 ) -> tuple[str, dict[str, list[dict[str, Any]]]] | None:
    """Test accuracy against a numeric setting the entries vary (a --sweep, or runs trained by
    hand at several learning rates): ``(key, {line label: [points]})``, a line per combination of
    the other settings that vary (named by the entries' shared name where a --sweep made them),
    each point ``{"entry", "x", "mean", "std", "seeds", "completed", "runs"}``: ``mean`` None where no
    seed completed (all diverged or failed), which the figure marks rather than leaves out.

    Of the numeric settings that vary, the one that puts the most entries on lines of two points
    or more (ties: the most distinct values, then config order): two presets swept over
    ``train.lr`` also differ in ``data.val_size``, which would give each line a single point.
    None where no setting gives such a line, where two entries of a line share an x (they differ
    only in settings results ignore, such as threads), or where the lines would be more than
    ``MAX_SWEEP_LINES``.
    """
    settings = {}
    for row in rows:
        config = next((r.config for r in groups.get(row["entry"], []) if r.config is not None), None)
        if config is not None:
            flat = result_settings(config)
            settings[row["entry"]] = {k: v for k, v in flat.items() if k not in ("seed", "name", "preset")}
    if len(settings) < 2:
        return None
    keys = list(next(iter(settings.values())))
    varying = [k for k in keys if len({repr(s.get(k)) for s in settings.values()}) > 1]
    numeric = [k for k in varying if all(isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)
                                         for s in settings.values())]
    best: tuple[tuple[int, int], str, list[list[dict[str, Any]]]] | None = None
    for x_key in numeric:
        lines = _lines_along(x_key, [k for k in varying if k != x_key], rows, settings)
        if lines is None:
            continue
        done = [[p for p in points if p["mean"] is not None] for points in lines]  # completed points
        score = (sum(len(points) for points in done if len(points) >= 2), len({s[x_key] for s in settings.values()}))
        if score[0] > 0 and (best is None or score > best[0]):
            best = (score, x_key, lines)
    if best is None:
        return None
    _, x_key, lines = best
    others = [k for k in varying if k != x_key]
    return x_key, {label: sorted(points, key=lambda p: p["x"])
                   for label, points in zip(_line_labels(lines, others, settings), lines)}


def _lines_along(x_key: str, others: list[str], rows: list[dict[str, Any]], settings: dict[str, dict[str, Any]]
                 ) -> list[list[dict[str, Any]]] | None:
    """The rows' points grouped by the values of ``others``; None if too many lines, or a line
    would hold two points at one x."""
    by_rest: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["entry"] not in settings:
            continue
        own = settings[row["entry"]]
        by_rest.setdefault(repr([own.get(k) for k in others]), []).append(
            {"entry": row["entry"], "x": own[x_key], "mean": row["test_accuracy_mean"],
             "std": row["test_accuracy_std"] or 0.0, "seeds": seed_accuracies(row),
             "completed": row["completed"], "runs": row["seeds"]})
    lines = list(by_rest.values())
    if len(lines) > MAX_SWEEP_LINES or any(len({p["x"] for p in points}) < len(points) for points in lines):
        return None
    return lines


def _line_labels(lines: list[list[dict[str, Any]]], others: list[str], settings: dict[str, dict[str, Any]]
                 ) -> list[str]:
    """Short names for the lines: what a --sweep's entry names share ("lstm" for "lstm+lr0.1" and
    "lstm+lr1"), else the one or two other settings that vary, else the entries' own names."""
    shared = [_common_name([p["entry"] for p in points]) for points in lines]
    if all(shared) and len(set(shared)) == len(shared):
        return shared
    if len(others) <= 2:
        def shown(key: str, value: Any) -> str:
            return Path(value).name if key in DATA_LOCATION and value else str(value)

        return [", ".join(f"{k.rpartition('.')[2]}={shown(k, settings[points[0]['entry']].get(k))}" for k in others)
                or "all entries" for points in lines]
    names = [", ".join(p["entry"] for p in points) for points in lines]
    return [name if len(name) <= 60 else name[:59] + "…" for name in names]


def _common_name(entries: list[str]) -> str:
    """The ``+``-separated parts that a --sweep's entry names share, in order ("" if they share none)."""
    parts = [entry.split("+") for entry in entries]
    if len({len(p) for p in parts}) != 1:
        return ""
    return "+".join(part for i, part in enumerate(parts[0]) if all(p[i] == part for p in parts))
