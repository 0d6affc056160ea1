"""tune_main.py end to end on real Ray clusters started on 127.0.0.1 (2 CPUs, no GPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tfkd.sweep import search_space

from conftest import (
    TUNE_MAIN,
    assert_ok,
    clean_env,
    cli_args,
    ray_cluster,
    runs_of_kind,
    sqlite_uri,
    tune_main,
)

pytestmark = pytest.mark.slow


def epoch_steps(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "epoch"))


def sweep_name(stdout: str) -> str:
    """The sweep's name as tune_main announces it: '[tfkd] sweep NAME (...)'."""
    found = re.search(r"^\[tfkd\] sweep (\S+) \(", stdout, re.MULTILINE)
    assert found, stdout[-2000:]
    return found.group(1)


RAY_NOISE = (
    "repeated",  # Ray's log de-duplication
    "Current best trial",
    "Token authentication",
    "tensorboard",
    "Trial status",
    "Fatal Python error",  # a trial's process aborting (ASHA stop)
    "SIGABRT",
    "Aborted",
)


def assert_quiet(done: subprocess.CompletedProcess) -> None:
    """No Ray noise, no native stack traces; nothing at all on stderr."""
    for noise in RAY_NOISE:
        assert noise not in done.stdout + done.stderr, noise
    assert done.stderr.strip() == "", done.stderr[-3000:]


def epoch_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.search(r"\[tfkd\] \w+ \w+ epoch \d", line)]


def test_smoke_test_runs_end_to_end_and_verbose_shows_every_epoch_line(workdir):
    env = clean_env()
    env.pop("RAY_DEDUP_LOGS")  # tune_main itself must turn Ray's de-duplication off
    done = tune_main("--mode tfkd_reg --dataset fake --smoke-test --verbose", cwd=workdir, env=env)
    assert_ok(done)
    lines = epoch_lines(done.stdout)
    assert sorted(re.search(r"epoch \d/2", line).group() for line in lines) == [
        "epoch 1/2",
        "epoch 1/2",
        "epoch 2/2",
        "epoch 2/2",
    ], done.stdout[-3000:]
    assert "repeated" not in done.stdout
    summary = done.stdout.index("[tfkd] 2 trials:")
    assert all(done.stdout.index(line) < summary for line in lines), "an epoch line came late"
    name = sweep_name(done.stdout)
    assert name.startswith("tfkd_reg-fake-resnet8-")
    best = yaml.safe_load((workdir / "ray_results" / name / "best_config.yaml").read_text())
    assert best["config"]["model"] == "resnet8" and best["config"]["epochs"] == 2
    shipped = search_space.load(search_space.default_path("tfkd_reg"), "tfkd_reg")
    assert set(best["searched"]) == set(shipped.params)  # every searched key of the shipped space
    assert 0 <= best["metrics"]["val_accuracy"] <= 100
    assert best["metrics"]["test_accuracy"] is not None
    runs = runs_of_kind(f"sqlite:///{workdir / 'mlflow.db'}", "tfkd_reg-fake-resnet8")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


def test_digits_sweep_asha_stops_bad_trials(workdir):
    space = workdir / "lr.yaml"
    space.write_text(
        "mode: baseline\nparams: {lr: {distribution: choice, values: [0.1, 0.0002]}}\n"
        "defaults: {lr: 0.1}\n"
    )
    uri = sqlite_uri(workdir)
    done = tune_main(
        "--mode baseline --dataset digits --model resnet8 --num-samples 4 --epochs 4",
        "--grace-period 1 --max-concurrent 1",
        search_space=space,
        mlflow_uri=uri,
        cwd=workdir,
    )
    assert_ok(done)
    assert_quiet(done)
    assert not epoch_lines(done.stdout), "epoch lines without --verbose"
    runs = runs_of_kind(uri, "baseline-digits-resnet8")
    assert len(runs) == 4
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "true"]
    full = [r for r in runs if r.data.tags.get("stopped_early") == "false"]
    assert stopped, "ASHA stopped no trial"
    assert all(max(epoch_steps(uri, r.info.run_id)) < 4 for r in stopped)
    assert all(r.data.params["lr"] == "0.0002" for r in stopped)
    assert all(max(epoch_steps(uri, r.info.run_id)) == 4 for r in full)
    best = yaml.safe_load(
        (workdir / "ray_results" / sweep_name(done.stdout) / "best_config.yaml").read_text()
    )
    assert best["searched"] == {"lr": 0.1} and best["metrics"]["epoch"] == 4
    assert f"{len(stopped)} stopped early by ASHA" in done.stdout
    assert {r.info.run_name for r in runs} <= {"lr.1", "lr.1 #2", "lr.1 #3", "lr2e-4", "lr2e-4 #2"}
    assert_status_table(done.stdout, trials=4, stopped=len(stopped), epochs=4)
    assert_one_best(done.stdout, best, uri, full)
    # the lr 0.1 trials train the same config at the same seed: a tie is said when they reach
    # the same best validation accuracy, and only then
    top = max(r.data.metrics["val_accuracy"] for r in full)
    tied = [r for r in full if r.data.metrics["val_accuracy"] == top]
    assert ("[tfkd] a tie: " in done.stdout) == (len(tied) > 1), done.stdout[-1500:]


