"""The writes an outbox sends, by name: each op is a JSON object whose "op" picks its function.

Every function takes the run the outbox writes to (`BoundRun`), an MlflowClient and the op. Each
is idempotent given the run it resolved, so sending a write again after a crash between "sent"
and "counted" does no harm. The first op of an outbox opens its run ("open": a trial's run,
found again by its trial id or created; "use_run": a sweep's existing run).

A trial's run ends in its true state whatever order the trial's outbox and its sweep's outbox
arrive in. The driver's word on how a trial ended (a *verdict*: FINISHED with stopped_early, or
FAILED, from Tune; KILLED for a trial an interrupted sweep left unfinished) is kept on the sweep
run as well as applied to the trial's run, and every status write carries its sweep session
(1, then one more per --resume):
* "open" re-opens a run (RUNNING) only for a session later than the one that closed it, and a
  run it creates or finds after the driver's verdict of its session ends as that verdict says;
* FINISHED and FAILED verdicts and the trial's own "terminate" always apply; KILLED is the
  weakest end: it closes a RUNNING run and never replaces FINISHED or FAILED, which the trial's
  final writes arriving later set over it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.parse
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

    @property
    def bound_id(self) -> str:
        """The run's id, for the ops after an opening one (the outbox sends none before)."""
        assert self.run_id is not None, "no run is open yet"
        return self.run_id

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
    """Find the trial's run under its sweep run (or create it), tag it, and mark it RUNNING,
    unless its session already ended it (then it keeps its end, or takes the driver's)."""
    found = store.trial_run(client, op["experiment_id"], op["parent_run_id"], op["trial_id"])
    if found is not None:
        run_id = found.info.run_id
    else:
        run_id = client.create_run(op["experiment_id"], run_name=op["name"], tags=op["tags"])
        run_id = run_id.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in sorted(op["params"].items())]
        client.log_batch(run_id, params=params)
    client.log_batch(run_id, tags=_tag_list(_with_earlier_nodes(op["run_tags"], found)))
    session = op.get("session", 0)
    verdict = _verdict(client, op["parent_run_id"], op["trial_id"])
    if verdict is not None and verdict.get("session", 0) >= session:
        _close_as(client, client.get_run(run_id), verdict)  # the driver's word came first
    elif found is None or found.info.status == "RUNNING" or _status_session(found) < session:
        _set_status(client, run_id, "RUNNING", session)
    run.run_id = run_id
    run.logged_steps = {int(m.step) for m in client.get_metric_history(run_id, "epoch")}
    run.opened.set()


def _with_earlier_nodes(run_tags: Mapping[str, str], found) -> dict[str, str]:
    """`run_tags` with the run's earlier ray_nodes kept in front: an attempt that died before
    its first checkpoint left its node only in the run (the next attempt's record lacks it)."""
    tags = dict(run_tags)
    earlier = found.data.tags.get("ray_nodes", "") if found is not None else ""
    if "ray_nodes" in tags and earlier:
        tags["ray_nodes"] = ",".join(joined_nodes(earlier.split(","), tags["ray_nodes"].split(",")))
    return tags


def joined_nodes(earlier: list[str], recorded: list[str]) -> list[str]:
    """The nodes of a run's earlier attempts followed by an attempt's record, where the record's
    start repeats the end of the earlier list (restored from a checkpoint that knew them)."""
    recorded = [node for node in recorded if node]
    overlap = next(
        (n for n in range(min(len(earlier), len(recorded)), 0, -1) if earlier[-n:] == recorded[:n]),
        0,
    )
    return [*earlier, *recorded[overlap:]]


def _status_session(found) -> int:
    """The session whose write last set a run's status (0: written before sessions)."""
    return int(found.data.tags.get(store.STATUS_SESSION_TAG, 0))


def _set_status(client, run_id: str, status: str, session: int) -> None:
    client.set_tag(run_id, store.STATUS_SESSION_TAG, str(session))
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def _verdict(client, parent_run_id: str, trial_id: str) -> dict[str, Any] | None:
    """The driver's word on how a trial ended, kept on its sweep run (None: not given yet)."""
    saved = client.get_run(parent_run_id).data.tags.get(store.VERDICT_PREFIX + trial_id)
    return json.loads(saved) if saved else None


def _record_verdicts(client, parent_run_id: str, verdicts: Mapping[str, Mapping]) -> None:
    tags = {store.VERDICT_PREFIX + t: json.dumps(v, sort_keys=True) for t, v in verdicts.items()}
    if tags:
        client.log_batch(parent_run_id, tags=_tag_list(tags))


