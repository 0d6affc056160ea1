"""The pieces that make restarts and tracking outages lossless, without Ray: the trial record a
checkpoint carries, and the outbox that sends MLflow writes in the background."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tfkd import tracking
from tfkd.cli.commands import replay
from tfkd.core import checkpoint
from tfkd.sweep.record import TrialRecord, newest_complete
from tfkd.tracking import store

from conftest import free_port, sqlite_uri


def fake_checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    state = {"model": {"w": torch.full((2,), float(epoch))}, "meta": {"epoch": epoch}}
    checkpoint.save_atomic(state, folder / checkpoint.CHECKPOINT_FILE)
    return folder


def test_every_checkpoint_carries_the_history_and_the_best_weights_stay_in_one_place(tmp_path):
    home = tmp_path / "home"
    record = TrialRecord.restore(home, None)
    record.ran_on("node-a")
    accuracies = {1: 50.0, 2: 70.0, 3: 60.0, 4: 80.0}
    for epoch, accuracy in accuracies.items():
        folder = fake_checkpoint(tmp_path / f"ckpt{epoch}", epoch)
        improved = record.add_epoch({"epoch": epoch, "val_accuracy": accuracy}, folder)
        assert improved == (epoch in (1, 2, 4))
        assert not (folder / "best_model.pt").exists(), "the best weights were copied again"
    # best weights written once per improvement; the newest and the one before it are kept
    assert sorted(p.name for p in home.iterdir()) == ["best-epoch-2.pt", "best-epoch-4.pt"]
    # a restart from the checkpoint before the last improvement, on another node: nothing lost
    again = TrialRecord.restore(home, tmp_path / "ckpt3")
    again.ran_on("node-b")
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert (again.best_epoch, again.best_accuracy) == (2, 70.0)
    assert again.nodes == ["node-a", "node-b"]
    best = torch.load(again.best_weights, weights_only=True)
    assert torch.equal(best["model"]["w"], torch.full((2,), 2.0))


def test_where_no_folder_is_shared_the_checkpoints_carry_the_best_weights(tmp_path):
    record = TrialRecord.restore(tmp_path / "node-a", None, carry_best=True)
    for epoch, accuracy in {1: 50.0, 2: 40.0}.items():
        record.add_epoch(
            {"epoch": epoch, "val_accuracy": accuracy},
            fake_checkpoint(tmp_path / f"ckpt{epoch}", epoch),
        )
    again = TrialRecord.restore(tmp_path / "node-b", tmp_path / "ckpt2", carry_best=True)
    best = torch.load(again.best_weights, weights_only=True)
    assert again.best_epoch == 1 and torch.equal(best["model"]["w"], torch.full((2,), 1.0))


def experiment_of(client: MlflowClient, name: str = "e") -> str:
    """A new experiment the way tfkd makes one: artifacts beside the database, not in ./mlruns."""
    return store.ensure_experiment(client.tracking_uri, name)


def open_op(client: MlflowClient, trial_id: str = "t1") -> dict:
    experiment = experiment_of(client)
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    return open_op_for(experiment, parent, trial_id)


def open_op_for(experiment: str, parent: str, trial_id: str = "t1") -> dict:
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


@contextmanager
def black_hole() -> Iterator[str]:
    """A tracking 'server' that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_answers_never_blocks_and_the_writes_wait_on_disk(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3600")  # its first request hangs for good
    folder = tmp_path / "trial" / tracking.OUTBOX_DIR
    with black_hole() as uri:
        box = tracking.Outbox(folder, uri)
        box.put(open_op_for("1", "parent"))
        for epoch in range(1, 51):  # each put returns while the sender hangs on the first
            box.put(epoch_op(epoch, float(epoch)))
        assert len((folder / tracking.OPS_FILE).read_text().splitlines()) == 51
        assert not box.close(timeout=0.5)
        assert box.pending() == 51


def test_the_writes_of_an_unreachable_server_wait_on_disk_for_replay(tmp_path):
    folder = tmp_path / "trial" / tracking.OUTBOX_DIR
    box = tracking.Outbox(folder, f"http://127.0.0.1:{free_port()}")
    for epoch in range(1, 4):
        box.put(epoch_op(epoch, float(epoch)))
    assert not box.close(timeout=1.0)
    assert tracking.pending_outboxes(tmp_path) == [folder]


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
    assert replay.main([str(tmp_path), "--mlflow-uri", uri]) == 0
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


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"


def trial_runs_of(client: MlflowClient, experiment: str) -> list:
    return [r for r in client.search_runs([experiment]) if tracking.TRIAL_TAG in r.data.tags]


def test_a_torn_append_hides_nothing_written_after_it(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    opened = open_op(client)
    folder = tmp_path / "trial" / tracking.OUTBOX_DIR
    first = tracking.Outbox(folder, dead_uri())
    for op in (opened, epoch_op(1, 10.0), epoch_op(2, 20.0)):
        first.put(op)
    first.close(timeout=0.2)
    log = folder / tracking.OPS_FILE
    content = log.read_bytes()
    log.write_bytes(content[: len(content) - 15])  # killed mid-append of epoch 2
    # the restarted trial appends after the torn line, then the sweep is replayed
    again = tracking.Outbox(folder, dead_uri())
    for op in (epoch_op(2, 21.0), epoch_op(3, 30.0), {"op": "terminate", "status": "FINISHED"}):
        again.put(op)
    again.close(timeout=0.2)
    assert replay.main([str(tmp_path), "--mlflow-uri", uri]) == 0
    (run,) = trial_runs_of(client, opened["experiment_id"])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 10.0), (2, 21.0), (3, 30.0)]
    assert run.info.status == "FINISHED"


