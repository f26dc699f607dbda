"""How entries of a comparison differ: the difference in test accuracy from a baseline entry,
with a confidence interval, for every row of a report (``compare_with``, ``differences_table``).

Two entries of a compare train the same seeds, so their accuracies pair up seed by seed, and the
paired differences give a Student-t interval. Where the seeds do not pair (loose runs gathered by
``rnnlab report``), Welch's interval compares the two samples instead. The interval covers the
variation between training seeds (initial weights, batch order), not the draw of the test set:
both entries are scored on the same test images. Where they are not (a sweep over sequence files,
runs gathered from elsewhere), seeds do not pair, the difference is of the data as much as of the
models, and the table and a warning say so (``delta_data_note``).

Student's t quantiles are computed here (about 20 lines) rather than pulling in SciPy for one
function: the t distribution's CDF has a closed form for integer degrees of freedom
(Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rnnlab.budget import budget_warning, entries_named
from rnnlab.errors import ConfigError, option

__all__ = ["Difference", "baseline_of", "check_baseline", "compare_with", "difference", "differences_table",
           "seed_accuracies", "t_quantile", "test_set_warning", "test_sets"]


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (a positive integer) degrees of freedom, t >= 0."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2:  # odd: (2/pi) [theta + sin (cos + 2/3 cos^3 + ... + (2*4..(df-3))/(1*3..(df-2)) cos^(df-2))]
        if df == 1:
            return 2.0 * theta / math.pi
        term = total = cos
        for k in range(3, df - 1, 2):
            term *= cos2 * (k - 1) / k
            total += term
        return 2.0 / math.pi * (theta + sin * total)
    term = total = 1.0  # even: sin [1 + 1/2 cos^2 + ... + (1*3..(df-3))/(2*4..(df-2)) cos^(df-2)]
    for k in range(2, df - 1, 2):
        term *= cos2 * (k - 1) / k
        total += term
    return sin * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` >= 1 integer degrees of freedom."""
    if not 0.5 < p < 1.0 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    mass = 2.0 * p - 1.0  # the central mass the quantile bounds
    low, high = 0.0, 1.0
    while _t_central_mass(high, int(df)) < mass:
        high *= 2.0
    for _ in range(200):  # bisection to machine precision: the mass is increasing in t
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if _t_central_mass(mid, int(df)) < mass:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Difference:
    """``mean`` of A minus B with its interval [``low``, ``high``] (None where the seeds show no
    spread at all); ``method`` says how the samples were compared, ``n_a`` and ``n_b`` their sizes."""

    mean: float
    low: float | None
    high: float | None
    method: str  # "paired" (n_a == n_b seeds in both) or "welch"
    n_a: int
    n_b: int
    level: float = 0.95

    @property
    def samples(self) -> str:
        """e.g. ``paired, n=3`` or ``welch, n=3 vs 2``."""
        return f"paired, n={self.n_a}" if self.method == "paired" else f"welch, n={self.n_a} vs {self.n_b}"

    @property
    def verdict(self) -> str:
        """``higher``, ``lower``, ``within noise`` when the interval holds 0, or, with no spread
        between seeds (every seed gave the same difference), a call for more seeds."""
        if self.low is None or self.high is None:
            return "no spread between seeds: add seeds"
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "within noise"


Sample = Mapping[int, float] | Sequence[float]  # keyed by seed, or unpaired


