"""Confidence intervals for the difference in test accuracy between two entries of a comparison.

Two entries of a compare train the same seeds, so their accuracies pair up seed by seed, and the
paired differences give a Student-t interval. Where the seeds do not pair (loose runs gathered by
``rnnlab report``), Welch's interval compares the two samples instead. The interval covers the
variation between training seeds (initial weights, batch order), not the draw of the test set:
both entries are scored on the same test images.

Student's t quantiles are computed here (about 20 lines) rather than pulling in SciPy for one
function: the t distribution's CDF has a closed form for integer degrees of freedom
(Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["Difference", "difference", "t_quantile"]


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
    """``mean`` of A minus B with its interval [``low``, ``high``]; ``method`` says how it was paired."""

    mean: float
    low: float
    high: float
    method: str  # "paired" or "welch"
    n: int  # seeds paired, or the smaller of the two samples for Welch
    level: float = 0.95

    @property
    def verdict(self) -> str:
        """``higher``, ``lower``, or ``within noise`` when the interval holds 0."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "within noise"


def difference(a: dict[int, float], b: dict[int, float], *, level: float = 0.95) -> Difference | None:
    """The difference of sample ``a`` minus sample ``b`` (values keyed by seed), with a ``level`` interval.

    Paired by seed when at least two seeds are in both; else Welch's interval when each sample
    has at least two values (its degrees of freedom rounded down, which widens the interval a
    little); else None: one seed says nothing about seed-to-seed variation.
    """
    quantile = 0.5 + level / 2.0
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]
        mean, spread = statistics.fmean(diffs), statistics.stdev(diffs)
        half = t_quantile(quantile, len(diffs) - 1) * spread / math.sqrt(len(diffs))
        return Difference(mean, mean - half, mean + half, "paired", len(diffs), level)
    xs, ys = list(a.values()), list(b.values())
    if len(xs) < 2 or len(ys) < 2:
        return None
    va, vb = statistics.variance(xs) / len(xs), statistics.variance(ys) / len(ys)
    mean = statistics.fmean(xs) - statistics.fmean(ys)
    if va + vb == 0.0:
        return Difference(mean, mean, mean, "welch", min(len(xs), len(ys)), level)
    df = (va + vb) ** 2 / (va**2 / (len(xs) - 1) + vb**2 / (len(ys) - 1))
    half = t_quantile(quantile, max(1, math.floor(df))) * math.sqrt(va + vb)
    return Difference(mean, mean - half, mean + half, "welch", min(len(xs), len(ys)), level)
