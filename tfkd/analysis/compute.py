"""What a report row cost and what its teacher is, read from MLflow: the row's sweep (every trial
it trained) plus, for a mode with a teacher, the teacher run that trained the teacher's weights.

A row's compute is what it took to find its config, teacher included (an equal-budget comparison
must count the teacher's training): trial-epochs, training FLOPs and wall time.

    training FLOPs of a run = epochs x training images per epoch x FLOPs per image, where
    FLOPs per image = 3 x the model's forward FLOPs (forward and backward), plus the teacher's
    forward FLOPs in a mode with a teacher (the teacher runs on every batch).

Forward FLOPs are counted by torch.utils.flop_counter on one 3x32x32 image (10 classes): the
paper's convolutional models end in global pooling, so at H x W pixels multiply by H*W/1024.
Wall time is the sum of the runs' own durations (trials side by side each count in full).
The teacher run is the MLflow run whose weights the sweep used (its `teacher_run_id` tag); the
cost of choosing it (e.g. the baseline sweep that elected `resnet8@best`) is not added.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tfkd.tracking import store

TEACHER_RUN_ID_TAG = "teacher_run_id"  # a sweep run's tag: the run whose weights its teacher is
TEACHER_LOCATION_TAG = "teacher_location"
TEACHER_ACCURACY_METRIC = "teacher_val_accuracy"  # the sweep's measurement of its teacher
PROBE_PIXELS = 32


@dataclass(frozen=True)
class Cost:
    """The compute of a set of runs."""

    epochs: int = 0
    hours: float = 0.0
    pflop: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.epochs + other.epochs, self.hours + other.hours, self.pflop + other.pflop)


@dataclass(frozen=True)
class SweepFacts:
    """A sweep's search cost, its teacher run's cost and the teacher as the sweep measured it."""

    search: Cost
    teacher: Cost = Cost()
    teacher_accuracy: float = math.nan  # % on the sweep's validation split
    num_classes: int | None = None  # the teacher checkpoint's; read only where a check needs it

    def columns(self) -> dict[str, Any]:
        total = self.search + self.teacher
        return {
            "search_trial_epochs": self.search.epochs,
            "teacher_epochs": self.teacher.epochs,
            "trial_epochs": total.epochs,
            "trial_hours": total.hours,
            "compute_pflop": total.pflop,
            "teacher_acc": self.teacher_accuracy,
            "num_classes": math.nan if self.num_classes is None else self.num_classes,
        }


COLUMNS = list(SweepFacts(Cost()).columns())
NO_FACTS = dict.fromkeys(COLUMNS, math.nan)  # a row whose sweep MLflow does not hold


@functools.cache
def forward_flops(model: str) -> float:
    """The model's forward FLOPs on one 3x32x32 image (a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tfkd.core import models

    net = models.build(model, 10).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, PROBE_PIXELS, PROBE_PIXELS))
    return float(counter.get_total_flops())


def flops_per_image(model: str, teacher: str | None) -> float:
    """Training FLOPs per image: forward and backward of `model`, the teacher's forward."""
    return 3 * forward_flops(model) + (forward_flops(teacher) if teacher else 0.0)


def run_cost(run: Any, teacher_model: str | None) -> Cost:
    """One finished or stopped run's epochs, duration and training FLOPs."""
    metrics = run.data.metrics
    epochs = int(metrics.get("epoch", 0))
    images = float(metrics.get("train_images", math.nan))
    end = run.info.end_time or run.info.start_time
    flops = epochs * images * flops_per_image(run.data.params["model"], teacher_model)
    return Cost(epochs, (end - run.info.start_time) / 3.6e6, flops / 1e15)


def total_cost(runs: Iterable[Any], teacher_model: str | None) -> Cost:
    return sum((run_cost(r, teacher_model) for r in runs), Cost())


def _run(mlflow_client: Any, run_id: str) -> Any | None:
    if not run_id:
        return None
    try:
        return mlflow_client.get_run(run_id)
    except Exception:  # deleted, or in a store this report cannot see
        return None


def teacher_classes(uri: str, location: str) -> int | None:
    """The number of classes of the teacher's checkpoint (None when it cannot be read)."""
    from tfkd import tracking
    from tfkd.core import checkpoint

    try:
        meta = checkpoint.load(tracking.local_path(location, uri))["meta"]
    except Exception:  # weights gone or unreadable: the check that needs it says so
        return None
    return int(meta["num_classes"]) if "num_classes" in meta else None


def sweep_facts(
    uri: str, mlflow_client: Any, sweep_run_id: str, with_classes: bool = False
) -> SweepFacts | None:
    """The facts of the sweep run `sweep_run_id` (None when MLflow does not hold it)."""
    sweep = _run(mlflow_client, sweep_run_id)
    if sweep is None:
        return None
    trials = store.runs_of_kind(
        mlflow_client, [sweep.info.experiment_id], store.TRIAL, parent=sweep_run_id
    )
    tags = sweep.data.tags
    teacher_run = _run(mlflow_client, tags.get(TEACHER_RUN_ID_TAG, ""))
    teacher_model = tags.get("teacher", "").partition("@")[0] or None  # MODEL@ALIAS
    location = tags.get(TEACHER_LOCATION_TAG, "")
    return SweepFacts(
        search=total_cost(trials, teacher_model),
        teacher=run_cost(teacher_run, None) if teacher_run else Cost(),
        teacher_accuracy=sweep.data.metrics.get(TEACHER_ACCURACY_METRIC, math.nan),
        num_classes=teacher_classes(uri, location) if with_classes and location else None,
    )


def facts_of(
    uri: str, mlflow_client: Any, needs_classes: Mapping[str, bool]
) -> dict[str, SweepFacts]:
    """{sweep run id: facts} of the sweeps named; `needs_classes[id]`: read the teacher's
    number of classes (a download of its weights)."""
    found = {}
    for run_id, with_classes in needs_classes.items():
        facts = sweep_facts(uri, mlflow_client, run_id, with_classes) if run_id else None
        if facts is not None:
            found[run_id] = facts
    return found
