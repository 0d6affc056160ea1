"""The statistics of the search-efficiency evidence (pure functions of numbers; numpy and scipy).

- Expected best validation accuracy vs budget (Dodge et al., 2019, "Show Your Work: Improved
  Reporting of Experimental Results", EMNLP): with the N trial scores of a method sorted
  v_(1) <= ... <= v_(N), the maximum of n draws with replacement from their empirical
  distribution has P(max <= v_(i)) = (i/N)^n, so

      E[max of n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n)

  computed exactly (ties need no care: tied values share their probability mass).
- Bands over search seeds: resample the seeds with replacement, pool their trials, recompute the
  curve; the percentile interval of the resampled curves (a seeded, deterministic bootstrap).
- Means with a 95% t interval; paired differences (t over the pairs) for fresh-seed
  re-trainings, which pair by seed because a student's initial weights depend only on its seed and
  model; Welch's interval for differences of unpaired means (the best validation accuracy of
  different samplers' search seeds).
- Spearman's rho with a Fisher-z interval, var(z) = 1.06 / (n - 3) (Fieller, Hartley and Pearson,
  1957, for rank correlations), and several draws pooled by their weights n - 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
FIELLER_VARIANCE = 1.06  # var(atanh(rho_s)) * (n - 3) for Spearman's rho


def expected_max(scores: Sequence[float], n: int) -> float:
    """E[max of n draws with replacement from the empirical distribution of `scores`]."""
    if n < 1 or not len(scores):
        raise ValueError("expected_max needs n >= 1 and at least one score")
    values = np.sort(np.asarray(scores, dtype=float))
    cdf = np.arange(1, len(values) + 1) / len(values)
    weights = cdf**n - np.concatenate(([0.0], cdf[:-1])) ** n
    return float(np.dot(values, weights))


def expected_max_curve(scores: Sequence[float], budgets: Iterable[int]) -> list[float]:
    """expected_max at each budget n (Dodge et al.'s expected validation performance curve)."""
    return [expected_max(scores, n) for n in budgets]


def bootstrap_band(
    groups: Sequence[Sequence[float]],
    budgets: Sequence[int],
    reps: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, list[float]]:
    """The curve of all groups' scores pooled, and its percentile band when the groups (one per
    search seed) are resampled with replacement. Deterministic for a given `seed`."""
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        raise ValueError("bootstrap_band needs at least one non-empty group")
    rng = np.random.default_rng(seed)
    curves = np.empty((reps, len(budgets)))
    for rep in range(reps):
        picked = rng.integers(len(groups), size=len(groups))
        pooled = [score for i in picked for score in groups[i]]
        curves[rep] = expected_max_curve(pooled, budgets)
    tail = (1 - level) / 2 * 100
    return {
        "budgets": list(budgets),
        "curve": expected_max_curve([s for g in groups for s in g], budgets),
        "low": np.percentile(curves, tail, axis=0).tolist(),
        "high": np.percentile(curves, 100 - tail, axis=0).tolist(),
    }


def mean_ci(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and its t interval (None bounds with fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = float(x.mean())
    if len(x) < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"n": len(x), "mean": mean, "low": mean - half, "high": mean + half}


def with_verdict(interval: dict[str, Any]) -> dict[str, Any]:
    """`interval` plus "inconclusive" when its bounds span 0 (or are unknown)."""
    low, high = interval["low"], interval["high"]
    return {**interval, "inconclusive": bool(low is None or high is None or low <= 0 <= high)}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """a - b pair by pair (the same fresh seed): mean, t interval, and whether it is
    inconclusive (the interval spans 0)."""
    if len(a) != len(b):
        raise ValueError("paired_difference needs as many a as b")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return with_verdict(mean_ci(diffs.tolist(), level))


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """mean(a) - mean(b) for unpaired samples: Welch's t interval and the verdict."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        mean = float(x.mean() - y.mean()) if len(x) and len(y) else None
        return with_verdict({"n": [len(x), len(y)], "mean": mean, "low": None, "high": None})
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    mean = float(x.mean() - y.mean())
    se = math.sqrt(vx + vy)
    if se == 0:
        return with_verdict({"n": [len(x), len(y)], "mean": mean, "low": mean, "high": mean})
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = stats.t.ppf((1 + level) / 2, df) * se
    return with_verdict(
        {"n": [len(x), len(y)], "mean": mean, "low": mean - half, "high": mean + half}
    )


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranked = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranked[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranked


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (NaN when either is constant)."""
    rx, ry = ranks(x), ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(np.dot(dx, dx) * np.dot(dy, dy)))
    return float(np.dot(dx, dy) / denominator) if denominator else math.nan


def _z_interval(z: float, variance: float, level: float) -> tuple[float, float]:
    half = stats.norm.ppf((1 + level) / 2) * math.sqrt(variance)
    return math.tanh(z - half), math.tanh(z + half)


def _atanh(rho: float) -> float:
    return math.atanh(max(-0.999999, min(0.999999, rho)))


def spearman_ci(
    rho: float, n: int, level: float = LEVEL, variance: float = FIELLER_VARIANCE
) -> tuple[float | None, float | None]:
    """Fisher-z interval of a correlation over n pairs, var(z) = variance / (n - 3) (1.06 for
    Spearman's rho, 1 for Pearson's r); None with n <= 3 or a NaN correlation."""
    if n <= 3 or math.isnan(rho):
        return None, None
    return _z_interval(_atanh(rho), variance / (n - 3), level)


def pooled_spearman(
    rhos: Sequence[float], sizes: Sequence[int], level: float = LEVEL
) -> dict[str, Any]:
    """Several draws' rho pooled in z, weighted by n - 3, with its Fisher interval."""
    usable = [(r, n) for r, n in zip(rhos, sizes, strict=True) if n > 3 and not math.isnan(r)]
    if not usable:
        return {"rho": None, "low": None, "high": None, "draws": 0}
    weight = sum(n - 3 for _, n in usable)
    z = sum((n - 3) * _atanh(r) for r, n in usable) / weight
    low, high = _z_interval(z, FIELLER_VARIANCE / weight, level)
    return {"rho": math.tanh(z), "low": low, "high": high, "draws": len(usable)}


def median_index(values: Sequence[float]) -> int:
    """The index of the median value (the lower median of an even count; the first of ties)."""
    if not len(values):
        raise ValueError("median_index needs at least one value")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return order[(len(values) - 1) // 2]


def fresh_seeds(count: int, used: Iterable[int], start: int) -> list[int]:
    """`count` seeds from `start` up, none of them in `used` (the seeds the search trained)."""
    taken, seeds, seed = set(used), [], start
    while len(seeds) < count:
        if seed not in taken:
            seeds.append(seed)
        seed += 1
    return seeds
