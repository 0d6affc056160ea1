"""The pieces that make restarts and tracking outages lossless, without Ray: the trial record a
checkpoint carries, and the outbox that sends MLflow writes in the background."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tfkd import tracking
from tfkd.core import checkpoint
from tfkd.sweep.record import TrialRecord, newest_complete

from conftest import free_port, sqlite_uri


def fake_checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    state = {"model": {"w": torch.full((2,), float(epoch))}, "meta": {"epoch": epoch}}
    checkpoint.save_atomic(state, folder / checkpoint.CHECKPOINT_FILE)
    return folder


def test_every_checkpoint_carries_the_history_and_the_best_weights(tmp_path):
    record = TrialRecord.restore(tmp_path / "work", None)
    record.ran_on("node-a")
    accuracies = {1: 50.0, 2: 70.0, 3: 60.0}
    for epoch, accuracy in accuracies.items():
        folder = fake_checkpoint(tmp_path / f"ckpt{epoch}", epoch)
        improved = record.add_epoch({"epoch": epoch, "val_accuracy": accuracy}, folder)
        assert improved == (epoch in (1, 2))
    # a restart from the latest checkpoint, on another node: nothing is lost
    again = TrialRecord.restore(tmp_path / "work2", tmp_path / "ckpt3")
    again.ran_on("node-b")
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert (again.best_epoch, again.best_accuracy) == (2, 70.0)
    assert again.nodes == ["node-a", "node-b"]
    best = torch.load(again.best_weights, weights_only=True)
    assert torch.equal(best["model"]["w"], torch.full((2,), 2.0))


def open_op(client: MlflowClient, trial_id: str = "t1") -> dict:
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    return {
        "op": "open",
        "experiment_id": experiment,
        "parent_run_id": parent,
        "trial_id": trial_id,
        "name": f"trial_{trial_id}",
        "tags": {"mlflow.parentRunId": parent, tracking.TRIAL_TAG: trial_id},
        "params": {"lr": "0.1"},
        "run_tags": {"ray_nodes": "n1"},
    }


def epoch_op(epoch: int, accuracy: float) -> dict:
    return {"op": "epoch", "step": epoch, "metrics": {"epoch": epoch, "val_accuracy": accuracy}}


def test_the_outbox_sends_in_order_reuses_the_run_and_logs_each_epoch_once(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    opened = open_op(client)
    box = tracking.Outbox(tmp_path / "box", uri)
    for op in (opened, epoch_op(1, 10.0), epoch_op(2, 20.0)):
        box.put(op)
    assert box.close(60)
    # a restarted trial (another process, same trial id) retrains epoch 2, then goes on
    again = tracking.Outbox(tmp_path / "box2", uri)
    for op in (
        opened,
        epoch_op(2, 21.0),
        epoch_op(3, 30.0),
        {"op": "terminate", "status": "FINISHED"},
    ):
        again.put(op)
    assert again.close(60)
    (run,) = [
        r for r in client.search_runs([opened["experiment_id"]]) if r.info.run_name != "sweep"
    ]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 10.0),
        (2, 20.0),
        (3, 30.0),
    ]
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}


def test_an_unreachable_server_never_blocks_and_the_writes_wait_on_disk(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    box = tracking.Outbox(tmp_path / "trial" / tracking.OUTBOX_DIR, dead)
    started = time.monotonic()
    for epoch in range(1, 51):
        box.put(epoch_op(epoch, float(epoch)))
    assert time.monotonic() - started < 2.0, "queueing a write waited on the server"
    assert not box.close(timeout=1.0)
    assert box.pending() == 50
    assert tracking.pending_outboxes(tmp_path) == [tmp_path / "trial" / tracking.OUTBOX_DIR]


def test_replay_sends_what_a_dead_process_left(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    folder = tmp_path / "trial" / tracking.OUTBOX_DIR
    box = tracking.Outbox(folder, f"http://127.0.0.1:{free_port()}")
    for op in (open_op(client), epoch_op(1, 5.0), {"op": "terminate", "status": "FINISHED"}):
        box.put(op)
    box.close(timeout=0.5)
    with open(folder / tracking.OPS_FILE, "a") as out:
        out.write('{"op": "epoch", "st')  # the process was killed mid-write
    assert tracking.main(["replay", str(tmp_path), "--mlflow-uri", uri]) == 0
    assert tracking.pending_outboxes(tmp_path) == []
    runs = [r for r in client.search_runs(["1"]) if r.info.run_name == "trial_t1"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.parametrize("refused", [{"op": "tags", "tags": {"x" * 300: "too long a key"}}])
def test_a_write_the_store_refuses_is_skipped_not_retried_forever(tmp_path, refused):
    uri = sqlite_uri(tmp_path)
    box = tracking.Outbox(tmp_path / "box", uri)
    box.put(open_op(MlflowClient(uri)))
    box.put(refused)
    box.put(epoch_op(1, 1.0))
    assert box.close(60)


def test_a_restore_starts_from_the_newest_whole_checkpoint(tmp_path):
    record = TrialRecord.restore(tmp_path / "work", None)
    folders = []
    for epoch in (1, 2, 3):
        folder = fake_checkpoint(tmp_path / f"checkpoint_{epoch:06d}", epoch)
        record.add_epoch({"epoch": epoch, "val_accuracy": float(epoch)}, folder)
        folders.append(folder)
    (folders[2] / checkpoint.CHECKPOINT_FILE).write_bytes(b"cut short")  # killed mid-copy
    assert newest_complete(folders) == folders[1]
    assert newest_complete(folders[:1]) == folders[0]
    assert newest_complete([tmp_path / "missing"]) is None
