"""A finished (or interrupted) sweep in a few numbers and rows: its best trial, its failures and
why, and every trial's end state for the sweep run's report in MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from tfkd import tracking
from tfkd.core.protocol import PAPER_TEST_ACCURACY
from tfkd.sweep import status as progress
from tfkd.sweep import sweep_files
from tfkd.sweep.search_space import Param
from tfkd.sweep.spec import FAILED_BY_HYPERPARAMETERS, SweepResult, SweepSpec
from tfkd.sweep.storage import GIVEN_CONFIG_KEY


def _is_full_length(metrics: Mapping[str, Any], epochs: int) -> bool:
    return int(metrics.get("epoch", 0)) >= epochs


def _results(grid: tune.ResultGrid) -> list[tune.Result]:
    """The grid's results (a ResultGrid is indexed, and declares no iteration)."""
    return [grid[i] for i in range(len(grid))]


def _metrics(result: tune.Result) -> dict[str, Any]:
    """The trial's last reported metrics ({} when it reported none)."""
    return result.metrics or {}


def _given_config(result: tune.Result) -> dict[str, Any]:
    """The trial's config as the sweep gave it ({} when Tune kept none)."""
    config = result.config or {}
    return dict(config.get(GIVEN_CONFIG_KEY, config))


def _trial_id(result: tune.Result) -> str:
    return Path(result.path).name.removeprefix("trial_")


def _failure_reason(result: tune.Result) -> str:
    """One line: the reason a trial reported, else the last line of its error."""
    metrics = _metrics(result)
    if FAILED_BY_HYPERPARAMETERS in metrics:
        return str(metrics[FAILED_BY_HYPERPARAMETERS])
    lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
    return lines[-1] if lines else result.error.__class__.__name__


def summarise(grid: tune.ResultGrid, spec: SweepSpec, interrupted: bool) -> SweepResult:
    """The best trial (tfkd.sweep.status.best_of), the counts, and one line per failure."""
    metric, results = spec.metric, _results(grid)
    finished = [r for r in results if r.error is None and metric in _metrics(r)]
    full = [r for r in finished if _is_full_length(_metrics(r), spec.epochs)]
    tied = progress.best_ties(
        (r, _metrics(r)[metric], _is_full_length(_metrics(r), spec.epochs)) for r in finished
    )
    best = tied[0] if tied else None
    failed = [r for r in results if r.error is not None]
    keep = ("trial_id", "epoch", "val_accuracy", "test_accuracy", "paper_test_accuracy")
    return SweepResult(
        experiment_path=grid.experiment_path,
        best_config=_given_config(best) if best else None,
        best_metrics=dict(_metrics(best)) if best else None,
        best_trial_id=_metrics(best).get("trial_id") if best else None,
        tied_trial_ids=[str(_metrics(r).get("trial_id")) for r in tied[1:]],
        trials=len(grid),
        failed=len(failed),
        stopped_early=len(finished) - len(full),
        trial_metrics=[{k: _metrics(r).get(k) for k in keep} for r in finished],
        failures={_trial_id(r): _failure_reason(r) for r in failed},
        failed_by_infrastructure=sum(
            1 for r in failed if FAILED_BY_HYPERPARAMETERS not in _metrics(r)
        ),
        interrupted=interrupted,
    )


def _searched(spec: SweepSpec) -> dict[str, Param]:
    """The keys the sweep varies (none for --fixed: one trial at the preset)."""
    return {} if spec.fixed else dict(spec.space.params)


def _trial_state(result: tune.Result, epochs: int) -> str:
    if result.error is not None:
        return "FAILED"
    return "DONE" if _is_full_length(_metrics(result), epochs) else "STOPPED"


def trial_rows(grid: tune.ResultGrid, spec: SweepSpec) -> list[sweep_files.TrialRow]:
    """Every trial at its end: name, searched values, state and last metrics."""
    keys = list(_searched(spec))
    rows = []
    for result in _results(grid):
        config = _given_config(result)
        metrics = _metrics(result)
        rows.append(
            sweep_files.TrialRow(
                name=progress.short_name(config, keys) or Path(result.path).name,
                trial_id=str(metrics.get("trial_id", Path(result.path).name)),
                state=_trial_state(result, spec.epochs),
                epoch=int(metrics.get("epoch", 0)),
                val_accuracy=metrics.get("val_accuracy"),
                test_accuracy=metrics.get("test_accuracy"),
                values={k: config[k] for k in keys if k in config},
                paper_test_accuracy=metrics.get(PAPER_TEST_ACCURACY),
            )
        )
    return rows


def log_sweep_files(spec: SweepSpec, grid: tune.ResultGrid) -> None:
    """The sweep run's trials table, parallel-coordinates plot and counts (sweep_files)."""
    if spec.tracking is None:
        return
    rows = trial_rows(grid, spec)
    files = sweep_files.files(spec.name, rows, _searched(spec), spec.epochs, spec.metric)
    tracking.log_sweep_files(spec.tracking, sweep_files.sweep_metrics(rows), files)
