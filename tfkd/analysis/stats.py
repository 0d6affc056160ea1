"""The statistics of a report's rows: t intervals over seeds, paired differences to a baseline,
Holm's correction across rows, and the verdict a row may state. Pure functions of numbers.

Why paired: a student's initial weights depend only on its seed and model, and every mode of a
report is reproduced on the same seeds, so a mode and its baseline at one seed share their
initialisation and data order; the per-seed difference removes that shared noise (Student's
paired t). With n paired seeds and differences d_1..d_n (mean d, sample std s, se = s/sqrt(n)):

    95% CI        d -/+ t_{0.975, n-1} * se
    p-value       2 * (1 - T_{n-1}(|d| / se))            (two-sided paired t-test)
    P(gain > 0)   T_{n-1}(d / se) = 1 - T_{n-1}(-d / se)  (the posterior probability that the
                  true mean difference is positive, under the paired t model with a flat prior)

where T_{n-1} is Student's t CDF with n-1 degrees of freedom. Holm's step-down correction across
the m rows of one report: sort the p-values p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
max over j <= i of min(1, (m - j + 1) * p_(j)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95  # every interval of a report
ALPHA = 1 - LEVEL  # the CI excludes 0 exactly when the paired t-test's p < ALPHA


@dataclass(frozen=True)
class Interval:
    """A mean over n values and its t confidence interval (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_bounds(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def excludes_zero(self) -> bool:
        return self.has_bounds and (self.low > 0 or self.high < 0)


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """The mean of `values` with its two-sided t interval at `level` (NaN values dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * standard_error(x)
    return Interval(mean, mean - half, mean + half, n)


def standard_error(x: np.ndarray) -> float:
    """The sample standard deviation over sqrt(n)."""
    return float(x.std(ddof=1)) / math.sqrt(len(x))


@dataclass(frozen=True)
class PairedDifference:
    """Row minus baseline over the seeds both have: the mean difference and its interval, the
    paired t-test's two-sided p-value and P(gain > 0) (see the module's docstring)."""

    interval: Interval
    p_value: float
    p_gain: float
    seeds: tuple[int, ...]


def paired_difference(
    row: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL
) -> PairedDifference:
    """The paired comparison of two rows' per-seed values ({seed: value})."""
    seeds = tuple(sorted(row.keys() & baseline.keys()))
    differences = np.asarray([row[s] - baseline[s] for s in seeds], dtype=float)
    interval = t_interval(differences, level)
    if interval.n < 2:
        return PairedDifference(interval, math.nan, math.nan, seeds)
    p_value, p_gain = _paired_t(differences)
    return PairedDifference(interval, p_value, p_gain, seeds)


def _paired_t(differences: np.ndarray) -> tuple[float, float]:
    """(two-sided p, P(gain > 0)) of the paired t model; identical differences are certain."""
    mean, se = float(differences.mean()), standard_error(differences)
    if se == 0:
        return (1.0, 0.5) if mean == 0 else (0.0, float(mean > 0))
    t = mean / se
    dof = len(differences) - 1
    return float(2 * scipy_stats.t.sf(abs(t), dof)), float(scipy_stats.t.cdf(t, dof))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given; NaN entries stay NaN and do not count in m."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(difference: PairedDifference, p_holm: float, alpha: float = ALPHA) -> str:
    """What a row may claim against its baseline.

    'gain' or 'loss' when the CI excludes 0 and the Holm-adjusted p is below `alpha`; 'gain, not
    after Holm' (or loss) when the CI excludes 0 but the correction across the report's rows
    takes it back; 'inconclusive' when the CI spans 0; with fewer than 2 paired seeds, why there
    is no CI.
    """
    n = difference.interval.n
    if n == 0:
        return "no seed in common with the baseline"
    if n == 1:
        return "1 paired seed: no CI"
    if not difference.interval.excludes_zero():
        return "inconclusive"
    word = "gain" if difference.interval.low > 0 else "loss"
    return word if p_holm < alpha else f"{word}, not after Holm"