def difference(a: Sample, b: Sample, *, level: float = 0.95,
               limits: tuple[float, float] | None = None) -> Difference | None:
    """The difference of sample ``a`` minus sample ``b`` with a ``level`` interval.

    Samples keyed by seed are paired by seed when at least two seeds are in both; otherwise (or
    given as plain sequences, e.g. where a seed repeats) Welch's interval is used when each sample
    has at least two values, its degrees of freedom rounded down (which widens it a little).
    None with fewer values: one seed says nothing about seed-to-seed variation. ``limits`` clips
    the interval to what is possible (accuracy differences lie within ±100 points). Where every
    seed gave the same difference, the t interval has width zero, which would claim certainty:
    no interval is given then.
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be a probability between 0 and 1, e.g. 0.95 (not 95)")
    for name, sample in (("a", a), ("b", b)):
        values = list(sample.values()) if isinstance(sample, Mapping) else list(sample)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError(f"sample {name} holds a value that is not a finite number: {values}")
    quantile = 0.5 + level / 2.0
    shared = sorted(set(a) & set(b)) if isinstance(a, Mapping) and isinstance(b, Mapping) else []
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]  # type: ignore[index]
        mean, spread = statistics.fmean(diffs), statistics.stdev(diffs)
        half = t_quantile(quantile, len(diffs) - 1) * spread / math.sqrt(len(diffs))
        return _difference(mean, half, "paired", len(diffs), len(diffs), level, limits)
    xs = list(a.values()) if isinstance(a, Mapping) else list(a)
    ys = list(b.values()) if isinstance(b, Mapping) else list(b)
    if len(xs) < 2 or len(ys) < 2:
        return None
    va, vb = statistics.variance(xs) / len(xs), statistics.variance(ys) / len(ys)
    mean = statistics.fmean(xs) - statistics.fmean(ys)
    half = 0.0
    if va + vb > 0.0:
        df = (va + vb) ** 2 / (va**2 / (len(xs) - 1) + vb**2 / (len(ys) - 1))
        half = t_quantile(quantile, max(1, math.floor(df))) * math.sqrt(va + vb)
    return _difference(mean, half, "welch", len(xs), len(ys), level, limits)


NO_SPREAD = 1e-9  # points: a half-width below this is float rounding of equal differences (0.69 vs 0.69000000000000048)


def _difference(mean: float, half: float, method: str, n_a: int, n_b: int, level: float,
                limits: tuple[float, float] | None) -> Difference:
    if half < NO_SPREAD:
        return Difference(mean, None, None, method, n_a, n_b, level)
    low, high = mean - half, mean + half
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    return Difference(mean, low, high, method, n_a, n_b, level)


# --------------------------------------------------------------------------- rows of a report


def check_baseline(baseline: str | None, entries: list[str]) -> None:
    """Refuse a baseline that is not one of ``entries``, naming them."""
    if baseline is not None and baseline not in entries:
        given = option(f"--baseline {baseline!r}", f"baseline={baseline!r}")
        raise ConfigError(f"{given} is not an entry here; the entries are: {', '.join(entries)}")


def baseline_of(rows: list[dict[str, Any]]) -> str | None:
    """The baseline :func:`compare_with` chose for these rows, if any."""
    return next((r["baseline"] for r in rows if r.get("baseline")), None)


def _completed_runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in row.get("runs", []) if r.get("status") == "completed" and r.get("test_accuracy") is not None]


def seed_accuracies(row: dict[str, Any]) -> list[float]:
    """The test accuracies of a report row's completed seeds, in run order."""
    return [float(r["test_accuracy"]) for r in _completed_runs(row)]


def _completed_accuracies(row: dict[str, Any]) -> dict[int, float] | list[float]:
    """Test accuracy by seed over the completed seeds; a plain list where a seed repeats or is
    unknown (loose runs), so that nothing is paired by accident."""
    runs = _completed_runs(row)
    by_seed = {r["seed"]: float(r["test_accuracy"]) for r in runs if isinstance(r["seed"], int)}
    return by_seed if len(by_seed) == len(runs) else [float(r["test_accuracy"]) for r in runs]


def test_sets(row: dict[str, Any]) -> set[str]:
    """The test sets a row's completed seeds were scored on, as their summaries recorded them
    (:func:`rnnlab.data.splits.test_set_of`; runs from before it was recorded give none)."""
    return {r["test_set"] for r in _completed_runs(row) if isinstance(r.get("test_set"), str)}


