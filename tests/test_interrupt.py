"""Ctrl-C at any moment: the command tune_main prints continues the sweep to its end.

One sweep (two trials of four epochs, one at a time, real local Ray, real SQLite MLflow store) is
interrupted with a real SIGINT to its process group three times: before Tune saved anything,
during the first trial, and during the resume; each time the printed command is run as printed.
A SIGTERM to the driver's pid alone (`kill PID`) ends a sweep the same way.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TUNE_MAIN, assert_ok, clean_env, cli_args, runs_of_kind, sqlite_uri, tune_main

pytestmark = pytest.mark.slow

EPOCHS = 4
EXPERIMENT = "lsr-fake-resnet8"
SWEEP = (
    "--mode lsr --dataset fake --model resnet8 --search-alg random --num-samples 2 "
    f"--epochs {EPOCHS} --grace-period {EPOCHS} --max-concurrent 1 --set fake_size=384 "
    f"--experiment {EXPERIMENT}"
)


def start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """tune_main.py in its own process group, as a shell runs a foreground job."""
    return subprocess.Popen(
        [sys.executable, str(TUNE_MAIN), *argv],
        cwd=cwd,
        env=clean_env(),
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert proc.poll() is None, f"the driver ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ctrl_c(proc: subprocess.Popen, log: Path) -> list[str]:
    """Ctrl-C; the printed command's arguments (what follows `python tune_main.py`)."""
    os.killpg(proc.pid, signal.SIGINT)
    return interrupted_command(proc, log)


def interrupted_command(proc: subprocess.Popen, log: Path) -> list[str]:
    """The interrupted driver's exit and its printed command's arguments."""
    assert proc.wait(timeout=240) == 130, log.read_text()[-3000:]
    said = log.read_text()
    assert "Tuner.restore" not in said, "Ray's own resume advice contradicts tfkd's"
    last = said.strip().splitlines()[-1]
    assert last.startswith("tune_main.py: interrupted;") and ": python " in last, said[-3000:]
    words = shlex.split(last.split(": python ", 1)[1])
    assert words[0] == "tune_main.py"
    return words[1:]


def checkpoint_count(experiment: Path) -> int:
    return len(list(experiment.glob("trial_*/checkpoint_*")))


def test_ctrl_c_before_during_and_while_resuming_then_the_printed_command_completes(tmp_path):
    uri = sqlite_uri(tmp_path)
    experiment = tmp_path / "ray_results" / "ctrlc"
    argv = cli_args(SWEEP, name="ctrlc", mlflow_uri=uri)

    # 1: before Tune saved any state (as soon as the sweep is announced)
    log = tmp_path / "1.log"
    driver = start(argv, tmp_path, log)
    wait_until(lambda: "[tfkd] sweep ctrlc" in log.read_text(), "the announcement", driver)
    argv = ctrl_c(driver, log)
    assert not list(experiment.glob("experiment_state*.json")), "Tune had saved its state"
    assert "--name" in argv and "ctrlc" in argv

    # 2: the printed command, interrupted after the first trial's first checkpoint
    log = tmp_path / "2.log"
    driver = start(argv, tmp_path, log)
    wait_until(lambda: checkpoint_count(experiment) >= 1, "a first checkpoint", driver)
    argv = ctrl_c(driver, log)
    assert "--resume" in argv

    # 3: the printed command (a real restore), interrupted once the second trial has a checkpoint
    log = tmp_path / "3.log"
    driver = start(argv, tmp_path, log)
    wait_until(
        lambda: len({p.parent for p in experiment.glob("trial_*/checkpoint_*")}) == 2,
        "the second trial's first checkpoint",
        driver,
    )
    argv = ctrl_c(driver, log)

    # 4: the printed command runs the sweep to its end
    done = tune_main(*argv, cwd=tmp_path)  # (no word of this command holds a space)
    assert_ok(done)
    assert (experiment / "best_config.yaml").is_file()
    final_table = done.stdout.split("[tfkd] ctrlc:")[-1]
    assert final_table.count(f"{EPOCHS}/{EPOCHS}") == 2, done.stdout[-3000:]
    assert final_table.count("DONE") == 2 and "PENDING" not in final_table
    assert [r.info.status for r in runs_of_kind(uri, EXPERIMENT, "sweep")] == ["FINISHED"]
    trials = runs_of_kind(uri, EXPERIMENT, "trial")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    client = MlflowClient(uri)
    for run in trials:
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))
        assert epochs == list(range(1, EPOCHS + 1)), run.info.run_id


CTRL_C_WHILE_TUNE_SETS_UP = """
import signal, tempfile
import ray
from ray import tune
from tfkd.sweep import callbacks, status

class CtrlC(tune.Callback):
    def setup(self, **info):  # Tune's SIGINT handler is in place, SweepCallback's wrap is not
        signal.raise_signal(signal.SIGINT)

def trainable(config):
    tune.report({"epoch": 1})

status.configure_driver(verbose=False)  # as tune_main does
ray.init(num_cpus=1, include_dashboard=False)
run = tune.RunConfig(
    storage_path=tempfile.mkdtemp(), verbose=0, callbacks=[CtrlC(), callbacks.SweepCallback(None)]
)
with callbacks.noticing_tunes_interrupt():
    grid = tune.Tuner(trainable, run_config=run).fit()
print("trials that reported:", sum(bool(r.metrics) for r in grid))
print("interrupted" if callbacks.INTERRUPTED.is_set() else "not interrupted")
"""


def test_a_ctrl_c_tune_takes_before_tfkd_wraps_its_handler_still_counts_as_an_interrupt(
    tmp_path,
):
    """The window between Tune installing its SIGINT handler and SweepCallback.setup wrapping
    it: Tune stops at once, and the sweep must be reported interrupted, not finished."""
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_TUNE_SETS_UP],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(TUNE_MAIN.parent)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.strip().splitlines()[-2:]
    assert said == ["trials that reported: 0", "interrupted"], done.stdout + done.stderr[-3000:]


def test_sigterm_to_the_driver_ends_the_sweep_as_ctrl_c_does_without_a_native_trace(tmp_path):
    """`kill PID`: Ray's native SIGTERM handler used to print a stack trace and kill the driver
    unsaved; now Tune stops and saves the sweep and the printed command finishes it."""
    uri = sqlite_uri(tmp_path)
    experiment = tmp_path / "ray_results" / "term"
    log = tmp_path / "term.log"
    driver = start(cli_args(SWEEP, name="term", mlflow_uri=uri), tmp_path, log)
    wait_until(lambda: checkpoint_count(experiment) >= 1, "a first checkpoint", driver)
    os.kill(driver.pid, signal.SIGTERM)
    argv = interrupted_command(driver, log)
    said = log.read_text()
    assert "SIGTERM received" not in said and "logging.cc" not in said, said[-3000:]
    assert "--resume" in argv and "term" in argv
    assert list(experiment.glob("experiment_state*.json")), "Tune did not save the sweep"
    assert [r.info.status for r in runs_of_kind(uri, EXPERIMENT, "sweep")] == ["KILLED"]

    done = tune_main(*argv, cwd=tmp_path)
    assert_ok(done)
    assert done.stdout.split("[tfkd] term:")[-1].count(f"{EPOCHS}/{EPOCHS}") == 2