def assert_one_best(stdout: str, best: dict, uri: str, full: list) -> None:
    """Status table, summary, best_config.yaml and the sweep run name one best: the highest
    last-epoch validation accuracy of the full-length trials, as their MLflow runs hold it."""
    expected = max(r.data.metrics["val_accuracy"] for r in full)
    header = stdout.split("\n[tfkd] " + sweep_name(stdout) + ": ")[-1].splitlines()[0]
    assert f"| best {expected:.2f}% (" in header, header
    assert f"val_accuracy {expected:.2f}%" in stdout.split("[tfkd] best trial ")[-1]
    assert best["metrics"]["val_accuracy"] == pytest.approx(expected)
    (sweep,) = runs_of_kind(uri, "baseline-digits-resnet8", "sweep")
    assert sweep.data.metrics["best_val_accuracy"] == pytest.approx(expected)
    for run in full:  # a trial's best epoch is named as such, never as the sweep's best
        history = MlflowClient(uri).get_metric_history(run.info.run_id, "val_accuracy")
        assert run.data.metrics["best_epoch_val_accuracy"] == max(m.value for m in history)
        assert "best_val_accuracy" not in run.data.metrics


def assert_status_table(stdout: str, trials: int, stopped: int, epochs: int) -> None:
    """The last status table shows every trial's end; the final summary comes after it."""
    tables = stdout.split("\n[tfkd] " + sweep_name(stdout) + ": ")
    assert len(tables) >= 2, stdout[-3000:]  # at least one refresh and the final table
    last = tables[-1].splitlines()
    counts = f"{trials - stopped} done, 0 running, {stopped} stopped, 0 failed, 0 pending"
    assert last[0].startswith(counts + f" of {trials} | best "), last[0]
    assert "elapsed" in last[0]
    assert last[1].split() == ["trial", "epoch", "val", "acc", "state"]
    rows = last[2 : 2 + trials]
    assert sum(row.endswith("STOPPED") for row in rows) == stopped
    assert sum(row.endswith("DONE") and f" {epochs}/{epochs} " in row for row in rows) == (
        trials - stopped
    )
    after = [line for line in last[2 + trials :] if line.strip()]
    registered = [line for line in after if line.startswith("[tfkd] registered teacher ")]
    for line in registered:  # a baseline sweep's trials register teachers: one line names them
        assert f"of teacher run {sweep_name(stdout)} " in line and " version " in line, line
    ties = [line for line in after if line.startswith("[tfkd] a tie: ")]  # said when there is
    after = [line for line in after if line not in registered and line not in ties]
    assert after[0].startswith(f"[tfkd] {trials} trials:") and len(after) == 5, after
    assert after[-1].startswith("[tfkd] compare the trials in MLflow: run `mlflow ui")
    assert after[-1].endswith("/artifacts/trials.html?workflowType=machine_learning")


FOUR_SHORT_TRIALS = "--num-samples 4 --search-alg random --epochs 2 --set fake_size=1024"


def overlap(runs: list) -> bool:
    """Every run started before any run ended."""
    return max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)


def four_short_lsr_trials(address: str, uri: str, workdir: Path, extra: str = ""):
    """An lsr sweep of FOUR_SHORT_TRIALS on the cluster at `address`: its process and its runs."""
    done = tune_main(
        f"--mode lsr --dataset fake --model resnet8 {extra}",
        FOUR_SHORT_TRIALS,
        address=address,
        mlflow_uri=uri,
        cwd=workdir,
    )
    assert_ok(done)
    return done, runs_of_kind(uri, "lsr-fake-resnet8")


