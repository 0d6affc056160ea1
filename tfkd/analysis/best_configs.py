"""The best K configs of a sweep by the metric it ranked on, at the full schedule, as YAML.

    tfkd best-configs --experiment tfkd_reg-cifar100-resnet18 --top 3

Reads the experiment's newest finished sweep, or the sweep `--sweep NAME`, from MLflow (else from
the Ray results folder `--storage/NAME`), says which one it read, and writes
`<storage>/<SWEEP>/best_configs.yaml` (or `--out`): a list of {rank, sweep, run_id, trial_id,
epoch, val_accuracy, test_accuracy, metric, score, config}, where config is the full flat trial
config and score the trial's value of `metric`, the metric the sweep ranked on (its `metric` tag;
val_accuracy for a holdout sweep). Under holdout the test accuracy is recorded for information
only and never decides the ranking; a paper-protocol sweep ranks on paper_test_accuracy, the test
set's maximum over epochs, so it selects on the test set (and says so).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import yaml

from tfkd.analysis import sweeps
from tfkd.analysis.common import say, tracking_uri
from tfkd.core.atomic import write_bytes
from tfkd.core.words import counted
from tfkd.sweep.storage import join

FILE_NAME = "best_configs.yaml"


def choose(
    experiment: str, uri: str, storage: str, top: int, sweep_name: str | None = None
) -> tuple[sweeps.Sweep, list[sweeps.Trial]]:
    """The sweep and its best `top` full-schedule trials (a UserError when there are none).

    Says which sweep it read: an experiment can hold several.
    """
    sweep = sweeps.load(experiment, uri, storage, sweep_name)
    say(sweeps.describe(sweep))
    return sweep, sweeps.ranked(sweep, top)


def document(sweep: sweeps.Sweep, best: Sequence[sweeps.Trial]) -> list[dict[str, Any]]:
    """The YAML document: one entry per chosen config, best first."""
    return [
        {
            "rank": rank,
            "sweep": sweep.name,
            "run_id": trial.run_id,
            "trial_id": trial.trial_id,
            "epoch": trial.epoch,
            "val_accuracy": trial.val_accuracy,
            "test_accuracy": trial.test_accuracy,
            "metric": sweep.metric,
            "score": trial.score,
            "config": trial.config,
        }
        for rank, trial in enumerate(best, start=1)
    ]


def default_out(storage: str, sweep: sweeps.Sweep) -> str:
    return join(storage, sweep.name, FILE_NAME)


def write(args: argparse.Namespace) -> str:
    """Choose the best configs as `tfkd best-configs`' flags say, write them, and say so;
    returns where they were written."""
    uri = tracking_uri(args.mlflow_uri)
    sweep, best = choose(args.experiment, uri, args.storage, args.top, args.sweep)
    text = yaml.safe_dump(document(sweep, best), sort_keys=False)
    where = write_bytes(args.out or default_out(args.storage, sweep), text.encode())
    full = len(sweeps.full_schedule_trials(sweep))
    caution = " (it selects on the test set: the scores are optimistic)"
    say(
        f"sweep {sweep.name} (from {sweep.source}): {counted(len(sweep.trials), 'trial')}, "
        f"{full} ran the full schedule of {sweep.epochs} epochs; ranked on {sweep.metric}"
        + (caution if sweep.selects_on_test else "")
    )
    if len(best) < args.top:
        say(
            f"only {len(best)} of the {args.top} configs asked for: no more trials ran the "
            "full schedule"
        )
    for rank, trial in enumerate(best, start=1):
        say(f"#{rank} trial {trial.trial_id}: {sweep.metric} {trial.score:.2f}%")
    say(f"written to {where}")
    return where
