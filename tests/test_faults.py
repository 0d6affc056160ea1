"""Faults with real processes and real kills: nothing lost, nothing misreported.

Each scenario runs tune_main.py (a real local Ray or a 2-node cluster on 127.0.0.1, a real MLflow
store or server) on small fake data for a few epochs, injects one fault by killing a process this
test started (by its own id), and checks what a user relies on: exit status, one run per trial,
each epoch logged exactly once, the best checkpoint kept, nothing left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from conftest import (
    TUNE_MAIN,
    assert_ok,
    assert_one_line,
    clean_env,
    cli_args,
    descendants,
    free_port,
    ray_cluster,
    runs_of_kind,
    sqlite_uri,
    stop_process_tree,
    tune_main,
    wait_for_port,
)

pytestmark = pytest.mark.slow

EPOCHS = 4
# Two trials of 4 epochs on small fake data, run one after the other (no ASHA stops).
SWEEP = (
    "--mode lsr --dataset fake --model resnet8 --search-alg random --num-samples 2 "
    f"--epochs {EPOCHS} --grace-period {EPOCHS} --max-concurrent 1 --set fake_size=384 "
    "--experiment lsr-fake-resnet8"
)


# ---------------------------------------------------------------- helpers


def start_driver(
    *words: str, cwd: Path, log: Path, env: dict | None = None, **options
) -> subprocess.Popen:
    """tune_main.py in its own process group (as a shell runs a foreground job)."""
    return subprocess.Popen(
        [sys.executable, str(TUNE_MAIN), *cli_args(*words, **options)],
        cwd=cwd,
        env=env or clean_env(),
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until(condition: Callable[[], bool], what: str, proc=None, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def checkpoints(experiment: Path, number: int) -> list[Path]:
    return sorted(experiment.glob(f"trial_*/checkpoint_{number:06d}"))


def alive(pids: list[int]) -> list[int]:
    """The pids still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def trial_runs(uri: str, experiment: str) -> list:
    return runs_of_kind(uri, experiment, "trial")


def sweep_runs(uri: str, experiment: str) -> list:
    return runs_of_kind(uri, experiment, "sweep")


def steps(uri: str, run_id: str, metric: str = "epoch") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def assert_complete_history(uri: str, runs: list, epochs: int = EPOCHS) -> None:
    """Every run: each epoch's metrics exactly once, steps 1..epochs."""
    for run in runs:
        for metric in ("epoch", "val_accuracy", "train_loss"):
            assert steps(uri, run.info.run_id, metric) == list(range(1, epochs + 1)), (
                run.info.run_id,
                metric,
            )


def assert_best_checkpoint_logged(uri: str, run, workdir: Path) -> None:
    """The run's best_checkpoint holds the weights of its best validation epoch."""
    client = MlflowClient(uri)
    local = client.download_artifacts(run.info.run_id, "best_checkpoint", str(workdir))
    meta = torch.load(Path(local) / "model.pt", weights_only=True)["meta"]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    best = max(history, key=lambda m: (m.value, -m.step))
    assert meta["val_accuracy"] == pytest.approx(best.value)
    assert meta["epoch"] == best.step


@contextmanager
def restartable_mlflow_server(root: Path) -> Iterator[tuple[str, Callable, Callable]]:
    """A real MLflow server on a fixed port that the test can stop and start again."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start() -> None:
        log = open(root / "server.log", "a")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
                    *("--port", str(port), "--workers", "1"),
                    *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                    *("--artifacts-destination", str(root / "artifacts")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,
            )
        )
        wait_for_port(port, timeout=120)

    def stop() -> None:
        while procs:
            stop_process_tree(procs.pop())

    start()
    try:
        yield f"http://127.0.0.1:{port}", start, stop
    finally:
        stop()


# ---------------------------------------------------------------- 1 and 7: driver killed, --resume


@pytest.fixture
def private_tmp(request) -> Path:
    """A temp folder of the test's own (short: Ray's sockets go there), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    return folder


