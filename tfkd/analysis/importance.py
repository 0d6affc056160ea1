"""A sweep's trials as points of its search space, and Optuna's hyper-parameter importances.

The sweep's `search_space` tag (the YAML text tfkd tune used) gives the distributions; the trials'
configs give the values. Every point needs a comparable score: the sweep's ranking metric
(`Sweep.metric`: val_accuracy, or paper_test_accuracy for a paper sweep) at the full schedule
when enough trials ran it, else at the last epoch every trial reached (ASHA stops some
trials early, and a short trial's final accuracy is not comparable with a long one's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tfkd.analysis import sweeps
from tfkd.core import coordinates
from tfkd.core.config import TrialConfig
from tfkd.sweep import search_space

MIN_FULL_TRIALS = 3  # fewer full-schedule trials than this: score every trial at a common epoch
MIN_POINTS = 2
# fANOVA fits a random forest to (values, score) pairs and splits the score's variance among
# the parameters; from fewer trials than this its ranking is noise, so no importance is shown.
MIN_IMPORTANCE_TRIALS = 8


def _int_bounds(param: search_space.Param) -> tuple[int, int]:
    low, high = param.bounds
    return int(low), int(high)


OPTUNA_DISTRIBUTIONS: dict[str, Callable[[search_space.Param], BaseDistribution]] = {
    "uniform": lambda p: FloatDistribution(*p.bounds),
    "loguniform": lambda p: FloatDistribution(*p.bounds, log=True),
    "int": lambda p: IntDistribution(*_int_bounds(p)),
    "logint": lambda p: IntDistribution(*_int_bounds(p), log=True),
    "quniform": lambda p: FloatDistribution(*p.bounds, step=p.q),
    "choice": lambda p: CategoricalDistribution(list(p.values)),
}


class NotEnoughTrials(Exception):
    """The sweep cannot be analysed this way; the message says why (shown in the report)."""


@dataclass(frozen=True)
class Point:
    trial_id: str
    params: dict[str, Any]
    value: float
    full_schedule: bool


@dataclass(frozen=True)
class SweepPoints:
    """The searched parameters that vary, one scored point per trial, and what the score is."""

    sweep: str
    distributions: dict[str, BaseDistribution]
    points: tuple[Point, ...]
    label: str
    metric: str  # what the score is: the sweep's ranking metric


def distributions(text: str, mode: str) -> dict[str, BaseDistribution]:
    """Optuna distributions of the searched keys in a search-space YAML text."""
    try:
        space = search_space.loads(text, "the sweep's search_space tag", mode or None)
    except search_space.SearchSpaceError as exc:
        raise NotEnoughTrials(f"its search_space tag is not readable ({exc})") from None
    return {name: OPTUNA_DISTRIBUTIONS[p.distribution](p) for name, p in space.params.items()}


def scored_trials(sweep: sweeps.Sweep) -> tuple[list[tuple[sweeps.Trial, float]], str]:
    """(trial, score) pairs and a label saying what the score is."""
    full = sweeps.full_schedule_scores(sweep)
    if len(full) >= MIN_FULL_TRIALS:
        return (
            full,
            f"{sweep.metric} at epoch {sweep.epochs} (full schedule, {len(full)} trials)",
        )
    ran = [t for t in sweep.trials if not t.failed and t.history]
    if len(ran) < MIN_POINTS:
        raise NotEnoughTrials(f"{len(ran)} trial(s) reported {sweep.metric}")
    epoch = min(max(t.history) for t in ran)
    scored = [(t, t.history[epoch]) for t in ran if epoch in t.history]
    return scored, (
        f"{sweep.metric} at epoch {epoch}, the last all {len(scored)} trials reached "
        f"({len(full)} ran all {sweep.epochs})"
    )


def _varying(name: str, dist: BaseDistribution, values: list[Any]) -> bool:
    """Searched and in range for every trial, with at least two distinct values."""
    try:
        inside = all(dist._contains(dist.to_internal_repr(v)) for v in values)
    except (ValueError, TypeError):
        return False
    return inside and len({repr(v) for v in values}) > 1


def searched_value(config: dict[str, Any], name: str) -> Any:
    """A trial's value of a searched parameter: a field as the config holds it, a search
    coordinate (kd_share, smoothing, ce_weight, ...) from the fields it set (a config holds
    those), at the trial's number of classes (tfkd.core.coordinates.coordinates_of)."""
    if not coordinates.is_coordinate(name):
        return config.get(name)
    try:
        cfg = TrialConfig.from_dict(config)
        return coordinates.coordinates_of(cfg, [name]).values[name]
    except ValueError:  # not this mode's coordinate, or an unreadable config: not placed
        return None


def sweep_points(sweep: sweeps.Sweep) -> SweepPoints:
    """The sweep's trials as scored points over the searched parameters that vary."""
    if not sweep.searched:
        raise NotEnoughTrials("it has no search_space tag")
    scored, label = scored_trials(sweep)
    mode = sweep.tags.get("mode", "")
    dists = {
        name: dist
        for name, dist in distributions(sweep.searched, mode).items()
        if _varying(name, dist, [searched_value(t.config, name) for t, _ in scored])
    }
    if not dists:
        raise NotEnoughTrials("no searched parameter took two different values")
    points = tuple(
        Point(
            t.trial_id,
            {name: searched_value(t.config, name) for name in dists},
            float(value),
            sweeps.completed_full_schedule(t, sweep.epochs),
        )
        for t, value in scored
    )
    return SweepPoints(sweep.name, dists, points, label, sweep.metric)


def study(points: SweepPoints) -> optuna.Study:
    """An in-memory Optuna study holding the sweep's points as completed trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rebuilt = optuna.create_study(direction="maximize", study_name=points.sweep)
    for point in points.points:
        rebuilt.add_trial(
            optuna.trial.create_trial(
                params=point.params,
                distributions=points.distributions,
                value=point.value,
                user_attrs={"trial_id": point.trial_id},
            )
        )
    return rebuilt


def importances(points: SweepPoints) -> dict[str, float]:
    """Optuna's fANOVA importances (seeded, so a report is reproducible), largest first."""
    if len(points.points) < MIN_IMPORTANCE_TRIALS:
        raise NotEnoughTrials(
            f"{len(points.points)} scored trials; an importance needs at least "
            f"{MIN_IMPORTANCE_TRIALS} (fANOVA on fewer ranks noise)"
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return optuna.importance.get_param_importances(study(points), evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:  # e.g. every score equal
        raise NotEnoughTrials(f"Optuna could not rank the parameters ({exc})") from None