def register_op(kind: str = "final") -> dict:
    return {
        "op": "register",
        "name": "model.pt",
        "artifact_path": "teacher",
        "model_name": "tfkd-digits-resnet8",
        "alias": None,
        "kind": kind,
        "version_tags": {"kind": kind, "epoch": "3", "val_accuracy": "90.0"},
    }


def test_a_registration_sent_twice_makes_one_model_version(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    weights = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}}, weights)
    opened = open_op(client)
    box = tracking.Outbox(tmp_path / "box", uri)
    box.put(opened)
    box.put(register_op(), files={"model.pt": weights})
    assert box.close(60)
    # the process died after the registration was sent but before it was counted
    (tmp_path / "box" / "sent").write_text("1")
    (tmp_path / "box" / "files-1").mkdir()
    (tmp_path / "box" / "files-1" / "model.pt").write_bytes(weights.read_bytes())
    assert tracking.send_outbox(tmp_path / "box", None, timeout=60)
    versions = client.search_model_versions("name = 'tfkd-digits-resnet8'")
    assert len(versions) == 1


def test_sent_artifacts_leave_no_copy_in_the_outbox(tmp_path):
    uri = sqlite_uri(tmp_path)
    weights = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}}, weights)
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    box = tracking.Outbox(tmp_path / "box", uri)
    box.put(open_op_for(experiment, parent))
    box.put({"op": "artifact", "name": "model.pt", "artifact_path": "best"}, {"model.pt": weights})
    box.put({"op": "artifact", "name": "model.pt", "artifact_path": "best"}, {"model.pt": weights})
    assert box.close(60)
    assert not list((tmp_path / "box").glob("files-*"))
    assert weights.is_file()
    # a SQLite store keeps artifacts in a local folder: the logged file is the same file on disk
    # (no bytes copied), sent twice without harm, and reads back as the weights
    (run,) = trial_runs_of(client, experiment)
    logged = Path(client.download_artifacts(run.info.run_id, "best/model.pt", str(tmp_path / "d")))
    assert torch.equal(torch.load(logged, weights_only=True)["model"]["w"], torch.ones(2))
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "best" / "model.pt"
    assert stored.stat().st_ino == weights.stat().st_ino
    assert [f.path for f in client.list_artifacts(run.info.run_id, "best")] == ["best/model.pt"]


