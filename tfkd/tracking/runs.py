"""A sweep's run: the parent run of a sweep (or reproduction set), its lifecycle and its files.

Every write goes through the sweep's `Outbox`, so the driver never waits on the server; each
trial's own run is tfkd.tracking.trials.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkd.core.errors import UserError
from tfkd.tracking import store
from tfkd.tracking.ops import log_metrics, numeric
from tfkd.tracking.outbox import END_OF_SWEEP_GRACE_S, OUTBOX_DIR, Outbox
from tfkd.tracking.teachers import (
    registered_model_name,
)

# of the best trial, as best_<name> (paper_test_accuracy: trials under the paper's protocol)
SWEEP_METRICS = ("val_accuracy", "test_accuracy", "paper_test_accuracy")


@dataclass(frozen=True)
class TrackingContext:
    """What a trial needs to log into its sweep; small and picklable (travels to every node)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str = ""  # the sweep run's name: a baseline's teacher run, tagged on its versions
    registered_model: str = ""  # baseline sweeps register their weights as teachers
    snapshot_epochs: tuple[int, ...] = ()
    child_kind: str = store.TRIAL  # the tfkd.kind tag of the child runs ("reproduction", ...)
    child_tags: tuple[tuple[str, str], ...] = ()  # extra tags of every child run
    outbox_root: str = ""  # local folder for the sweep run's unsent writes (the experiment's)
    system_metrics: bool = False  # each trial logs CPU, memory (and GPU) use as system/...
    session: int = 1  # the sweep's first start is session 1, each --resume the next
    grace_s: float = END_OF_SWEEP_GRACE_S  # the sweep's end waits this long for a down server
    resumed_status: str = ""  # on --resume, the sweep run's status before this session

    @property
    def flush_s(self) -> float:
        """How long a trial's end, and the sweep run's last writes, wait for the server."""
        return self.grace_s / 2


# ---------------------------------------------------------------- the sweep (parent run)


def start_sweep(
    uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    register_teachers: bool,
    dataset: str,
    model: str,
    snapshot_epochs: tuple[int, ...] = (),
    resume: bool = False,
    kind: str = store.SWEEP,
    child_kind: str = store.TRIAL,
    child_tags: Mapping[str, str] | None = None,
    outbox_root: str = "",
    system_metrics: bool = False,
    grace_s: float | None = None,
) -> TrackingContext:
    """Create (or, on --resume, find again) the sweep's parent run."""
    experiment_id = store.ensure_experiment(uri, experiment)
    client = store.mlflow_client(uri)
    parent = store.newest_run_named(client, experiment_id, kind, run_name) if resume else None
    session, resumed_status = 1, ""
    if parent is None:
        all_tags = {
            **tags,
            "mlflow.runName": run_name,
            store.KIND_TAG: kind,
            store.SESSION_TAG: session,
            "git_commit": store.git_commit(),
        }
        parent = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={k: str(v) for k, v in all_tags.items() if v != ""},
        )
    else:
        session = int(parent.data.tags.get(store.SESSION_TAG, 1)) + 1
        resumed_status = parent.info.status
        client.set_tag(parent.info.run_id, store.SESSION_TAG, str(session))
        client.update_run(parent.info.run_id, status="RUNNING")
    return TrackingContext(
        uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        sweep_name=run_name,
        registered_model=registered_model_name(dataset, model) if register_teachers else "",
        snapshot_epochs=tuple(snapshot_epochs),
        child_kind=child_kind,
        child_tags=tuple(sorted((child_tags or {}).items())),
        outbox_root=outbox_root,
        system_metrics=system_metrics,
        session=session,
        grace_s=END_OF_SWEEP_GRACE_S if grace_s is None else grace_s,
        resumed_status=resumed_status,
    )


@contextlib.contextmanager
def sweep_run(
    uri: str | None, experiment: str, run_name: str, tags: Mapping[str, str], **options: Any
) -> Iterator[TrackingContext | None]:
    """The parent run of a sweep (or reproduction set) for the duration of a block.

    Yields None when `uri` is None (no tracking). `options` go to `start_sweep`. When the block
    raises (an interrupt, a crash) the run is marked KILLED; otherwise the block has finished it
    (tfkd.sweep.tuner's run_sweep and run_configs do).
    """
    if uri is None:
        yield None
        return
    context = start_sweep(uri, experiment, run_name, tags, **options)
    try:
        yield context
    except BaseException:
        finish_sweep(context, None, None, status="KILLED")
        raise


