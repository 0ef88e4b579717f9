"""Paired statistics against hand computations and scipy."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hero_bench.stats import detectable_effect, holm, paired_difference


def test_paired_difference_matches_a_hand_computation():
    a, b = [91.0, 92.0, 94.0, 93.0], [90.0, 90.0, 91.0, 92.0]  # differences 1, 2, 3, 1
    got = paired_difference(a, b)
    mean, sd = 7 / 4, math.sqrt(((1 - 1.75) ** 2 * 2 + (2 - 1.75) ** 2 + (3 - 1.75) ** 2) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3), from a table
    assert got["n"] == 4 and got["mean"] == pytest.approx(mean) and got["sd"] == pytest.approx(sd)
    assert (got["low"], got["high"]) == pytest.approx((mean - half, mean + half))
    t = mean / (sd / 2)
    assert got["p"] == pytest.approx(2 * scipy_stats.t.sf(t, 3))


def test_paired_difference_agrees_with_scipy_on_random_data():
    rng = np.random.default_rng(0)
    a = rng.normal(80, 3, 12)
    b = a - rng.normal(0.5, 1, 12)
    got = paired_difference(a, b, confidence=0.9)
    reference = scipy_stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.9)
    assert got["p"] == pytest.approx(reference.pvalue)
    assert (got["low"], got["high"]) == pytest.approx((interval.low, interval.high))
    assert got["mean"] == pytest.approx(np.mean(a - b))


def test_pairs_with_a_missing_value_are_dropped_and_degenerate_cases_are_defined():
    got = paired_difference([1.0, np.nan, 3.0, 4.0], [0.0, 5.0, 1.0, np.nan])
    assert got["n"] == 2 and got["mean"] == pytest.approx(1.5)
    single = paired_difference([1.0], [0.5])
    assert single["n"] == 1 and single["mean"] == 0.5 and math.isnan(single["p"]) and math.isnan(single["low"])
    same = paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # identical differences: no test, no p
    assert (same["low"], same["high"], same["sd"]) == (1.0, 1.0, 0.0) and math.isnan(same["p"])
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])


def test_holm_on_a_known_example():
    # Holm (1979) step-down: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1, then running maximum
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    got = holm([0.2, np.nan, 0.9])
    assert got[0] == pytest.approx(0.4) and math.isnan(got[1]) and got[2] == pytest.approx(0.9)


def test_detectable_effect_is_found_with_the_stated_power_by_simulation():
    n, sd = 10, 1.0
    effect = detectable_effect(sd, n)
    rng = np.random.default_rng(1)
    found = np.mean([scipy_stats.ttest_1samp(rng.normal(effect, sd, n), 0).pvalue < 0.05 for _ in range(4000)])
    assert 0.77 < found < 0.83  # power 0.8 by the usual t approximation
    assert math.isnan(detectable_effect(sd, 1))