def test_a_write_the_store_refuses_is_reported_on_the_run_and_kept(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    opened = open_op(client)
    folder = tmp_path / "trial" / tracking.OUTBOX_DIR
    box = tracking.Outbox(folder, uri)
    box.put(opened)
    box.put({"op": "tags", "tags": {"x" * 300: "too long a key"}})
    box.put(epoch_op(1, 1.0))
    assert box.close(60)
    (run,) = trial_runs_of(client, opened["experiment_id"])
    assert run.data.tags["tfkd.refused_writes"].startswith("1 ")
    (kept,) = [json.loads(line) for line in (folder / "refused.jsonl").read_text().splitlines()]
    assert kept["op"]["op"] == "tags"
    assert tracking.refused_outboxes(tmp_path) == [folder]


def test_a_replay_after_the_sweep_ends_asha_stopped_trials_finished_and_stopped_early(tmp_path):
    """The server was down from the middle of the sweep to its end: ASHA stopped trial t1 after
    two epochs, t2 ran its three; everything waits in the outboxes, then `replay` sends it."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = experiment_of(client)
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    results = tmp_path / "ray_results" / "sweep"
    for trial, epochs in (("t1", 2), ("t2", 3)):
        box = tracking.Outbox(results / f"trial_{trial}" / "tfkd" / tracking.OUTBOX_DIR, dead_uri())
        box.put(open_op_for(experiment, parent, trial))
        for epoch in range(1, epochs + 1):
            box.put(epoch_op(epoch, 10.0 * epoch))
        if epochs == 3:
            box.put({"op": "tags", "tags": {"stopped_early": "false"}})
            box.put({"op": "terminate", "status": "FINISHED"})
        box.close(timeout=0.2)
    sweep = tracking.Outbox(results / tracking.OUTBOX_DIR / parent, dead_uri())
    sweep.put({"op": "use_run", "run_id": parent})
    for trial, stopped in (("t1", True), ("t2", False)):
        sweep.put(
            {
                "op": "close_trial",
                "experiment_id": experiment,
                "trial_id": trial,
                "status": "FINISHED",
                "stopped_early": stopped,
            }
        )
    sweep.put(
        {
            "op": "finish_sweep",
            "experiment_id": experiment,
            "best_trial_id": "t2",
            "best_metrics": {"best_val_accuracy": 30.0},
            "status": "FINISHED",
        }
    )
    sweep.close(timeout=0.2)

    assert replay.main([str(results), "--mlflow-uri", uri]) == 0
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in trial_runs_of(client, experiment)}
    assert {t: r.info.status for t, r in runs.items()} == {"t1": "FINISHED", "t2": "FINISHED"}
    assert runs["t1"].data.tags["stopped_early"] == "true"
    assert runs["t2"].data.tags["stopped_early"] == "false"
    sweep_run = client.get_run(parent)
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.tags["best_run_id"] == runs["t2"].info.run_id


# ------------------------------------------- the trial's and the sweep's writes, in any order


def arrival_orders(trial_writes: int, driver_writes: int) -> list[tuple[str, ...]]:
    """Every order in which the writes of two outboxes (each sent in its own order) can reach
    the store, as the outbox each write comes from."""
    if not trial_writes or not driver_writes:
        return [("trial",) * trial_writes + ("sweep",) * driver_writes]
    return [("trial", *rest) for rest in arrival_orders(trial_writes - 1, driver_writes)] + [
        ("sweep", *rest) for rest in arrival_orders(trial_writes, driver_writes - 1)
    ]


def send_in_order(uri: str, folder: Path, parent: str, order, trial: list, driver: list) -> list:
    """Send the trial outbox's writes to its run (bound by its "open") and the driver's to the
    sweep run, in `order`; returns the op names as sent."""
    from tfkd.tracking import ops

    client = MlflowClient(uri)
    runs = {"trial": ops.BoundRun(uri, folder), "sweep": ops.BoundRun(uri, folder, parent)}
    queues = {"trial": list(trial), "sweep": list(driver)}
    sent = []
    for box in order:
        op = queues[box].pop(0)
        ops.send(runs[box], client, op)
        sent.append(op["op"])
    return sent


def session_open(experiment: str, parent: str, session: int) -> dict:
    return {**open_op_for(experiment, parent), "session": session}


def driver_verdict(experiment: str, session: int, stopped: bool) -> list[dict]:
    """What the driver sends when Tune saw trial t1 end: its end, then the sweep's end."""
    verdict = {"status": "FINISHED", "stopped_early": stopped}
    return [
        {"op": "close_trial", "experiment_id": experiment, "trial_id": "t1", **verdict},
        {
            "op": "finish_sweep",
            "experiment_id": experiment,
            "best_trial_id": "t1",
            "best_metrics": {},
            "status": "FINISHED",
            "verdicts": {"t1": verdict},
        },
    ]


def in_session(writes: list[dict], session: int) -> list[dict]:
    return [{**op, "session": session} for op in writes]


def new_sweep(client: MlflowClient, name: str) -> tuple[str, str]:
    experiment = experiment_of(client, name)
    return experiment, client.create_run(experiment, run_name="sweep").info.run_id


def the_trial_run(client: MlflowClient, experiment: str):
    (run,) = trial_runs_of(client, experiment)
    return run


def steps_of(client: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))