def check_new_sweep(uri: str, experiment: str, run_name: str, resume: bool) -> None:
    """A new sweep must not take the name of a sweep run its experiment already has, unless that
    run ended before its first trial (a start that failed: its name is free for a retry)."""
    if resume:
        return
    client = store.client(uri)  # None: a SQLite store that does not exist yet holds no runs
    found = client.get_experiment_by_name(experiment) if client else None
    if found is None:
        return
    named = store.newest_run_named(client, found.experiment_id, store.SWEEP, run_name)
    if named is None or _ended_before_its_first_trial(client, found.experiment_id, named):
        return
    raise UserError(
        f"--name {run_name}: MLflow experiment {experiment!r} already has a sweep of that "
        "name; continue it with --resume or choose another --name"
    )


def _ended_before_its_first_trial(client: Any, experiment_id: str, run: Any) -> bool:
    return run.info.status in ("KILLED", "FAILED") and not store.child_runs(
        client, experiment_id, run.info.run_id
    )


def log_sweep_metrics(context: TrackingContext | None, metrics: Mapping[str, float]) -> None:
    """Metrics of the sweep run itself, written at once (not through the outbox)."""
    if context is not None:
        log_metrics(store.mlflow_client(context.uri), context.parent_run_id, metrics, step=0)


def best_of_sweep(best_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sweep-level metrics of its best trial (not Ray's bookkeeping: pid, iterations...)."""
    metrics = best_metrics or {}
    return {f"best_{k}": metrics[k] for k in SWEEP_METRICS if k in metrics}


def finish_sweep(
    context: TrackingContext | None,
    best_trial_id: str | None,
    best_metrics: Mapping[str, Any] | None,
    status: str = "FINISHED",
    verdicts: Mapping[str, Mapping[str, Any]] | None = None,
) -> bool:
    """Record the best trial on the parent run, end the trials' runs, close the parent.

    `verdicts` are how the driver saw each trial end ({trial id: {"status", "stopped_early"}});
    a run of a trial without one that is still open ends KILLED (tfkd.tracking.ops).

    Sent through the sweep's outbox: False when the tracking server did not take it in time
    (it stays on disk for `replay`).
    """
    if context is None:
        return True
    if context.resumed_status == "FINISHED" and status == "KILLED":
        status = "FINISHED"  # every trial had ended: a resume interrupted or failed keeps that
    box = _sweep_box(context)
    box.put(
        {
            "op": "finish_sweep",
            "experiment_id": context.experiment_id,
            "best_trial_id": best_trial_id,
            "best_metrics": numeric(best_of_sweep(best_metrics)),
            "status": status,
            "verdicts": {t: dict(v) for t, v in (verdicts or {}).items()},
            "session": context.session,
        }
    )
    del _SWEEP_BOXES[context.parent_run_id]
    return box.close(context.flush_s)


def sweep_outbox(context: TrackingContext) -> Path:
    """Where the sweep run's own writes wait: beside its trials in a local results folder, else
    in the user's cache folder (never the temp folder, which may be emptied before a replay)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfkd"
    root = Path(context.outbox_root or cache)
    return root / OUTBOX_DIR / context.parent_run_id


_SWEEP_BOXES: dict[str, Outbox] = {}  # parent run id -> the driver's outbox for that sweep


def _sweep_box(context: TrackingContext) -> Outbox:
    """The driver's outbox of a sweep run, opened on first use."""
    box = _SWEEP_BOXES.get(context.parent_run_id)
    if box is None:
        box = Outbox(sweep_outbox(context), context.uri)
        box.put({"op": "use_run", "run_id": context.parent_run_id})
        _SWEEP_BOXES[context.parent_run_id] = box
    return box


def log_sweep_files(
    context: TrackingContext | None, metrics: Mapping[str, float], files: Mapping[str, bytes]
) -> None:
    """The sweep run's counts and its comparison files (trials table, plot) as artifacts.

    Queued in the sweep's outbox, like every write of the driver: sent with finish_sweep.
    """
    if context is None:
        return
    box = _sweep_box(context)
    box.put({"op": "metrics", "step": 0, "metrics": numeric(metrics)})
    with tempfile.TemporaryDirectory(prefix="tfkd-sweep-report-") as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
            box.put(
                {"op": "artifact", "name": name, "artifact_path": None},
                files={name: Path(folder) / name},
            )


def tag_sweep(context: TrackingContext | None, tags: Mapping[str, Any]) -> None:
    """Tags of the sweep run, queued in its outbox (sent with finish_sweep, or by `replay`)."""
    if context is not None:
        _sweep_box(context).put({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})


def close_trial_run(
    context: TrackingContext | None, trial_id: str, status: str, stopped_early: bool | None = None
) -> None:
    """Close a trial's run that its trial left open (driver side, through the sweep's outbox)."""
    if context is not None:
        _sweep_box(context).put(
            {
                "op": "close_trial",
                "experiment_id": context.experiment_id,
                "trial_id": trial_id,
                "status": status,
                "stopped_early": stopped_early,
                "session": context.session,
            }
        )