def test_four_trials_share_one_gpu(workdir):
    uri = sqlite_uri(workdir)
    with ray_cluster(num_cpus=4, num_gpus=1) as address:
        done, runs = four_short_lsr_trials(address, uri, workdir, "--gpus-per-trial 0.25")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert overlap(runs), "the 4 trials of 0.25 GPU did not run at the same time"
    assert [float(r.data.params["gpu_share"]) for r in runs] == [0.25] * 4
    # the cluster's one node is this machine: without CUDA each trial says so once and trains
    # on the CPU; with CUDA they share its GPU
    no_cuda = not torch.cuda.is_available()
    assert ("CUDA is not available here; using CPU" in done.stdout + done.stderr) == no_cuda


def test_joining_a_token_cluster_without_the_token_is_one_clear_line(workdir):
    with ray_cluster(num_cpus=1) as address:
        env = clean_env(HOME=str(workdir))  # no ~/.ray/auth_token here
        env.pop("RAY_AUTH_MODE", None)
        env.pop("RAY_AUTH_TOKEN", None)
        done = tune_main(
            "--mode lsr --dataset fake --model resnet8 --no-tracking --smoke-test",
            address=address,
            cwd=workdir,
            env=env,
            timeout=300,
        )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "RAY_AUTH_MODE=token" in last and address in last


def test_trials_run_on_two_nodes(workdir):
    uri = sqlite_uri(workdir)
    with ray_cluster(num_cpus=1, workers=(1,)) as address:
        _, runs = four_short_lsr_trials(address, uri, workdir)
    assert len(runs) == 4
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2


def test_a_failing_trial_fails_alone_and_all_failing_exits_1(workdir):
    uri = sqlite_uri(workdir)
    space = workdir / "lr.yaml"
    space.write_text(
        "mode: baseline\nparams: {lr_factor: {distribution: choice, values: [1.0, 1.0e+13]}}\n"
    )
    common = cli_args(
        "--mode baseline --dataset fake --model resnet8 --epochs 1 --search-alg grid",
        "--set fake_size=256 --set warmup_epochs=0",
        search_space=space,
        mlflow_uri=uri,
    )
    done = tune_main(*common, "--num-samples", "1", cwd=workdir)
    assert_ok(done)
    assert "2 trials: 1 failed" in done.stdout
    runs = {r.data.params["lr_factor"]: r for r in runs_of_kind(uri, "baseline-fake-resnet8")}
    assert runs["10000000000000.0"].info.status == "FAILED"
    assert "non-finite" in runs["10000000000000.0"].data.tags["error"]
    assert runs["1.0"].info.status == "FINISHED"
    said = done.stdout + done.stderr  # tfkd names the failure; Ray's traceback is in error.txt
    assert "Traceback" not in said and "Trials did not complete" not in said, said[-3000:]
    (error_file,) = (workdir / "ray_results").glob("*/trial_*/error.txt")
    assert "NonFiniteLossError" in error_file.read_text()

    space.write_text(
        "mode: baseline\nparams: {lr_factor: {distribution: choice, values: [1.0e+13]}}\n"
        "defaults: {lr_factor: 1.0e+13}\n"
    )
    done = tune_main(*common, "--num-samples", "1", "--name", "all-fail", cwd=workdir)
    assert done.returncode == 1
    assert "every trial failed" in done.stderr


STOPPED_TRIAL = """
import sys, tempfile, time
from pathlib import Path
import ray, torch
from ray import tune
from tfkd.sweep import trainable

marker = Path(sys.argv[1])

def slow_to_stop(config):
    torch.set_num_threads(1)
    try:
        tune.report({"epoch": 1})
        tune.report({"epoch": 2})
    except SystemExit:  # Tune stops the trial (as ASHA does): clean-up that takes a while
        x = torch.randn(200, 200)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            x = torch.tanh(x @ x)  # inside torch, like a trial's last work
        marker.write_text("done")
        raise

ray.init(num_cpus=1, include_dashboard=False)
config = tune.RunConfig(stop={"epoch": 1}, storage_path=tempfile.mkdtemp(), verbose=0)
tune.Tuner(trainable._stoppable(slow_to_stop), run_config=config).fit()
ray.shutdown()
"""


def test_a_stopped_trial_ends_its_clean_up_before_its_process_exits(workdir):
    """The cause of the SIGABRT traces at ASHA stops: Tune ended the trial's process while its
    training thread was still running (torch, MLflow); that thread now finishes first."""
    marker = workdir / "clean-up-finished"
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_TRIAL, str(marker)],
        cwd=workdir,
        env=clean_env(PYTHONPATH=str(TUNE_MAIN.parent)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(done)
    assert marker.is_file(), "the trial's process exited before its clean-up ended"
    assert "Fatal Python error" not in done.stderr and "terminate called" not in done.stderr
