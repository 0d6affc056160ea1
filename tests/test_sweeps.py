"""tune_main.py end to end on real Ray clusters started on 127.0.0.1 (2 CPUs, no GPU)."""

from __future__ import annotations

import pytest
import yaml
from mlflow import MlflowClient

from conftest import (
    assert_ok,
    clean_env,
    cli_args,
    ray_cluster,
    sqlite_uri,
    tune_main,
)

pytestmark = pytest.mark.slow


def child_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("tfkd.kind") == "trial"
    ]


def epoch_steps(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "epoch"))


def test_smoke_test_runs_end_to_end(workdir):
    done = tune_main("--mode tfkd_reg --dataset fake --smoke-test", cwd=workdir)
    assert_ok(done)
    best = yaml.safe_load(
        (workdir / "ray_results/tfkd_reg-fake-resnet8/best_config.yaml").read_text()
    )
    assert best["config"]["model"] == "resnet8" and best["config"]["epochs"] == 2
    assert set(best["searched"]) == {
        "temperature",
        "alpha",
        "correct_prob",
        "multiplier",
        "semantics",
    }
    assert 0 <= best["metrics"]["val_accuracy"] <= 100
    assert best["metrics"]["test_accuracy"] is not None
    runs = child_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tfkd_reg-fake-resnet8")
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
    runs = child_runs(uri, "baseline-digits-resnet8")
    assert len(runs) == 4
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "true"]
    full = [r for r in runs if r.data.tags.get("stopped_early") == "false"]
    assert stopped, "ASHA stopped no trial"
    assert all(max(epoch_steps(uri, r.info.run_id)) < 4 for r in stopped)
    assert all(r.data.params["lr"] == "0.0002" for r in stopped)
    assert all(max(epoch_steps(uri, r.info.run_id)) == 4 for r in full)
    best = yaml.safe_load(
        (workdir / "ray_results/baseline-digits-resnet8/best_config.yaml").read_text()
    )
    assert best["searched"] == {"lr": 0.1} and best["metrics"]["epoch"] == 4
    assert f"{len(stopped)} stopped early by ASHA" in done.stdout


FOUR_SHORT_TRIALS = "--num-samples 4 --search-alg random --epochs 2 --set fake_size=1024"


def overlap(runs: list) -> bool:
    """Every run started before any run ended."""
    return max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)


def test_four_trials_share_one_gpu(workdir):
    uri = sqlite_uri(workdir)
    with ray_cluster(num_cpus=4, num_gpus=1) as address:
        done = tune_main(
            "--mode lsr --dataset fake --model resnet8 --gpus-per-trial 0.25",
            FOUR_SHORT_TRIALS,
            address=address,
            mlflow_uri=uri,
            cwd=workdir,
        )
    assert_ok(done)
    runs = child_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert overlap(runs), "the 4 trials of 0.25 GPU did not run at the same time"
    # this machine has no CUDA: each trial says so once and trains on the CPU
    assert "CUDA is not available here; using CPU" in done.stdout + done.stderr


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
        done = tune_main(
            "--mode lsr --dataset fake --model resnet8",
            FOUR_SHORT_TRIALS,
            address=address,
            mlflow_uri=uri,
            cwd=workdir,
        )
    assert_ok(done)
    runs = child_runs(uri, "lsr-fake-resnet8")
    assert len(runs) == 4
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2


def test_a_failing_trial_fails_alone_and_all_failing_exits_1(workdir):
    uri = sqlite_uri(workdir)
    space = workdir / "lr.yaml"
    space.write_text(
        "mode: baseline\nparams: {lr: {distribution: choice, values: [0.05, 1.0e+12]}}\n"
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
    runs = {r.data.params["lr"]: r for r in child_runs(uri, "baseline-fake-resnet8")}
    assert runs["1000000000000.0"].info.status == "FAILED"
    assert "non-finite" in runs["1000000000000.0"].data.tags["error"]
    assert runs["0.05"].info.status == "FINISHED"

    space.write_text("mode: baseline\nparams: {lr: {distribution: choice, values: [1.0e+12]}}\n")
    done = tune_main(*common, "--name", "all-fail", cwd=workdir)
    assert done.returncode == 1
    assert "every trial failed" in done.stderr
