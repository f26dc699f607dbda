"""Student-t quantiles and the intervals for differences between entries, against published values."""

from __future__ import annotations

import math

import pytest

from rnnlab.stats import difference, t_quantile


@pytest.mark.parametrize(("p", "df", "table"), [
    # Two-sided 95% and 99% critical values, as printed in any t table.
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 5, 2.571),
    (0.975, 9, 2.262), (0.975, 10, 2.228), (0.975, 29, 2.045), (0.975, 120, 1.980),
    (0.995, 1, 63.657), (0.995, 5, 4.032), (0.95, 7, 1.895),
])
def test_t_quantile_matches_the_tables(p: float, df: int, table: float) -> None:
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_tends_to_the_normal() -> None:
    assert t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)


@pytest.mark.parametrize(("p", "df"), [(0.5, 3), (1.0, 3), (0.975, 0), (0.975, 2.5)])
def test_t_quantile_refuses_what_it_cannot_compute(p: float, df: float) -> None:
    with pytest.raises(ValueError, match="t_quantile needs"):
        t_quantile(p, df)  # type: ignore[arg-type]


def test_paired_difference_by_hand() -> None:
    # Differences by seed: 0.5, 0.3, 0.4 -> mean 0.4, sd 0.1, standard error 0.1/sqrt(3); t(0.975, 2) = 4.3027.
    diff = difference({0: 98.5, 1: 98.3, 2: 98.4, 7: 90.0}, {0: 98.0, 1: 98.0, 2: 98.0})
    assert diff is not None and (diff.method, diff.n_a, diff.n_b, diff.samples) == ("paired", 3, 3, "paired, n=3")
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert diff.mean == pytest.approx(0.4)
    assert (diff.low, diff.high) == (pytest.approx(0.4 - half, abs=1e-4), pytest.approx(0.4 + half, abs=1e-4))
    assert diff.verdict == "higher"


def test_welch_difference_by_hand_where_seeds_do_not_pair() -> None:
    # Variances of the means 0.02/2 and 0.01/3; Welch's df = 1.68, rounded down to 1: t = 12.706.
    diff = difference({0: 98.5, 1: 98.3}, {5: 98.0, 6: 98.1, 7: 97.9})
    assert diff is not None and (diff.method, diff.samples) == ("welch", "welch, n=2 vs 3")
    half = 12.706 * math.sqrt(0.01 + 0.01 / 3)
    assert diff.mean == pytest.approx(0.4)
    assert (diff.low, diff.high) == (pytest.approx(0.4 - half, abs=1e-3), pytest.approx(0.4 + half, abs=1e-3))
    assert diff.verdict == "within noise"


def test_lower_and_no_interval_from_one_seed() -> None:
    lower = difference({0: 90.0, 1: 91.0, 2: 90.5}, {0: 95.0, 1: 95.5, 2: 95.2})
    assert lower is not None and lower.verdict == "lower" and lower.high < 0
    assert difference({0: 90.0}, {0: 95.0}) is None  # one seed says nothing about seed-to-seed spread
    assert difference({0: 90.0, 1: 91.0}, {5: 95.0}) is None


def test_no_spread_between_seeds_gives_no_interval_rather_than_certainty() -> None:
    """Accuracy moves in fixed steps (0.01 points on 10,000 images), so every seed can differ by
    the same amount; a t interval of width zero would then claim certainty."""
    for a, b in (({0: 97.0, 1: 98.0}, {0: 97.0, 1: 98.0}), ({0: 99.0, 1: 98.5}, {0: 90.0, 1: 89.5}),
                 ([95.0, 95.0], [90.0, 90.0]),
                 # the same 0.69 each time, which float subtraction gives as 0.68999999999999773 and 0.6900000000000048
                 ({0: 97.31, 1: 55.85, 2: 71.58}, {0: 96.62, 1: 55.16, 2: 70.89})):
        diff = difference(a, b)
        assert diff is not None and diff.low is None and diff.high is None
        assert diff.verdict == "no spread between seeds: add seeds"
    assert difference({0: 99.0, 1: 98.5}, {0: 90.0, 1: 89.5}).mean == 9.0


def test_seeds_given_as_lists_are_not_paired_and_intervals_stay_possible() -> None:
    # The same values keyed by seed pair up; as lists (a seed repeated in loose runs) they do not.
    assert difference({0: 90.0, 1: 95.0}, {0: 89.0, 1: 94.5}).method == "paired"
    unpaired = difference([90.0, 95.0], [89.0, 94.5])
    assert unpaired is not None and unpaired.method == "welch"
    # Two seeds: t(0.975, 1) = 12.7 makes wide intervals; accuracy differences lie within ±100.
    wide = difference({0: 10.0, 1: 90.0}, {0: 5.0, 1: 5.0}, limits=(-100.0, 100.0))
    assert wide is not None and (wide.low, wide.high) == (-100.0, 100.0)


def test_a_sample_with_nan_or_a_level_in_percent_is_refused() -> None:
    for a, b in (({0: 90.0, 1: float("nan")}, {0: 95.0, 1: 96.0}), ([90.0, 91.0], [float("nan"), 96.0])):
        with pytest.raises(ValueError, match="holds a value that is not a finite number"):
            difference(a, b)
    with pytest.raises(ValueError, match=r"level=95 must be a probability between 0 and 1, e.g. 0.95 \(not 95\)"):
        difference([90.0, 91.0], [95.0, 96.0], level=95)