def tfkd_temp_files(folder: Path) -> list[str]:
    """What tfkd left in a temp folder; Ray's own session folder (ray/, which holds Ray's copy
    of the results folder's top-level files) is Ray's to keep."""
    found = (p.relative_to(folder) for p in folder.rglob("*tfkd*"))
    return sorted(str(p) for p in found if p.parts[0] != "ray")


def test_killed_driver_leaves_nothing_running_and_resume_completes_every_trial(
    workdir, private_tmp
):
    uri = sqlite_uri(workdir)
    experiment = workdir / "ray_results" / "killed"
    env = clean_env(TMPDIR=str(private_tmp))
    driver = start_driver(
        SWEEP, name="killed", mlflow_uri=uri, cwd=workdir, log=workdir / "1.log", env=env
    )
    wait_until(lambda: checkpoints(experiment, 2), "a second checkpoint", driver)
    family = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    wait_until(lambda: not alive(family), "the killed driver's processes to end", timeout=60)

    done = tune_main(SWEEP, name="killed", resume=True, mlflow_uri=uri, cwd=workdir, env=env)
    assert_ok(done)
    assert tfkd_temp_files(private_tmp) == [], "tfkd left files in the temp folder"
    runs = trial_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 2, "a resumed trial opened a second MLflow run"
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert_complete_history(uri, runs)
    for run in runs:
        assert_best_checkpoint_logged(uri, run, workdir / run.info.run_id)
    assert [r.info.status for r in sweep_runs(uri, "lsr-fake-resnet8")] == ["FINISHED"]


def test_a_second_sweep_under_a_running_name_is_refused(workdir):
    uri = sqlite_uri(workdir)
    experiment = workdir / "ray_results" / "busy"
    first = start_driver(SWEEP, name="busy", mlflow_uri=uri, cwd=workdir, log=workdir / "7.log")
    try:
        wait_until(lambda: checkpoints(experiment, 1), "the first sweep's checkpoint", first)
        # resuming it while it runs (a plain second start is refused earlier: the name exists)
        second = tune_main(SWEEP, name="busy", resume=True, mlflow_uri=uri, cwd=workdir)
        assert second.returncode == 2
        assert_one_line(second.stderr, "'busy' is already running", f"pid {first.pid}")
        assert len(list(experiment.glob("trial_*"))) <= 2
    finally:
        stop_process_tree(first)


