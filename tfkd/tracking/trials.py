"""A trial's run: the child of its sweep's run, written from inside the trial.

Trials log from inside (so it works when they run on other nodes against a tracking server); a
trial that restarts finds its run by its trial id and keeps logging into the same run. Every
write goes through the trial's `Outbox`, so training never waits on the server.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from tfkd.core import checkpoint
from tfkd.tracking import store, system_metrics
from tfkd.tracking.ops import numeric
from tfkd.tracking.outbox import Outbox
from tfkd.tracking.runs import TrackingContext
from tfkd.tracking.teachers import (
    BEST_ARTIFACT,
    SNAPSHOT_ARTIFACT,
    SWEEP_RUN_ID_TAG,
    TEACHER_ARTIFACT,
    TEACHER_RUN_TAG,
    ranking_tags,
)


class TrialProgress(Protocol):
    """What a trial brings to its run: the record its checkpoints carry (the sweep's
    TrialRecord). A restored trial has epochs, a best epoch and nodes already."""

    history: list[dict[str, Any]]  # metrics of every epoch trained so far
    best_epoch: int  # 0 before the first epoch
    best_accuracy: float
    best_metric: str  # what chose the best epoch: val_accuracy, test_accuracy (paper) or
    nodes: list[str]  # the Ray nodes that ran the trial, in order

    @property
    def best_weights(self) -> Path: ...


class NullTracker:
    """Used when a sweep is not tracked; every hook does nothing."""

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str, best: bool) -> None: ...
    def on_finish(self, metrics: Mapping[str, Any]) -> bool:
        return True

    def on_stopped(self) -> bool:
        return True

    def on_failed(self, error: BaseException) -> bool:
        return True


class TrialTracker:
    """The child run of one trial: params, per-epoch metrics, artifacts, status, teachers.

    Every write goes through the trial's `Outbox`: training never waits on the tracking server.
    A restored trial hands in its record (`TrialProgress`): the epochs it already trained are
    logged if the run lacks them (and never twice), and its best weights are the ones uploaded.
    """

    def __init__(
        self,
        context: TrackingContext,
        config: Mapping[str, Any],
        trial_id: str,
        trial_name: str,
        record: TrialProgress,
        outbox_dir: str | os.PathLike,
        flush_seconds: float = 30.0,
    ) -> None:
        self.context = context
        self.config = dict(config)
        self.record = record
        self.flush_seconds = flush_seconds
        self.closed = False
        self.outbox = Outbox(outbox_dir, context.uri)
        self.outbox.put(self._open_op(trial_id, trial_name))
        best_so_far = float("-inf")
        for metrics in record.history:  # epochs trained before a restart, if the run lacks them
            value = metrics.get(record.best_metric) if record.best_metric else None
            number = value if isinstance(value, (int, float)) else float("-inf")
            improved = number > best_so_far
            best_so_far = max(best_so_far, number)
            self._put_epoch(metrics, improved)
        self.system_monitor = None
        if context.system_metrics:  # once the outbox has opened the run
            threading.Thread(target=self._start_system_metrics, daemon=True).start()

    def _open_op(self, trial_id: str, trial_name: str) -> dict[str, Any]:
        """The write that finds (or creates) the trial's run, with its tags and params."""
        context, config, nodes = self.context, self.config, self.record.nodes
        tags = {
            "mlflow.parentRunId": context.parent_run_id,
            store.TRIAL_TAG: trial_id,
            store.KIND_TAG: context.child_kind,
            "mode": config["mode"],
            "model": config["model"],
            "dataset": config["dataset"],
            "teacher": config.get("teacher", ""),
            "protocol": config.get("protocol", "holdout"),
            **dict(context.child_tags),
        }
        return {
            "op": "open",
            "experiment_id": context.experiment_id,
            "parent_run_id": context.parent_run_id,
            "trial_id": trial_id,
            "session": context.session,
            "name": trial_name,
            "tags": tags,
            "params": {k: str(v) for k, v in config.items()},
            # which Ray node ran (or resumed) the trial: the latest, and all in order
            "run_tags": {"ray_node_id": nodes[-1] if nodes else "", "ray_nodes": ",".join(nodes)},
        }

    def _put_epoch(self, metrics: Mapping[str, Any], best: bool) -> None:
        """The epoch's metrics, with best_epoch_<metric> when it is a new best: one write per
        epoch, which the run takes once however often a restarted trial sends it again."""
        epoch = int(metrics["epoch"])
        values = numeric(metrics)
        # the trial's best epoch (its weights are best_checkpoint; every epoch's reported_epoch
        # metric names it too); the sweep run's best_* metrics are those of its best trial.
        # Without a validation split (no best_metric) the final epoch is reported.
        metric = self.record.best_metric
        if best and metric and metric in values:
            values[f"best_epoch_{metric}"] = values[metric]
        self.outbox.put({"op": "epoch", "step": epoch, "metrics": values})

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str, best: bool) -> None:
        """Queue the epoch's metrics (and new best, snapshot, teacher registrations)."""
        epoch = int(metrics["epoch"])
        self._put_epoch(metrics, best)
        if not self.context.registered_model:
            return
        # what the version may be ranked on (its protocol's choosing metric; never train accuracy)
        measured = {
            **{k: metrics[k] for k in ("val_accuracy",) if k in metrics},
            **ranking_tags(self.config.get("protocol", "holdout"), metrics),
        }
        if epoch in self.context.snapshot_epochs:
            tags = {"kind": "snapshot", "epoch": epoch, **measured}
            self._put_registration(checkpoint_dir, f"{SNAPSHOT_ARTIFACT}/epoch-{epoch}", tags)
        if epoch == int(self.config["epochs"]):
            tags = {"kind": "final", "epoch": epoch, **measured}
            self._put_registration(checkpoint_dir, TEACHER_ARTIFACT, tags)

    def _put_registration(self, checkpoint_dir: str, artifact_path: str, tags: dict) -> None:
        """Register weights as a teacher version, tagged with the teacher run that made them
        (a run's snapshots and final weights are found together by these tags)."""
        context = self.context
        tags = {
            **tags,
            TEACHER_RUN_TAG: context.sweep_name,
            SWEEP_RUN_ID_TAG: context.parent_run_id,
        }
        # exported beside the outbox, so that queueing it links the file instead of copying it
        with tempfile.TemporaryDirectory(dir=self.outbox.folder) as tmp:
            weights = checkpoint.export_weights(checkpoint_dir, Path(tmp) / checkpoint.WEIGHTS_FILE)
            alias = artifact_path.rpartition("/")[2] if tags["kind"] == "snapshot" else None
            self.outbox.put(
                {
                    "op": "register",
                    "name": checkpoint.WEIGHTS_FILE,
                    "artifact_path": artifact_path,
                    "model_name": self.context.registered_model,
                    "alias": alias,
                    "kind": tags["kind"],
                    "version_tags": {k: str(v) for k, v in tags.items()},
                },
                files={checkpoint.WEIGHTS_FILE: weights},
            )

    def on_finish(self, metrics: Mapping[str, Any]) -> bool:
        return self._wrap_up("FINISHED", {"stopped_early": "false"})

    def on_stopped(self) -> bool:
        """Stopped by Tune (ASHA, the end of the sweep or Ctrl-C): upload what the run has.

        Its status and stopped_early tag come from the driver, which knows why it stopped.
        """
        return self._wrap_up(None, {})

    def on_failed(self, error: BaseException) -> bool:
        return self._wrap_up("FAILED", {"error": f"{error.__class__.__name__}: {error}"[:5000]})

    def _wrap_up(self, status: str | None, tags: Mapping[str, str]) -> bool:
        """Queue the best checkpoint, config, tags and status; wait a bounded time for them.

        Returns False when some writes are still unsent (they stay in the outbox on disk).
        """
        if not self.closed:
            self.closed = True
            system_metrics.stop(self.system_monitor)
            self._put_results()
            if tags:
                self.outbox.put({"op": "tags", "tags": dict(tags)})
            if status:
                self.outbox.put(
                    {"op": "terminate", "status": status, "session": self.context.session}
                )
        return self.outbox.close(self.flush_seconds)

    def _put_results(self) -> None:
        """The best weights so far and the trial's config.yaml, as artifacts."""
        if self.record.best_weights.is_file():
            name = checkpoint.WEIGHTS_FILE
            self.outbox.put(
                {"op": "artifact", "name": name, "artifact_path": BEST_ARTIFACT},
                files={name: self.record.best_weights},
            )
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(self.config, sort_keys=True))
            self.outbox.put(
                {"op": "artifact", "name": config.name, "artifact_path": None},
                files={config.name: config},
            )

    def _start_system_metrics(self) -> None:
        """Sample system metrics into the run once the outbox has opened it."""
        if self.outbox.run_opened.wait(timeout=system_metrics.WAIT_S):
            run_id = self.outbox.run_id
            assert run_id is not None  # set before run_opened is
            resumed = bool(self.record.history)
            self.system_monitor = system_metrics.start(self.context.uri, run_id, resumed)


def trial_tracker(
    context: TrackingContext | None,
    config: Mapping[str, Any],
    trial_id: str,
    trial_name: str,
    record: TrialProgress,
    outbox_dir: str | os.PathLike,
) -> TrialTracker | NullTracker:
    """The tracker of one trial: a `TrialTracker`, or a `NullTracker` when not tracked."""
    if context is None:
        return NullTracker()
    return TrialTracker(
        context, config, trial_id, trial_name, record, outbox_dir, flush_seconds=context.flush_s
    )
