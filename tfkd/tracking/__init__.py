"""Tracking on MLflow: the only package that imports MLflow (lazily: a sweep without tracking
never pays for it). Every write goes through a durable on-disk outbox, so training never waits on
the tracking server.

Modules: `store` (where runs go, and every MLflow query), `outbox` (the durable queue), `ops`
(the writes it sends), `runs` (the sweep's run), `trials` (each trial's run), `teachers` (the
model registry) and `system_metrics`; `tfkd replay` sends what outboxes still hold. This module
re-exports the names the other packages use.
"""

from tfkd.tracking.outbox import (
    END_OF_SWEEP_GRACE_S,
    OPS_FILE,
    OUTBOX_DIR,
    Outbox,
    flush_pending,
    pending_outboxes,
    refused_outboxes,
    send_outbox,
)
from tfkd.tracking.runs import (
    TrackingContext,
    check_new_sweep,
    close_trial_run,
    finish_sweep,
    log_sweep_files,
    log_sweep_metrics,
    start_sweep,
    sweep_outbox,
    sweep_run,
    tag_sweep,
)
from tfkd.tracking.store import (
    KIND_TAG,
    TRIAL_TAG,
    check_location,
    check_reachable,
    ensure_experiment,
    mlflow_client,
    resolve_uri,
    ui_link,
)
from tfkd.tracking.teachers import (
    BEST_ALIAS,
    RegisteredTeacher,
    local_path,
    parse_teacher,
    registered_by,
    registered_model_name,
    registered_teacher,
    teacher_run_of,
    teacher_uri_from_run,
)
from tfkd.tracking.trials import NullTracker, TrialTracker, trial_tracker

__all__ = [
    "BEST_ALIAS",
    "END_OF_SWEEP_GRACE_S",
    "KIND_TAG",
    "OPS_FILE",
    "OUTBOX_DIR",
    "TRIAL_TAG",
    "NullTracker",
    "RegisteredTeacher",
    "Outbox",
    "TrackingContext",
    "TrialTracker",
    "check_location",
    "check_new_sweep",
    "check_reachable",
    "close_trial_run",
    "ensure_experiment",
    "finish_sweep",
    "flush_pending",
    "local_path",
    "log_sweep_metrics",
    "log_sweep_files",
    "tag_sweep",
    "mlflow_client",
    "parse_teacher",
    "pending_outboxes",
    "refused_outboxes",
    "registered_by",
    "registered_model_name",
    "registered_teacher",
    "resolve_uri",
    "send_outbox",
    "start_sweep",
    "sweep_outbox",
    "sweep_run",
    "teacher_run_of",
    "teacher_uri_from_run",
    "trial_tracker",
    "ui_link",
]
