"""Many trials writing the default SQLite store at once: nothing set aside, every epoch once.

SQLite lets one writer in at a time; the others wait (MLflow sets SQLite's busy timeout to
20 s), then fail with "database is locked". That is the store being busy, not refusing: the
outbox must retry it until it goes through, and set aside only what the store truly refuses.
Each trial here is a real process's real outbox (as in a Ray trial: its own process, its own
outbox folder), several trials per process and several processes at once, all against one
SQLite file; what MLflow holds at the end is read back and compared with what every trial wrote.

Run as a script, this file is one such process (`python test_tracking_load.py ARGS`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PROCESSES, TRIALS_PER_PROCESS, EPOCHS = 6, 4, 3  # 24 trials, all 24 writing at once
EPOCH_SECONDS = 0.5
# a slow writer (a replay, `mlflow gc`, a writer descheduled on a loaded node) holds the write
# lock while the trials write, for longer than the three tries an outbox gave a write before
# setting it aside (each waits MLflow's SQLite busy timeout, 20 s, then fails "database is
# locked")
HOLD_LOCK_SECONDS = 70.0


def trial_writes(experiment: str, parent: str, trial: str) -> list[dict]:
    """What a trial of EPOCHS epochs writes: its run, an epoch's metrics each, its end."""
    opened = {
        "op": "open",
        "experiment_id": experiment,
        "parent_run_id": parent,
        "trial_id": trial,
        "session": 1,
        "name": f"trial_{trial}",
        "tags": {"mlflow.parentRunId": parent, "tfkd.ray_trial_id": trial, "tfkd.kind": "trial"},
        "params": {"lr": "0.1", "trial": trial},
        "run_tags": {"ray_nodes": "n1"},
    }
    epochs = [
        {"op": "epoch", "step": e, "metrics": {"epoch": e, "val_accuracy": float(e)}}
        for e in range(1, EPOCHS + 1)
    ]
    return [opened, *epochs, {"op": "terminate", "status": "FINISHED", "session": 1}]


def run_trials(uri: str, root: str, experiment: str, parent: str, trials: list[str]) -> None:
    """One process's trials, each with its own outbox: they open their runs, say "ready", wait
    for "go" on stdin, then train; prints how often the store answered "database is locked"
    (every failed try of every write, counted where it is sent)."""
    from tfkd.tracking import ops
    from tfkd.tracking.outbox import Outbox

    locked = [0]
    send = ops.send

    def counting_send(run, client, op):
        try:
            send(run, client, op)
        except Exception as exc:
            if "database is locked" in str(exc):
                locked[0] += 1
            raise

    ops.send = counting_send
    boxes = {name: Outbox(Path(root) / name / "mlflow_outbox", uri) for name in trials}
    writes = {name: trial_writes(experiment, parent, name) for name in trials}
    for name, box in boxes.items():
        box.put(writes[name][0])
    for box in boxes.values():
        assert box.run_opened.wait(timeout=240)
    print("ready", flush=True)
    sys.stdin.readline()

    def trial(name: str) -> None:
        for op in writes[name][1:]:
            boxes[name].put(op)
            time.sleep(EPOCH_SECONDS)  # an epoch's training
        assert boxes[name].close(timeout=300), f"{name}: writes left unsent"

    threads = [threading.Thread(target=trial, args=(name,)) for name in trials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"locked": locked[0]}))


def hold_the_lock_while_trials_write(workers: list, database: Path) -> None:
    """Once every trial's run is open, take SQLite's exclusive lock, let the trials train and
    hold the lock for HOLD_LOCK_SECONDS."""
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    holder = sqlite3.connect(database, isolation_level=None, timeout=120)
    holder.execute("BEGIN EXCLUSIVE")
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    time.sleep(HOLD_LOCK_SECONDS)
    holder.execute("COMMIT")
    holder.close()


@pytest.mark.slow
def test_many_trials_on_the_default_sqlite_store_set_nothing_aside_and_log_every_epoch_once(
    tmp_path,
):
    from mlflow import MlflowClient

    from tfkd import tracking

    uri = tracking.resolve_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracking.ensure_experiment(uri, "load")
    client = MlflowClient(uri)
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    results = tmp_path / "ray_results"
    names = [[f"t{p:02d}{t}" for t in range(TRIALS_PER_PROCESS)] for p in range(PROCESSES)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, uri, str(results), experiment, parent, *trials],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for trials in names
    ]
    hold_the_lock_while_trials_write(workers, tmp_path / "mlflow.db")
    said = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, said, strict=True):
        assert worker.returncode == 0, err[-3000:]
    locked = sum(json.loads(out.strip().splitlines()[-1])["locked"] for out, _ in said)
    print(f"'database is locked' answered {locked} write tries")

    assert tracking.refused_outboxes(results) == []  # nothing set aside
    assert tracking.pending_outboxes(results) == []
    runs = [r for r in client.search_runs([experiment]) if r.info.run_name != "sweep"]
    assert sorted(r.data.params["trial"] for r in runs) == sorted(sum(names, []))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted((m.step, m.value) for m in history) == [
            (e, float(e)) for e in range(1, EPOCHS + 1)
        ], run.data.params["trial"]
        assert run.info.status == "FINISHED"


if __name__ == "__main__":
    run_trials(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