def test_a_trial_finished_after_a_killed_driver_ends_finished_whatever_order_the_writes_arrive(
    tmp_path,
):
    """Session 1's driver was killed with the trial's run RUNNING at epoch 3; in the resumed
    session 2 the trial finishes. Its outbox (the killed attempt's "open" sent again to bind the
    run, its own "open", epoch 4, its end) and the driver's (the trial's end, the sweep's end)
    arrive in every order, and a second sender on the trial's outbox repeats its "open" last."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    orders = arrival_orders(4, 2)
    for number, order in enumerate(orders):
        experiment, parent = new_sweep(client, f"e{number}")
        folder = tmp_path / f"box{number}"
        killed = [session_open(experiment, parent, 1), *(epoch_op(e, 10.0 * e) for e in (1, 2, 3))]
        send_in_order(uri, folder, parent, ["trial"] * 4, killed, [])
        trial = [
            session_open(experiment, parent, 1),
            session_open(experiment, parent, 2),
            epoch_op(4, 40.0),
            {"op": "tags", "tags": {"stopped_early": "false"}},
            {"op": "terminate", "status": "FINISHED", "session": 2},
            session_open(experiment, parent, 2),
        ]
        driver = in_session(driver_verdict(experiment, 2, stopped=False), 2)
        sent = send_in_order(uri, folder, parent, ["trial", *order, "trial"], trial, driver)
        run = the_trial_run(client, experiment)
        assert run.info.status == "FINISHED", sent
        assert run.data.tags["stopped_early"] == "false", sent
        assert steps_of(client, run) == [1, 2, 3, 4], sent
        assert client.get_run(parent).info.status == "FINISHED", sent
    assert len(orders) == 15


def test_an_asha_stop_ends_finished_and_stopped_early_even_before_the_trial_run_exists(tmp_path):
    """A stopped trial's outbox never closes its run (the driver knows why it stopped); the
    driver's word may reach the store before the trial's run is even created."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    for number, order in enumerate(arrival_orders(2, 2)):
        experiment, parent = new_sweep(client, f"e{number}")
        trial = [session_open(experiment, parent, 1), epoch_op(1, 5.0)]
        driver = in_session(driver_verdict(experiment, 1, stopped=True), 1)
        sent = send_in_order(uri, tmp_path / f"box{number}", parent, order, trial, driver)
        run = the_trial_run(client, experiment)
        assert run.info.status == "FINISHED", sent
        assert run.data.tags["stopped_early"] == "true", sent
        assert steps_of(client, run) == [1], sent


def test_a_run_an_interrupted_sweep_killed_is_reopened_by_the_resume_and_corrected_by_late_ends(
    tmp_path,
):
    """Ctrl-C: session 1 ends the unfinished trial's run KILLED. A late "open" of session 1 does
    not re-open it; the resumed session 2's does; the trial's own end, arriving after a second
    interrupt's KILLED, makes it FINISHED."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    experiment, parent = new_sweep(client, "e")
    interrupted = {
        "op": "finish_sweep",
        "experiment_id": experiment,
        "best_trial_id": None,
        "status": "KILLED",
        "verdicts": {"t1": {"status": "KILLED"}},
    }
    folder = tmp_path / "box"
    opened = [session_open(experiment, parent, 1), epoch_op(1, 1.0)]
    killed = in_session([interrupted], 1)
    send_in_order(uri, folder, parent, ["trial", "trial", "sweep"], opened, killed)
    assert the_trial_run(client, experiment).info.status == "KILLED"
    send_in_order(uri, folder, parent, ["trial"], [session_open(experiment, parent, 1)], [])
    assert the_trial_run(client, experiment).info.status == "KILLED"
    send_in_order(uri, folder, parent, ["trial"], [session_open(experiment, parent, 2)], [])
    assert the_trial_run(client, experiment).info.status == "RUNNING"
    send_in_order(uri, folder, parent, ["sweep"], [], in_session([interrupted], 2))
    assert the_trial_run(client, experiment).info.status == "KILLED"
    end = [{"op": "terminate", "status": "FINISHED", "session": 2}]
    send_in_order(
        uri, folder, parent, ["trial"] * 2, [session_open(experiment, parent, 2), *end], []
    )
    assert the_trial_run(client, experiment).info.status == "FINISHED"
