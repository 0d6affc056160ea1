"""The writes an outbox sends, by name: each op is a JSON object whose "op" picks its function.

Every function takes the run the outbox writes to (`BoundRun`), an MlflowClient and the op. Each
is idempotent given the run it resolved, so sending a write again after a crash between "sent"
and "counted" does no harm. The first op of an outbox opens its run ("open": a trial's run,
found again by its trial id or created; "use_run": a sweep's existing run).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkd.tracking import store
from tfkd.tracking.teachers import move_best_alias


@dataclass
class BoundRun:
    """The run an outbox writes to, as its ops find it and leave it."""

    uri: str
    folder: Path  # the outbox's folder: artifact files wait there in stash sub-folders
    run_id: str | None = None
    logged_steps: set[int] = field(default_factory=set)  # epochs the run already has
    opened: threading.Event = field(default_factory=threading.Event)  # set once "open" ran

    def stashed(self, op: Mapping[str, Any], name: str) -> str:
        """The local copy of a file an op logs."""
        return str(self.folder / op["stash"] / name)


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of `metrics` as floats (MLflow metrics are numbers)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def log_metrics(client, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """The numeric `metrics` at `step`, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


def _tag_list(tags: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def _open_run(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Find the trial's run under its sweep run (or create it), mark it RUNNING, tag it."""
    found = store.trial_run(client, op["experiment_id"], op["parent_run_id"], op["trial_id"])
    if found is not None:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(op["experiment_id"], run_name=op["name"], tags=op["tags"])
        run_id = run_id.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in sorted(op["params"].items())]
        client.log_batch(run_id, params=params)
    client.log_batch(run_id, tags=_tag_list(op["run_tags"]))
    run.run_id = run_id
    run.logged_steps = {int(m.step) for m in client.get_metric_history(run_id, "epoch")}
    run.opened.set()


def _use_run(run: BoundRun, client, op: dict[str, Any]) -> None:
    """The sweep's own outbox writes to its existing parent run."""
    run.run_id = op["run_id"]


def _log_epoch(run: BoundRun, client, op: dict[str, Any]) -> None:
    """An epoch's metrics, unless the run already has that epoch."""
    if op["step"] in run.logged_steps:
        return
    log_metrics(client, run.run_id, op["metrics"], step=op["step"])
    run.logged_steps.add(op["step"])


def _log_other_metrics(run: BoundRun, client, op: dict[str, Any]) -> None:
    log_metrics(client, run.run_id, op["metrics"], step=op["step"])


def _set_tags(run: BoundRun, client, op: dict[str, Any]) -> None:
    client.log_batch(run.run_id, tags=_tag_list(op["tags"]))


def _log_artifact(run: BoundRun, client, op: dict[str, Any]) -> None:
    client.log_artifact(run.run_id, run.stashed(op, op["name"]), op["artifact_path"])


def _register(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Log weights and register them as a version of the teacher model (with an alias)."""
    _log_artifact(run, client, op)
    name = op["model_name"]
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        try:
            client.create_registered_model(name)
        except Exception:  # another trial created it first
            pass
    version = _registered_version(client, name, run.run_id, op["artifact_path"])
    if version is None:
        version = client.create_model_version(
            name,
            source=f"runs:/{run.run_id}/{op['artifact_path']}",
            run_id=run.run_id,
            tags={**op["version_tags"], "artifact_path": op["artifact_path"]},
        )
    if op["alias"]:
        client.set_registered_model_alias(name, op["alias"], version.version)
    if op["kind"] == "final":
        move_best_alias(client, name)


def _registered_version(client, name: str, run_id: str, artifact_path: str):
    """The version an earlier try of the same registration created, if any (a retry after a
    crash between "sent" and "counted" must not make a second version)."""
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.tags.get("artifact_path") == artifact_path:
            return version
    return None


def _terminate(run: BoundRun, client, op: dict[str, Any]) -> None:
    client.set_terminated(run.run_id, status=op["status"])


def _close_trial(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Close a trial's run its trial left open (the sweep's outbox, on the driver's word)."""
    trial = store.trial_run(client, op["experiment_id"], run.run_id, op["trial_id"])
    if trial is None or trial.info.status != "RUNNING":
        return
    if op["stopped_early"] is not None and "stopped_early" not in trial.data.tags:
        client.set_tag(trial.info.run_id, "stopped_early", str(op["stopped_early"]).lower())
        if op["stopped_early"]:
            client.set_tag(trial.info.run_id, "stopped_by", "scheduler (ASHA)")
    client.set_terminated(trial.info.run_id, status=op["status"])


def _finish_sweep(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Record the best trial on the sweep run, close child runs left open, close the sweep run."""
    if op["best_trial_id"]:
        client.set_tag(run.run_id, "best_trial_id", op["best_trial_id"])
        child = store.trial_run(client, op["experiment_id"], run.run_id, op["best_trial_id"])
        if child is not None:
            client.set_tag(run.run_id, "best_run_id", child.info.run_id)
        log_metrics(client, run.run_id, op["best_metrics"], step=0)
    ended = set(op.get("ended", ()))
    for child in store.child_runs(client, op["experiment_id"], run.run_id):
        if child.info.status == "RUNNING":
            trial_id = child.data.tags.get(store.TRIAL_TAG)
            status = "FINISHED" if trial_id in ended else "KILLED"
            client.set_terminated(child.info.run_id, status=status)
    client.set_terminated(run.run_id, status=op["status"])


Operation = Callable[[BoundRun, Any, dict[str, Any]], None]
OPERATIONS: dict[str, Operation] = {
    "open": _open_run,
    "use_run": _use_run,
    "epoch": _log_epoch,
    "metrics": _log_other_metrics,
    "tags": _set_tags,
    "artifact": _log_artifact,
    "register": _register,
    "terminate": _terminate,
    "close_trial": _close_trial,
    "finish_sweep": _finish_sweep,
}
OPENING_OPS = ("open", "use_run")  # the ops that bind an outbox to its run


def send(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Carry out one op on `run`."""
    OPERATIONS[op["op"]](run, client, op)