def _other_test_set(row: dict[str, Any], base: dict[str, Any] | None) -> str | None:
    """How a row's test sets differ from the baseline's, None where they are the same (or unknown)."""
    if base is None or row is base:
        return None
    mine, theirs = test_sets(row), test_sets(base)
    if not mine or not theirs or (mine == theirs and len(mine) == 1):
        return None
    if mine == theirs:
        return "some seeds of each were scored on other test sets than the rest"
    return f"scored on other test sequences than the baseline `{base['entry']}`"


def _samples(row: dict[str, Any], base: dict[str, Any]) -> tuple[dict[int, float] | list[float], ...]:
    """The two entries' accuracies to set against each other: by seed, unless they were scored on
    different test sets, where a seed's two runs share nothing that pairing could take out."""
    a, b = _completed_accuracies(row), _completed_accuracies(base)
    if _other_test_set(row, base):
        a, b = list(a.values()) if isinstance(a, dict) else a, list(b.values()) if isinstance(b, dict) else b
    return a, b


def _mean_difference(row: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    if base is None or row is base or row["test_accuracy_mean"] is None or base["test_accuracy_mean"] is None:
        return None
    return row["test_accuracy_mean"] - base["test_accuracy_mean"]


FAMILY_LEVEL = 0.95  # the probability that all of a report's intervals hold at once


def compare_with(rows: list[dict[str, Any]], baseline: str | None = None) -> str | None:
    """Give every row its test-accuracy difference from the baseline row, with an interval; the
    intervals of all rows hold together with 95% probability (Bonferroni over the rows compared).

    The baseline is ``baseline``, or else the best entry among those with at least two completed
    seeds (among all, if none has two: one lucky seed of an entry whose others diverged would leave
    nothing to compare against), by mean validation accuracy where every candidate has one, so
    that the test set is not also what picks the entry it then scores; by mean test accuracy
    otherwise (the tutorial protocol has no validation split). Returns its name (None with fewer
    than two rows that have results).
    """
    scored = [r for r in rows if r["test_accuracy_mean"] is not None]
    if baseline is None and len(scored) >= 2:
        candidates = [r for r in scored if r["completed"] >= 2] or scored
        has_val = all(r["val_accuracy_mean"] is not None for r in candidates)
        baseline = max(candidates, key=lambda r: r["val_accuracy_mean" if has_val else "test_accuracy_mean"])["entry"]
    base = next((r for r in rows if r["entry"] == baseline), None)
    # Each entry set against the baseline is one claim: with k of them, k intervals at 95% each would
    # miss somewhere far more often than 1 in 20. Bonferroni: each at 1 - 0.05 / k, so that all k
    # hold together with 95% probability (simultaneous intervals), and so do the verdicts read off them.
    compared = [row for row in rows if base is not None and row is not base and
                difference(*_samples(row, base)) is not None]
    level = 1.0 - (1.0 - FAMILY_LEVEL) / max(1, len(compared))
    for row in rows:
        diff = None
        if base is not None and row is not base:
            diff = difference(*_samples(row, base), level=level, limits=(-100.0, 100.0))
        row.update({
            "baseline": baseline if base is not None else None,  # the baseline's own row names it too
            "delta_vs_baseline": diff.mean if diff else _mean_difference(row, base),
            "delta_ci95_low": diff.low if diff else None,
            "delta_ci95_high": diff.high if diff else None,
            "delta_method": diff.method if diff else None,
            "delta_seeds": diff.n_a if diff else None,
            "baseline_seeds": diff.n_b if diff else None,
            "delta_verdict": diff.verdict if diff else None,
            # the family's 95% holds over this many intervals, each at delta_level
            "delta_comparisons": len(compared) if diff and diff.low is not None else None,
            "delta_level": level if diff and diff.low is not None else None,
            # scored on other test sequences than the baseline: a difference of data as well as of models
            "delta_data_note": _other_test_set(row, base),
        })
    return baseline if base is not None else None


def differences_table(rows: list[dict[str, Any]]) -> str | None:
    """Each entry's difference from the baseline in Markdown, or None without a baseline."""
    baseline = baseline_of(rows)
    if baseline is None:
        return None
    base = next(r for r in rows if r["entry"] == baseline)
    if base["test_accuracy_mean"] is None:
        return f"`{baseline}` has no completed seed: there is nothing to compare the other entries with."
    counted = next((r["delta_comparisons"] for r in rows if r.get("delta_comparisons")), 1)
    level = next((r["delta_level"] for r in rows if r.get("delta_level")), FAMILY_LEVEL)
    together = ("a 95% interval" if counted == 1 else
                f"95% simultaneous intervals: all {counted} hold together with 95% probability (Bonferroni: each "
                f"is a {100 * level:.3g}% interval), so that comparing many entries does not find differences "
                "by chance; two entries compared alone get a narrower one")
    lines = [f"Test accuracy minus `{baseline}`'s, in points, with {together}. *paired*: the mean of the "
             "seed-by-seed differences over the seeds both completed (Student's t); *welch*: the difference of "
             "the two means where seeds do not pair (Welch's t); where a side has one seed, the difference of "
             "the means and no interval. The interval covers the variation between seeds, not the draw of "
             "the test set. The default baseline is "
             "the best mean validation accuracy (test accuracy where an entry has no validation split, "
             "which flatters the baseline a little). *within noise*: the interval holds 0, so these seeds "
             "cannot tell the two apart.", "",
             f"| entry | Δ test acc (points) | {'95% interval' if counted == 1 else '95% simultaneous interval'} "
             "| seeds | verdict |", "|---|---:|---:|---|---|"]
    for row in rows:
        if row["entry"] == baseline:
            continue
        if row["test_accuracy_mean"] is None:  # all its seeds diverged or failed: listed, not dropped
            lines.append(f"| `{row['entry']}` | – | – | no completed seed ({row.get('status', '')}) | |")
            continue
        if row["delta_vs_baseline"] is None:
            continue
        if row["delta_method"] is None:
            seeds = "a side has one seed: no interval"
        elif row["delta_method"] == "paired":
            seeds = f"paired, n={row['delta_seeds']}"
        else:
            seeds = f"welch, n={row['delta_seeds']} vs {row['baseline_seeds']}"
        interval = "–" if row["delta_ci95_low"] is None else \
            f"{row['delta_ci95_low']:+.2f} to {row['delta_ci95_high']:+.2f}"
        other = "other budget ‡" if row.get("delta_budget_note") else ""  # the notes under the table say which
        data = "other test set §" if row.get("delta_data_note") else ""
        verdict = "; ".join(v for v in (row["delta_verdict"], other, data) if v)
        lines.append(f"| `{row['entry']}` | {row['delta_vs_baseline']:+.2f} | {interval} | {seeds} | {verdict} |")
    if len(lines) <= 4:
        return None
    notes = [f"{mark} {warning[0].upper()}{warning[1:]}." for mark, warning in
             (("‡", budget_warning(rows)), ("§", test_set_warning(rows))) if warning]
    return "\n\n".join(["\n".join(lines), *notes])


def test_set_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning where entries set against the baseline were scored on other test sequences than
    it: each such difference is the data's effect as much as the model's, and no seed pairs."""
    differing = [r for r in rows if r.get("delta_vs_baseline") is not None and r.get("delta_data_note")]
    if not differing:
        return None
    named = entries_named(differing, lambda r: f"({r['delta_data_note']})")
    return (f"test sets differ: {named}; a difference between entries scored on different test data "
            "mixes the effect of the data with that of the model, and its interval (unpaired) does not cover "
            "the draw of either test set: to compare the models alone, score every entry on the same test set")
