"""What `tfkd tune` prints and writes at the end: the summary, best_config.yaml, the command that
continues an interrupted sweep, and where to compare the trials in MLflow."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tfkd.cli.flags import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from tfkd.cli.parser import TuneArgs
from tfkd.core import atomic
from tfkd.core.words import counted
from tfkd.sweep import storage
from tfkd.sweep.plan import Plan

MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# The tie line names this many of the trials that tie with the best, then how many more: in a
# sweep of hundreds a coarse metric (a small validation split) can tie dozens; the sweep run's
# trials.csv in MLflow lists every trial with its score.
TIED_IDS_SHOWN = 5
# The end of a sweep names this many failed trials with their reasons, then counts the rest: a
# space with a diverging corner can fail dozens of trials of a large sweep, each with one line.
FAILURES_SHOWN = 5
REPLAY_COMMAND = "tfkd replay"  # sends what a sweep could not deliver to MLflow


def print_comparison(context: Any) -> None:
    """Where MLflow's UI compares the sweep's trials (its sweep run's trials.html)."""
    from tfkd import tracking

    link = tracking.ui_link(
        context.uri, context.experiment_id, context.parent_run_id, "trials.html"
    )
    if "://" not in link.split("#")[0]:
        link = f"run `mlflow ui --backend-store-uri {context.uri}`, open {MLFLOW_UI}/{link}"
    print(f"[tfkd] compare the trials in MLflow: {link}")


# besides epoch, val and test accuracy: what the best trial's protocol reported, where it did
PROTOCOL_METRICS = ("paper_test_accuracy", "reported_epoch")


def _best_config_document(result: Any, plan: Plan) -> dict[str, Any]:
    config = {k: v for k, v in result.best_config.items()}
    metrics = result.best_metrics or {}
    return {
        "experiment": plan.name,
        "trial_id": result.best_trial_id,
        "metrics": {
            **{k: metrics.get(k) for k in ("epoch", "val_accuracy", "test_accuracy")},
            **{k: metrics[k] for k in PROTOCOL_METRICS if k in metrics},
        },
        "searched": {k: config[k] for k in plan.space.params if k in config},
        "config": config,
    }


def _write_best_config(experiment_path: str, document: Mapping[str, Any]) -> str:
    text = yaml.safe_dump(dict(document), sort_keys=False)
    return atomic.write_bytes(storage.join(experiment_path, "best_config.yaml"), text.encode())


def _some_of(trial_ids: Sequence[Any]) -> str:
    """'a, b, c, d, e and 3 more': the first TIED_IDS_SHOWN ids, then how many more."""
    shown = ", ".join(map(str, trial_ids[:TIED_IDS_SHOWN]))
    more = len(trial_ids) - TIED_IDS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _print_failures(failures: Mapping[str, str], experiment_path: str) -> None:
    """The first FAILURES_SHOWN failed trials with their reasons, then how many more there are."""
    for trial_id, reason in list(failures.items())[:FAILURES_SHOWN]:
        print(f"[tfkd] trial {trial_id} failed: {reason}")
    more = len(failures) - FAILURES_SHOWN
    if more > 0:
        print(
            f"[tfkd] {counted(more, 'more trial')} failed; each failed trial's reason is its "
            f"MLflow run's tag `error` and its error.txt under {experiment_path}"
        )


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, float) else str(value)


def _resume_command(args: TuneArgs, name: str | None) -> str:
    """The command that continues sweep `name`: the same flags, its --name, and --resume once
    its results folder exists (an interrupted --resume continues, or starts afresh when Tune
    had saved nothing); before that, the same command again. A run started for another sweep
    (--train-teacher's teacher run: `args.continues`) is continued by that sweep's command."""
    if args.continues:
        return _resume_command(*args.continues)
    argv = [a for a in args.argv if a != "--resume"]
    if args.name is None and name is not None:
        argv += ["--name", name]
    resumable = name is not None and storage.sweep_folder_exists(args.storage, name)
    return " ".join([args.command, *map(shlex.quote, argv), *["--resume"] * resumable])


def interrupted(args: TuneArgs, name: str | None) -> int:
    print(
        f"{args.prog}: interrupted; continue with: {_resume_command(args, name)}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def print_outcome(result: Any, plan: Plan, args: TuneArgs) -> int:
    """The sweep's summary; exit 0 only when every trial ran to its end."""
    if result.interrupted:
        return interrupted(args, plan.name)
    print(
        f"[tfkd] {counted(result.trials, 'trial')}: {result.failed} failed, "
        f"{result.stopped_early} stopped early by ASHA"
    )
    _print_failures(result.failures, result.experiment_path)
    if result.tracking_pending:
        print(
            f"[tfkd] MLflow lacks the last writes of {len(result.tracking_pending)} run(s) "
            "(tracking server unreachable); send them when it is back with: "
            f"{REPLAY_COMMAND} {shlex.quote(result.experiment_path)}"
        )
    for folder in result.tracking_refused:
        print(
            f"[tfkd] MLflow refused some writes of a run; they are kept in {folder}/refused.jsonl"
        )
    if result.best_config is None:
        print(f"{args.prog}: every trial failed; see the trial errors above", file=sys.stderr)
        return EXIT_FAILED
    if not result.complete:
        print(
            f"{args.prog}: {result.failed_by_infrastructure} trial(s) could not be completed "
            f"(see above); retry them with: {_resume_command(args, plan.name)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    document = _best_config_document(result, plan)
    where = _write_best_config(result.experiment_path, document)
    shown = ", ".join(f"{k} {_percent(v)}" for k, v in document["metrics"].items())
    print(f"[tfkd] best trial {result.best_trial_id}: {shown}")
    if result.tied_trial_ids:
        score = _percent((result.best_metrics or {}).get(plan.metric))
        print(
            f"[tfkd] a tie: {counted(len(result.tied_trial_ids), 'other trial')} "
            f"({_some_of(result.tied_trial_ids)}) reached the same {plan.metric} "
            f"{score}; best_config.yaml holds trial {result.best_trial_id}'s, the first of them"
        )
    searched = " ".join(f"--set {k}={v}" for k, v in document["searched"].items())
    print(f"[tfkd] best config: {searched or '(nothing searched)'}")
    print(f"[tfkd] written to {where}")
    return EXIT_OK