def test_concurrent_sweeps_creating_one_sqlite_store_do_not_crash(workdir):
    uri = sqlite_uri(workdir / "fresh")
    code = (
        "import sys; from tfkd import tracking; "
        "tracking.check_reachable(sys.argv[1]); print(tracking.ensure_experiment(sys.argv[1], 'x'))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1  # one experiment, the same id


# ---------------------------------------------------------------- 2: Ctrl-C


def test_ctrl_c_exits_130_marks_runs_killed_and_resume_completes(workdir):
    uri = sqlite_uri(workdir)
    experiment = workdir / "ray_results" / "interrupted"
    log = workdir / "2.log"
    driver = start_driver(SWEEP, name="interrupted", mlflow_uri=uri, cwd=workdir, log=log)
    wait_until(lambda: checkpoints(experiment, 1), "a first checkpoint", driver)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    assert driver.wait(timeout=180) == 130, log.read_text()[-3000:]
    said = log.read_text().strip().splitlines()
    assert "interrupted" in said[-1] and "--resume" in said[-1] and "--name interrupted" in said[-1]
    assert not (experiment / "best_config.yaml").exists()
    assert [r.info.status for r in sweep_runs(uri, "lsr-fake-resnet8")] == ["KILLED"]
    unfinished = [r for r in trial_runs(uri, "lsr-fake-resnet8") if r.info.status != "FINISHED"]
    assert unfinished and all(r.info.status == "KILLED" for r in unfinished)
    assert all(r.data.tags.get("stopped_early") != "true" for r in unfinished)

    done = tune_main(SWEEP, name="interrupted", resume=True, mlflow_uri=uri, cwd=workdir)
    assert_ok(done)
    runs = trial_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert_complete_history(uri, runs)
    assert (experiment / "best_config.yaml").is_file()


# ---------------------------------------------------------------- 4: failures of the values


@pytest.mark.parametrize(
    ("values", "reason"),
    [(["multiplier=1e38"], "non-finite loss"), (["lr=1000", "warmup_epochs=0"], "diverged")],
)
def test_a_failure_of_the_hyper_parameters_fails_once_and_is_not_retried(workdir, values, reason):
    uri = sqlite_uri(workdir)
    done = tune_main(
        "--mode tfkd_reg --dataset fake --model resnet8 --fixed --epochs 3 --set fake_size=256",
        "--max-failures -1 --name values --experiment tfkd_reg-fake-resnet8",
        set=values,
        mlflow_uri=uri,
        cwd=workdir,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = trial_runs(uri, "tfkd_reg-fake-resnet8")
    assert run.info.status == "FAILED"
    assert reason in run.data.tags["error"] and "epoch" in run.data.tags["error"]
    failed = [line for line in done.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 1 and reason in failed[0]
    trial_dir = next((workdir / "ray_results" / "values").glob("trial_*"))
    assert (trial_dir / "error.txt").read_text().count("Failure #") == 1, "it was retried"


def test_a_trial_failed_by_its_values_stays_failed_across_resume(workdir):
    """lr=150 (at loss scale 1) diverges after an epoch or two; `--resume` restarts errored
    trials, and this one fails at once without training again: its run keeps its epochs, its
    status and its reason."""
    uri = sqlite_uri(workdir)
    sweep = (
        "--mode tfkd_reg --dataset fake --model resnet8 --fixed --epochs 3 --set fake_size=256 "
        "--set lr=150 --set warmup_epochs=0 --name diverged --experiment tfkd_reg-fake-resnet8"
    )
    first = tune_main(sweep, mlflow_uri=uri, cwd=workdir, timeout=300)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    (run,) = trial_runs(uri, "tfkd_reg-fake-resnet8")
    reason = run.data.tags["error"]
    trained = steps(uri, run.info.run_id)
    assert "diverged" in reason and trained and len(trained) < 3, (reason, trained)
    saved = sorted(p.name for p in (workdir / "ray_results" / "diverged").glob("trial_*/check*"))

    resumed = tune_main(sweep, resume=True, mlflow_uri=uri, cwd=workdir, timeout=300)
    assert resumed.returncode == 1, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    failed = [line for line in resumed.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "diverged" in failed[0], resumed.stdout[-3000:]
    again_saved = (workdir / "ray_results" / "diverged").glob("trial_*/check*")
    assert sorted(p.name for p in again_saved) == saved, "the resume trained it again"
    (again,) = trial_runs(uri, "tfkd_reg-fake-resnet8")
    assert again.info.run_id == run.info.run_id and again.info.status == "FAILED"
    assert steps(uri, run.info.run_id) == trained, "the resume trained it again"
    assert "diverged" in again.data.tags["error"]
    assert [r.info.status for r in sweep_runs(uri, "tfkd_reg-fake-resnet8")] == ["FAILED"]
    assert not (workdir / "ray_results" / "diverged" / "best_config.yaml").exists()


def test_max_failures_takes_a_count_or_minus_one(workdir):
    done = tune_main("--mode lsr --dataset fake --max-failures -2", cwd=workdir, timeout=120)
    assert done.returncode == 2
    assert_one_line(done.stderr, "--max-failures", "-1")


# ---------------------------------------------------------------- 5: the tracking server goes down


@contextmanager
def sweep_past_its_first_checkpoint(workdir: Path, name: str, sweep: str = SWEEP, **options):
    """A sweep (SWEEP by default) against a restartable MLflow server, once its first
    checkpoint is written."""
    with restartable_mlflow_server(workdir / "mlflow") as (uri, start, stop):
        experiment = workdir / "ray_results" / name
        log = workdir / f"{name}.log"
        driver = start_driver(sweep, name=name, mlflow_uri=uri, cwd=workdir, log=log, **options)
        wait_until(lambda: checkpoints(experiment, 1), "a first checkpoint", driver)
        yield SimpleNamespace(
            uri=uri, start=start, stop=stop, experiment=experiment, log=log, driver=driver
        )


def assert_every_run_finished(uri: str) -> Any:
    """Both trials' runs and the sweep's run FINISHED, every epoch logged once; the sweep run."""
    runs = trial_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert_complete_history(uri, runs)
    (sweep,) = sweep_runs(uri, "lsr-fake-resnet8")
    assert sweep.info.status == "FINISHED"
    return sweep


def test_training_does_not_wait_for_a_dead_tracking_server_and_replay_completes(workdir):
    """Down for good: the ends of the trials and of the sweep wait --tracking-grace for it."""
    with sweep_past_its_first_checkpoint(workdir, "outage", tracking_grace=6) as sweep:
        sweep.stop()  # down for the rest of the sweep
        assert sweep.driver.wait(timeout=300) == 0, sweep.log.read_text()[-3000:]
        said = [line for line in sweep.log.read_text().splitlines() if "tfkd replay" in line]
        assert len(said) == 1 and "MLflow lacks" in said[0]
        assert (sweep.experiment / "best_config.yaml").is_file()

        sweep.start()
        replayed = subprocess.run(
            [sys.executable, "-m", "tfkd", "replay", str(sweep.experiment)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert_ok(replayed)
        assert "best_run_id" in assert_every_run_finished(sweep.uri).data.tags


def test_a_tracking_server_back_during_the_sweep_gets_everything(workdir):
    with sweep_past_its_first_checkpoint(workdir, "blip") as sweep:
        sweep.stop()
        wait_until(
            lambda: checkpoints(sweep.experiment, 3), "two epochs without MLflow", sweep.driver
        )
        sweep.start()  # back before the sweep's end gives up on it (END_OF_SWEEP_GRACE_S)
        assert sweep.driver.wait(timeout=300) == 0, sweep.log.read_text()[-3000:]
        assert "MLflow lacks" not in sweep.log.read_text()
        assert_every_run_finished(sweep.uri)


# ------------------------------------------------------------ 6 and 8: checked before Ray starts


class Payload:
    """An arbitrary Python object: a checkpoint holding one is not weights-only."""


@pytest.mark.parametrize(
    ("words", "needles"),
    [
        ("--storage {file}/results", ["--storage", "is a file"]),
        ("--storage /proc/tfkd-results", ["--storage", "cannot write"]),
        ("--set val_fraction=0", ["val_fraction=0", "validation split"]),
        ("--mode kd --teacher-checkpoint {evil}", ["weights-only", "torch.save"]),
    ],
)
def test_bad_input_is_one_line_before_anything_starts(workdir, words, needles):
    (workdir / "file").write_text("not a folder")
    torch.save({"model": {}, "payload": Payload()}, workdir / "evil.pt")
    words = words.format(file=workdir / "file", evil=workdir / "evil.pt")
    mode = [] if "--mode" in words else ["--mode lsr"]
    done = tune_main(*mode, "--dataset fake", words, cwd=workdir, timeout=120)
    assert done.returncode == 2
    assert_one_line(done.stderr, *needles)
    assert not (workdir / "ray_results").exists()


# ---------------------------------------------------------------- 9: a worker node is lost


def test_a_lost_worker_node_moves_its_trial_without_losing_anything(workdir):
    uri = sqlite_uri(workdir)
    experiment = workdir / "ray_results" / "node-lost"
    sweep = SWEEP.replace("--max-concurrent 1", "--max-concurrent 2")
    with ray_cluster(num_cpus=1, workers=(1,), keep_handles=True) as (address, nodes):
        log = workdir / "9.log"
        driver = start_driver(
            sweep, name="node-lost", address=address, mlflow_uri=uri, cwd=workdir, log=log
        )
        wait_until(lambda: len(checkpoints(experiment, 2)) == 2, "both trials' epoch 2", driver)
        nodes[1].kill()  # the worker node: its raylet and every process on it
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    runs = trial_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert_complete_history(uri, runs)
    for run in runs:
        assert_best_checkpoint_logged(uri, run, workdir / run.info.run_id)
    moved = [r for r in runs if len(r.data.tags["ray_nodes"].split(",")) == 2]
    assert len(moved) == 1, [r.data.tags["ray_nodes"] for r in runs]
