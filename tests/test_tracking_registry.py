"""The teacher registry's `best` alias: which registered final weights every student gets by
default. Trials register their weights through their real tracker and outbox into a real SQLite
store; the expected winner is read off the accuracies each trial reported, by hand."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tfkd.core import checkpoint
from tfkd.sweep.record import TrialRecord
from tfkd.tracking import teachers
from tfkd.tracking.runs import TrackingContext
from tfkd.tracking.trials import TrialTracker

from conftest import sqlite_uri

MODEL = "tfkd-digits-resnet8"


def register_final(tmp_path: Path, uri: str, trial: str, protocol: str, metrics: dict) -> str:
    """One trial of one epoch under `protocol` reports `metrics` and registers its final weights;
    returns the MLflow run id of the trial."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e") or client.get_experiment(
        client.create_experiment("e")
    )
    parent = client.create_run(experiment.experiment_id, run_name=f"sweep-{trial}").info.run_id
    context = TrackingContext(
        uri=uri,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent,
        sweep_name=f"sweep-{trial}",
        registered_model=MODEL,
    )
    config = {"mode": "baseline", "model": "resnet8", "dataset": "digits", "epochs": 1}
    config |= {"protocol": protocol, "val_fraction": 0.1 if protocol == "holdout" else 0.0}
    folder = tmp_path / trial
    record = TrialRecord.restore(folder / "home", None)
    tracker = TrialTracker(context, config, trial, trial, record, folder / "outbox")
    weights = folder / "ckpt"
    weights.mkdir(parents=True)
    state = {"model": {"w": torch.zeros(1)}, "meta": {"epoch": 1}}
    checkpoint.save_atomic(state, weights / checkpoint.CHECKPOINT_FILE)
    tracker.on_epoch({"epoch": 1, **metrics}, str(weights), best=True)
    assert tracker.on_finish(metrics)
    return tracker.outbox.run_id


def best_run(uri: str) -> str:
    return MlflowClient(uri).get_model_version_by_alias(MODEL, teachers.BEST_ALIAS).run_id


def test_best_never_ranks_train_accuracy_and_a_paper_run_never_beats_a_validated_one(tmp_path):
    uri = sqlite_uri(tmp_path)
    # the paper protocol has no validation split: its train accuracy is the highest number here
    paper = register_final(
        tmp_path, uri, "paper", "paper", {"train_accuracy": 99.5, "test_accuracy": 72.0}
    )
    assert best_run(uri) == paper  # the only teacher so far
    holdout = register_final(
        tmp_path, uri, "holdout", "holdout", {"train_accuracy": 95.0, "val_accuracy": 70.0}
    )
    assert best_run(uri) == holdout  # validated weights outrank a paper run's test accuracy
    better = register_final(
        tmp_path, uri, "better", "holdout", {"train_accuracy": 90.0, "val_accuracy": 80.0}
    )
    assert best_run(uri) == better
    said = MlflowClient(uri).get_registered_model(MODEL).tags[teachers.BEST_RANKING_TAG]
    assert said.startswith("val_accuracy of version(s) 2, 3") and "not ranked: 1" in said


def test_paper_runs_alone_rank_on_their_test_accuracy_not_their_train_accuracy(tmp_path):
    uri = sqlite_uri(tmp_path)
    register_final(tmp_path, uri, "a", "paper", {"train_accuracy": 99.0, "test_accuracy": 60.0})
    b = register_final(tmp_path, uri, "b", "paper", {"train_accuracy": 90.0, "test_accuracy": 70.0})
    assert best_run(uri) == b
    version = MlflowClient(uri).get_model_version_by_alias(MODEL, teachers.BEST_ALIAS)
    assert "val_accuracy" not in version.tags  # no validation split: no number pretends to be one


def test_downloaded_teachers_stay_out_of_the_temp_folder_and_the_cache_is_bounded(
    tmp_path, monkeypatch
):
    uri = sqlite_uri(tmp_path)
    temp, cache = tmp_path / "tmp", tmp_path / "cache"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    locations = []
    for number in range(teachers.TEACHER_CACHE_KEEP + 2):
        weights = tmp_path / f"w{number}" / "model.pt"
        weights.parent.mkdir()
        torch.save({"model": {"w": torch.full((2,), float(number))}}, weights)
        run = client.create_run(experiment).info.run_id
        client.log_artifact(run, str(weights), "teacher")
        locations.append(f"runs:/{run}/teacher")

    first = teachers.local_path(locations[0], uri)  # a real download through MLflow
    assert torch.equal(torch.load(first, weights_only=True)["model"]["w"], torch.zeros(2))
    assert teachers.local_path(locations[0], uri) == first  # once per node
    with pytest.raises(Exception):  # noqa: B017  (MLflow's own error: no such run)
        teachers.local_path("runs:/0123456789abcdef0123456789abcdef/teacher", uri)
    assert list(temp.iterdir()) == []  # nothing of tfkd's in the temp folder, even on failure
    root = cache / "tfkd" / "teachers"
    assert len(list(root.iterdir())) == 1  # the failed download left no staging folder

    def last_used_long_ago(weights: str, order: int) -> Path:
        folder = root / Path(weights).relative_to(root).parts[0]
        when = time.time() - 2 * teachers.TEACHER_CACHE_IN_USE_S + order
        os.utime(folder, (when, when))
        return folder

    used = [last_used_long_ago(first, 0)]
    for order, location in enumerate(locations[1:], start=1):
        used.append(last_used_long_ago(teachers.local_path(location, uri), order))
    # the 8 used most recently are kept (the last one downloaded counts as used now)
    assert sorted(root.iterdir()) == sorted(used[-teachers.TEACHER_CACHE_KEEP :])
