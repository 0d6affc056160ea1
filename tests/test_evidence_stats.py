"""benchmarks/evidence_stats.py against independent computations: brute-force enumeration for
Dodge et al.'s expected maximum, scipy for the intervals and Spearman's rho."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO


def _load():
    spec = importlib.util.spec_from_file_location(
        "evidence_stats", REPO / "benchmarks" / "evidence_stats.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


es = _load()
SCORES = [71.0, 80.5, 80.5, 64.0, 90.25]  # a tie and an unsorted order on purpose


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_expected_max_equals_the_mean_over_every_draw_of_n(n):
    draws = list(itertools.product(SCORES, repeat=n))  # every draw with replacement, equally likely
    brute = sum(max(d) for d in draws) / len(draws)
    assert es.expected_max(SCORES, n) == pytest.approx(brute, abs=1e-12)


def test_expected_max_curve_is_the_mean_at_1_and_rises_to_the_maximum():
    curve = es.expected_max_curve(SCORES, [1, 2, 50, 500])
    assert curve[0] == pytest.approx(np.mean(SCORES))
    assert curve == sorted(curve)
    assert curve[-1] == pytest.approx(max(SCORES), abs=1e-9)


def test_bootstrap_band_is_deterministic_for_a_seed_and_holds_the_pooled_curve():
    groups = [[70.0, 75.0], [80.0, 60.0, 65.0], [90.0], [72.0, 71.0]]
    budgets = [1, 2, 4, 8]
    first = es.bootstrap_band(groups, budgets, reps=300, seed=7)
    assert first == es.bootstrap_band(groups, budgets, reps=300, seed=7)
    assert first != es.bootstrap_band(groups, budgets, reps=300, seed=8)
    pooled = [s for g in groups for s in g]
    assert first["curve"] == pytest.approx([es.expected_max(pooled, n) for n in budgets])
    for low, mid, high in zip(first["low"], first["curve"], first["high"], strict=True):
        assert low <= mid <= high
    assert first["low"][0] < first["high"][0]  # resampling seeds moves the curve


def test_one_group_has_no_band():
    band = es.bootstrap_band([[1.0, 2.0, 3.0]], [1, 3], reps=50, seed=0)
    assert band["low"] == band["curve"] == band["high"]


def test_mean_ci_is_scipys_t_interval():
    x = [91.2, 90.1, 92.8, 89.9, 91.0]
    mine = es.mean_ci(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (mine["low"], mine["high"]) == pytest.approx((low, high))
    assert es.mean_ci([3.0])["low"] is None


def test_paired_difference_is_scipys_paired_t_interval_and_says_inconclusive():
    a = [91.2, 90.1, 92.8, 89.9, 91.0]
    b = [90.0, 90.3, 91.5, 89.0, 90.1]
    mine = es.paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (mine["low"], mine["high"]) == pytest.approx((ci.low, ci.high))
    assert mine["inconclusive"] == bool(ci.low <= 0 <= ci.high)
    clear = es.paired_difference([x + 2 for x in b], [x + 0.1 * i for i, x in enumerate(b)])
    assert clear["low"] > 0 and not clear["inconclusive"]


def test_welch_difference_is_scipys_welch_interval():
    a, b = [85.0, 87.5, 86.2, 90.1], [84.0, 83.1, 88.0, 86.5, 82.2, 85.0]
    mine = es.welch_difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (mine["low"], mine["high"]) == pytest.approx((ci.low, ci.high))
    assert mine["mean"] == pytest.approx(np.mean(a) - np.mean(b))


def test_spearman_is_scipys_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=25).astype(float)
    y = x + rng.normal(0, 2, size=25)
    y[:5] = y[0]  # ties on both sides
    assert es.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert math.isnan(es.spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_fisher_interval_with_unit_variance_is_scipys_pearson_interval():
    rng = np.random.default_rng(5)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    result = stats.pearsonr(x, y)
    ci = result.confidence_interval(0.95)
    mine = es.spearman_ci(result.statistic, 20, variance=1.0)
    assert mine == pytest.approx((ci.low, ci.high))
    wider = es.spearman_ci(result.statistic, 20)  # Fieller's 1.06 for rank correlations
    assert wider[0] < mine[0] and wider[1] > mine[1]
    assert es.spearman_ci(0.5, 3) == (None, None)


def test_pooled_spearman_of_equal_draws_is_that_rho_with_a_narrower_interval():
    one = es.pooled_spearman([0.6], [16])
    assert one["rho"] == pytest.approx(0.6)
    assert (one["low"], one["high"]) == pytest.approx(es.spearman_ci(0.6, 16))
    three = es.pooled_spearman([0.6, 0.6, 0.6], [16, 16, 16])
    assert three["rho"] == pytest.approx(0.6)
    assert three["high"] - three["low"] < one["high"] - one["low"]
    assert es.pooled_spearman([math.nan], [16])["rho"] is None


def test_median_index_is_the_lower_median_first_of_ties():
    assert es.median_index([5.0, 1.0, 3.0]) == 2
    assert es.median_index([4.0, 1.0, 3.0, 2.0]) == 3  # the lower median of an even count
    assert es.median_index([2.0, 2.0, 2.0]) == 1


def test_fresh_seeds_never_reuse_a_used_seed():
    used = {0, 1000, 1002}
    seeds = es.fresh_seeds(5, used, start=1000)
    assert seeds == [1001, 1003, 1004, 1005, 1006]
    assert not set(seeds) & used