def _close_as(client, trial, verdict: Mapping[str, Any]) -> None:
    """End a trial's run as the driver saw its trial end: KILLED only closes a RUNNING run;
    FINISHED (and stopped_early, unless the trial said it) and FAILED always apply."""
    status = verdict["status"]
    if status == "KILLED" and trial.info.status != "RUNNING":
        return
    stopped = verdict.get("stopped_early")
    if stopped is not None and "stopped_early" not in trial.data.tags:
        tags = {"stopped_early": str(stopped).lower()}
        if stopped:
            tags["stopped_by"] = "scheduler (ASHA)"
        client.log_batch(trial.info.run_id, tags=_tag_list(tags))
    if trial.info.status != status:
        _set_status(client, trial.info.run_id, status, verdict.get("session", 0))


def _use_run(run: BoundRun, client, op: dict[str, Any]) -> None:
    """The sweep's own outbox writes to its existing parent run."""
    run.run_id = op["run_id"]


def _log_epoch(run: BoundRun, client, op: dict[str, Any]) -> None:
    """An epoch's metrics, unless the run already has that epoch."""
    if op["step"] in run.logged_steps:
        return
    log_metrics(client, run.bound_id, op["metrics"], step=op["step"])
    run.logged_steps.add(op["step"])


def _log_other_metrics(run: BoundRun, client, op: dict[str, Any]) -> None:
    log_metrics(client, run.bound_id, op["metrics"], step=op["step"])


def _set_tags(run: BoundRun, client, op: dict[str, Any]) -> None:
    client.log_batch(run.bound_id, tags=_tag_list(op["tags"]))


def _log_artifact(run: BoundRun, client, op: dict[str, Any]) -> None:
    source = run.stashed(op, op["name"])
    if not _linked_into_local_store(client, run.bound_id, source, op["artifact_path"]):
        client.log_artifact(run.bound_id, source, op["artifact_path"])


def _linked_into_local_store(client, run_id: str, source: str, artifact_path: str | None) -> bool:
    """A file logged to a run whose artifacts are a local folder (a SQLite store's mlartifacts)
    becomes a hard link there, which writes no bytes (MLflow would copy them); False where its
    artifacts are elsewhere (a server, another file system): MLflow uploads it."""
    where = urllib.parse.urlparse(client.get_run(run_id).info.artifact_uri)
    if where.scheme not in ("", "file"):
        return False
    folder = Path(urllib.parse.unquote(where.path)) / (artifact_path or "")
    target = folder / Path(source).name
    link = folder / f".{target.name}.{os.getpid()}.link"
    try:
        if target.exists() and target.samefile(source):
            return True  # a retried write: the link is there
        folder.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        os.link(source, link)
        os.replace(link, target)
    except OSError:
        link.unlink(missing_ok=True)
        return False
    return True


def _register(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Log weights and register them as a version of the teacher model (with an alias)."""
    _log_artifact(run, client, op)
    name = op["model_name"]
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        try:
            client.create_registered_model(name)
        except Exception:  # another trial created it first
            pass
    version = _registered_version(client, name, run.bound_id, op["artifact_path"])
    if version is None:
        version = client.create_model_version(
            name,
            source=f"runs:/{run.bound_id}/{op['artifact_path']}",
            run_id=run.bound_id,
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
    """The trial's own end (FINISHED at its last epoch, FAILED): it always applies."""
    _set_status(client, run.bound_id, op["status"], op.get("session", 0))


def _verdict_of(op: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": op["status"],
        "stopped_early": op["stopped_early"],
        "session": op.get("session", 0),
    }


def _close_trial(run: BoundRun, client, op: dict[str, Any]) -> None:
    """The driver's word on a trial that ended (the sweep's outbox): kept on the sweep run and
    applied to the trial's run (if it exists yet: else its "open" applies it)."""
    verdict = _verdict_of(op)
    _record_verdicts(client, run.bound_id, {op["trial_id"]: verdict})
    trial = store.trial_run(client, op["experiment_id"], run.bound_id, op["trial_id"])
    if trial is not None:
        _close_as(client, trial, verdict)


def _finish_sweep(run: BoundRun, client, op: dict[str, Any]) -> None:
    """Record the best trial on the sweep run, end every trial's run as the driver saw it end
    (a run of a trial it has no word on and still RUNNING: KILLED), close the sweep run."""
    if op["best_trial_id"]:
        client.set_tag(run.bound_id, "best_trial_id", op["best_trial_id"])
        child = store.trial_run(client, op["experiment_id"], run.bound_id, op["best_trial_id"])
        if child is not None:
            client.set_tag(run.bound_id, "best_run_id", child.info.run_id)
        log_metrics(client, run.bound_id, op["best_metrics"], step=0)
    session = op.get("session", 0)
    verdicts = op.get("verdicts") or {t: {"status": "FINISHED"} for t in op.get("ended", ())}
    verdicts = {t: {"stopped_early": None, **v, "session": session} for t, v in verdicts.items()}
    _record_verdicts(client, run.bound_id, verdicts)
    left_open = {"status": "KILLED", "session": session}
    for child in store.child_runs(client, op["experiment_id"], run.bound_id):
        _close_as(client, child, verdicts.get(child.data.tags.get(store.TRIAL_TAG), left_open))
    client.set_terminated(run.bound_id, status=op["status"])


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
