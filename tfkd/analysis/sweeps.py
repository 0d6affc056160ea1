"""A sweep and its trials, read from MLflow or (when MLflow has no such experiment) Ray's folder.

Both sources give the same `Sweep`, so choosing the best configs does not care where it came
from. The full schedule is the sweep's `epochs` tag (the configs' `epochs` in the Ray folder):
a trial that ASHA stopped early never reached it and cannot be chosen, however good its
score looked when it stopped. A trial's score is the metric its sweep ranked on (`Sweep.metric`):
val_accuracy under the holdout protocol, paper_test_accuracy (the test set's maximum over
epochs, so it selects on the test set) for a `--protocol paper` sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkd.analysis.common import typed_config
from tfkd.core import protocol
from tfkd.core.errors import UserError
from tfkd.core.words import counted
from tfkd.sweep.storage import GIVEN_CONFIG_KEY, join
from tfkd.tracking import store

METRIC = protocol.DEFAULT_SWEEP_METRIC  # what a sweep ranked on when nothing says otherwise


def ranking_metric(tags: Mapping[str, str], protocols: Iterable[str] = ()) -> str:
    """The metric a sweep ranked its trials on: its `metric` tag (tfkd tune's --metric); without
    one (the Ray folder, an older sweep) the one tfkd tune picks for its protocol (its `protocol`
    tag, else its trials' configs'), else val_accuracy."""
    if tags.get("metric"):
        return tags["metric"]
    name = tags.get("protocol") or next(iter(protocols), None)
    return protocol.sweep_metric(name, None, fixed=True)[0] if name else METRIC


@dataclass(frozen=True)
class Trial:
    """One trial's config and where it ended (its last reported epoch).

    `score` and `history` are its sweep's ranking metric (`Sweep.metric`): the last value and
    {epoch: value}."""

    trial_id: str
    run_id: str  # "" when read from the Ray folder
    config: dict[str, Any]
    epoch: int
    score: float | None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    failed: bool = False
    stopped_early: bool = False
    history: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A sweep: its name (the Ray folder and MLflow run name), the full schedule, its trials and
    the metric that ranked them (`metric`, each trial's `score`)."""

    name: str
    experiment: str  # the MLflow experiment's name ("" when read from the Ray folder)
    run_id: str
    epochs: int
    tags: dict[str, str]
    trials: tuple[Trial, ...]
    source: str
    status: str = ""  # the sweep run's MLflow status ("" when read from the Ray folder)
    others: tuple[str, ...] = ()  # the other sweeps of the same MLflow experiment, newest first
    metric: str = METRIC

    @property
    def selects_on_test(self) -> bool:
        """Ranked on the test set (a paper-protocol sweep): its best scores are optimistic."""
        return self.metric == protocol.PAPER_SWEEP_METRIC

    @property
    def searched(self) -> str:
        return self.tags.get("search_space", "")


def completed_full_schedule(trial: Trial, epochs: int) -> bool:
    """Ran every epoch of the schedule, was not stopped or failed, and reported its score."""
    return (
        not trial.failed
        and not trial.stopped_early
        and trial.epoch >= epochs
        and trial.score is not None
        and math.isfinite(trial.score)
    )


def full_schedule_scores(sweep: Sweep) -> list[tuple[Trial, float]]:
    """The trials that completed the full schedule, each with its score."""
    return [
        (t, t.score)
        for t in sweep.trials
        if t.score is not None and completed_full_schedule(t, sweep.epochs)
    ]


def full_schedule_trials(sweep: Sweep) -> list[Trial]:
    return [t for t, _ in full_schedule_scores(sweep)]


def ranked(sweep: Sweep, top: int) -> list[Trial]:
    """The best `top` full-schedule trials by score, the sweep's metric (ties: trial id)."""
    full = full_schedule_scores(sweep)
    if not full:
        raise UserError(
            f"sweep {sweep.name!r} has no finished trial that ran the full schedule and reported "
            f"{sweep.metric} ({sweep.epochs} epochs; {counted(len(sweep.trials), 'trial')}, "
            f"{sum(t.stopped_early or t.epoch < sweep.epochs for t in sweep.trials)} stopped "
            "early or unfinished); let the sweep finish or resume it with tfkd tune --resume"
        )
    best = sorted(full, key=lambda scored: (-scored[1], scored[0].trial_id))[:top]
    return [trial for trial, _ in best]


# ---------------------------------------------------------------- MLflow


def _number(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if value is not None else None


def trial_from_run(run: Any, metric: str = METRIC, mlflow_client: Any = None) -> Trial:
    """A child run as a Trial scored on `metric`; with a client, also that metric's history."""
    metrics, tags = run.data.metrics, run.data.tags
    history = store.metric_history(mlflow_client, run.info.run_id, metric) if mlflow_client else {}
    return Trial(
        trial_id=tags.get("tfkd.ray_trial_id", run.info.run_id),
        run_id=run.info.run_id,
        config=typed_config(run.data.params, f"MLflow run {run.info.run_id}"),
        epoch=int(metrics.get("epoch", 0)),
        score=_number(metrics, metric),
        val_accuracy=_number(metrics, "val_accuracy"),
        test_accuracy=_number(metrics, "test_accuracy"),
        failed=run.info.status == "FAILED",
        stopped_early=tags.get("stopped_early") == "true",
        history=history,
    )


def _schedule(tags: Mapping[str, str], trials: tuple[Trial, ...]) -> int:
    """The sweep's `epochs` tag; else the longest schedule its configs ask for."""
    if str(tags.get("epochs", "")).isdigit():
        return int(tags["epochs"])
    return max((int(t.config["epochs"]) for t in trials), default=0)


def sweep_from_run(
    mlflow_client: Any, parent: Any, with_history: bool = False, others: tuple[str, ...] = ()
) -> Sweep:
    """The sweep whose parent run is `parent`, with all its trial runs."""
    experiment = parent.info.experiment_id
    children = store.runs_of_kind(
        mlflow_client, [experiment], store.TRIAL, parent=parent.info.run_id
    )
    history_client = mlflow_client if with_history else None
    tags = dict(parent.data.tags)
    metric = ranking_metric(
        tags, (c.data.params["protocol"] for c in children if "protocol" in c.data.params)
    )
    trials = tuple(trial_from_run(run, metric, history_client) for run in children)
    return Sweep(
        name=store.run_name(parent),
        experiment=store.experiment_name(mlflow_client, experiment),
        run_id=parent.info.run_id,
        epochs=_schedule(tags, trials),
        tags=tags,
        trials=trials,
        source="mlflow",
        status=parent.info.status,
        others=others,
        metric=metric,
    )


def _chosen_parent(parents: list, name: str | None) -> Any | None:
    """The sweep run named `name`; without a name the newest FINISHED one, else the newest."""
    if name is not None:
        return next((p for p in parents if store.run_name(p) == name), None)
    finished = [p for p in parents if p.info.status == store.FINISHED]
    return (finished or parents or [None])[0]


def sweep_from_mlflow(experiment: str, sweep: str | None, uri: str, storage: str) -> Sweep | None:
    """The experiment's sweep run named `sweep` (else its newest finished sweep), or None.

    Several sweeps of one mode, dataset and model share an experiment as separate sweep runs.
    """
    mlflow_client = store.client(uri)
    experiment_id = store.experiment_id(mlflow_client, experiment)
    if experiment_id is None:
        return None
    parents = store.runs_of_kind(mlflow_client, [experiment_id], store.SWEEP)  # newest first
    chosen = _chosen_parent(parents, sweep)
    if chosen is None:
        return None
    others = tuple(store.run_name(p) for p in parents if p.info.run_id != chosen.info.run_id)
    return sweep_from_run(mlflow_client, chosen, others=others)


# ---------------------------------------------------------------- the Ray results folder


def _read_text(fs: Any, path: str) -> str | None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def _trial_from_folder(fs: Any, folder: str) -> Trial | None:
    """A trial folder: params.json (its config) and result.json (one JSON line per epoch),
    scored on the metric its config's protocol ranks on (the folder keeps no sweep tags)."""
    params = _read_text(fs, f"{folder}/params.json")
    if params is None:
        return None
    config = json.loads(params)
    config = typed_config(config.get(GIVEN_CONFIG_KEY, config), f"{folder}/params.json")
    metric = ranking_metric({}, [config["protocol"]])
    lines = (_read_text(fs, f"{folder}/result.json") or "").splitlines()
    results = [json.loads(line) for line in lines if line.strip()]
    last = results[-1] if results else {}
    errored = any(
        _read_text(fs, f"{folder}/{name}") is not None for name in ("error.txt", "error.pkl")
    )
    return Trial(
        trial_id=str(last.get("trial_id", folder.rsplit("/", 1)[-1])),
        run_id="",
        config=config,
        epoch=int(last.get("epoch", 0)),
        score=last.get(metric),
        val_accuracy=last.get("val_accuracy"),
        test_accuracy=last.get("test_accuracy"),
        failed=errored,
        history={int(r["epoch"]): float(r[metric]) for r in results if metric in r},
    )


def sweep_from_ray_folder(
    experiment: str, sweep: str | None, uri: str, storage: str
) -> Sweep | None:
    """The sweep in `<storage>/<sweep>` (Ray Tune's experiment folder), or None if absent.

    Without a sweep name the experiment's name is tried (sweeps named before names were unique).
    """
    import pyarrow.fs

    name = sweep or experiment
    root = join(storage, name)
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(root if "://" in root else _absolute(root))
        entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return None
    folders = sorted(e.path for e in entries if e.type == pyarrow.fs.FileType.Directory)
    trials = tuple(t for t in (_trial_from_folder(fs, f) for f in folders) if t is not None)
    if not trials:
        return None
    return Sweep(
        name=name,
        experiment="",
        run_id="",
        epochs=_schedule({}, trials),
        tags={},
        trials=trials,
        source="ray",
        metric=ranking_metric({}, (t.config["protocol"] for t in trials)),
    )


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


SweepSource = Callable[[str, "str | None", str, str], "Sweep | None"]
SOURCES: tuple[SweepSource, ...] = (sweep_from_mlflow, sweep_from_ray_folder)


def load(experiment: str, uri: str, storage: str, sweep: str | None = None) -> Sweep:
    """The sweep `sweep` of the experiment (default: its newest finished sweep), from the first
    source that has it (MLflow, then the Ray folder)."""
    for source in SOURCES:
        found = source(experiment, sweep, uri, storage)
        if found is not None:
            return found
    what = f"no sweep {sweep or experiment!r}" + (f" in experiment {experiment!r}" if sweep else "")
    raise UserError(
        f"{what}: no MLflow experiment of that name with a sweep run at {uri}, and no trials in "
        f"{join(storage, sweep or experiment)}; check --experiment, --sweep, --mlflow-uri and "
        "--storage"
    )


def describe(sweep: Sweep) -> str:
    """Which sweep an analysis command read, for the person at the terminal."""
    where = (
        f"MLflow experiment {sweep.experiment!r}, run {sweep.run_id}, {sweep.status}"
        if sweep.source == "mlflow"
        else "the Ray results folder"
    )
    text = f"reading sweep {sweep.name} ({where}; {counted(len(sweep.trials), 'trial')})"
    if sweep.others:
        shown = ", ".join(sweep.others[:3]) + (", ..." if len(sweep.others) > 3 else "")
        text += (
            f"; the experiment has {len(sweep.others)} other sweep(s): {shown} "
            "(pick one with --sweep NAME)"
        )
    return text
