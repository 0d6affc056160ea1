"""Data-parallel trials (--workers-per-trial N) on Ray Train: real gloo workers on this CPU.

One module-scoped 2-worker sweep through tune_main is compared with a 1-worker run_trial of the
same config (same global batch and seed); a second sweep has one of its Ray Train workers killed
after its first checkpoint and must finish every epoch from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tfkd.core import checkpoint
from tfkd.core.train import run_trial

from conftest import TUNE_MAIN, assert_ok, clean_env, cli_args, descendants, tune_main

pytestmark = pytest.mark.slow

# 320 fake images, 4 of 32 per class held out: 280 training images = 7 global batches of 40.
DP = (
    "--mode baseline --dataset fake --model resnet8 --fixed --no-tracking --workers-per-trial 2 "
    "--set fake_size=320 --set val_fraction=0.125 --set batch_size=40 --set lr=0.01"
)
# Float sums in another order (the global BatchNorm's and DDP's all-reduce) are the only
# difference between the two runs; after 14 SGD steps the weights agree to this. Each step
# amplifies that noise by the learning rate: lr 0.01 (0.003 at batch 40) keeps the second
# epoch, which trains at the full rate, within it (at lr 0.1 conv1 moves 9e-4 apart).
ATOL, RTOL = 2e-4, 1e-3


def final_checkpoint(experiment: Path) -> Path:
    (trial,) = [p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_")]
    return sorted(trial.glob("checkpoint_*"))[-1] / checkpoint.CHECKPOINT_FILE


def reported_epochs(experiment: Path) -> list[int]:
    (trial,) = [p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_")]
    lines = (trial / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if '"epoch"' in line]


@pytest.fixture(scope="module")
def two_worker_sweep(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("dp")
    done = tune_main(DP, epochs=2, name="dp", cwd=workdir)
    assert_ok(done)
    return workdir / "ray_results" / "dp"


def test_two_gloo_workers_train_the_weights_of_one_worker_on_the_same_global_batch(
    two_worker_sweep,
):
    best = yaml.safe_load((two_worker_sweep / "best_config.yaml").read_text())
    config = best["config"]
    single = {}

    def keep(metrics, folder):
        single.update(checkpoint.load(folder)["model"])

    torch.set_num_threads(1)
    run_trial(config, keep)
    parallel = checkpoint.load(final_checkpoint(two_worker_sweep))["model"]
    assert set(parallel) == set(single)
    moved = 0
    for name, value in single.items():
        if value.is_floating_point():
            torch.testing.assert_close(parallel[name], value, atol=ATOL, rtol=RTOL, msg=name)
            moved += 1
        else:
            assert torch.equal(parallel[name], value), name  # num_batches_tracked: 14 steps
    assert moved > 10
    assert int(parallel["bn1.num_batches_tracked"]) == 14


def test_a_data_parallel_trial_reports_every_epoch_once(two_worker_sweep):
    assert reported_epochs(two_worker_sweep) == [1, 2]


def _train_workers(root: int) -> list[int]:
    found = []
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in cmdline:
            found.append(pid)
    return found


def test_a_killed_worker_restarts_the_trial_from_its_last_checkpoint(tmp_path):
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115
    driver = subprocess.Popen(
        [sys.executable, str(TUNE_MAIN), *cli_args(DP, epochs=4, name="killed")],
        cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    experiment = tmp_path / "ray_results" / "killed"
    deadline = time.monotonic() + 300
    try:
        while not list(experiment.glob("trial_*/checkpoint_*/checkpoint.pt")):
            assert driver.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.5)
        workers = _train_workers(driver.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()
    epochs = reported_epochs(experiment)
    assert epochs[-1] == 4
    assert sorted(set(epochs)) == [1, 2, 3, 4]
    # resumed, not started again: epoch 1 (checkpointed before the kill) ran once
    assert epochs == sorted(epochs) and epochs.count(1) == 1
    (trial,) = experiment.glob("trial_*")
    assert (trial / "error.txt").is_file()  # the trial did fail with its worker, and was retried
    assert "[tfkd] 1 trial: 0 failed" in (tmp_path / "driver.log").read_text()
