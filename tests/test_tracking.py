"""MLflow end to end: a real tracking server on 127.0.0.1, teachers from the model registry, and
the MLflow UI in headless Chromium."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tfkd.config import TrialConfig
from tfkd.config import keys as config_keys

from conftest import ARTIFACTS, assert_ok, mlflow_server, tune_main

pytestmark = pytest.mark.slow

FAKE = "--dataset fake --model resnet8 --set fake_size=512 --epochs 2"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def workdir_m(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


def run_ok(*words: str, cwd: Path, **options) -> str:
    done = tune_main(*words, cwd=cwd, **options)
    assert_ok(done)
    return done.stdout


def runs_of(uri: str, experiment: str) -> tuple:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tfkd.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("tfkd.kind") == "trial"]
    return parents, children


@pytest.fixture(scope="module")
def teacher_sweep(server, workdir_m) -> str:
    """A baseline run that registers its weights, and its epoch-1 snapshot, as teachers."""
    run_ok("--mode baseline --fixed --snapshot-epochs 1", FAKE, mlflow_uri=server, cwd=workdir_m)
    return "baseline-fake-resnet8"


def test_sweep_and_trial_runs_are_recorded(server, teacher_sweep):
    client = MlflowClient(server)
    parents, children = runs_of(server, teacher_sweep)
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    tags = parent.data.tags
    assert (tags["mode"], tags["dataset"], tags["model"], tags["search_alg"]) == (
        "baseline",
        "fake",
        "resnet8",
        "fixed",
    )
    assert "params:" in tags["search_space"] and tags["best_run_id"] == child.info.run_id
    assert parent.info.status == "FINISHED" and "best_val_accuracy" in parent.data.metrics
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED" and child.data.tags["stopped_early"] == "false"
    assert set(child.data.params) == set(config_keys())
    assert TrialConfig.from_dict(child.data.params).epochs == 2
    for metric in ("val_accuracy", "train_loss", "val_ece", "lr", "images_per_second"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [1, 2]
    assert {"test_accuracy", "test_ece", "test_nll"} <= set(child.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"config.yaml", "best_checkpoint", "teacher", "snapshots"} <= artifacts
    assert [a.path for a in client.list_artifacts(child.info.run_id, "best_checkpoint")] == [
        "best_checkpoint/model.pt"
    ]


def test_baseline_registers_teacher_and_snapshot(server, teacher_sweep):
    client = MlflowClient(server)
    _, (child,) = runs_of(server, teacher_sweep)
    best = client.get_model_version_by_alias("tfkd-fake-resnet8", "best")
    snapshot = client.get_model_version_by_alias("tfkd-fake-resnet8", "epoch-1")
    assert best.run_id == snapshot.run_id == child.info.run_id
    assert best.tags["kind"] == "final" and snapshot.tags["epoch"] == "1"


def test_self_training_finds_its_teacher(server, teacher_sweep, workdir_m):
    run_ok("--mode tfkd_self --num-samples 2", FAKE, mlflow_uri=server, cwd=workdir_m)
    (parent,), children = runs_of(server, "tfkd_self-fake-resnet8")
    best = MlflowClient(server).get_model_version_by_alias("tfkd-fake-resnet8", "best")
    assert parent.data.tags["teacher"] == "resnet8@best"
    assert parent.data.tags["teacher_location"] == f"runs:/{best.run_id}/teacher"
    assert 0 <= parent.data.metrics["teacher_val_accuracy"] <= 100
    assert len(children) == 2
    assert all(
        c.data.params["teacher_checkpoint"] == f"runs:/{best.run_id}/teacher" for c in children
    )


def test_defective_kd_takes_the_epoch_snapshot(server, teacher_sweep, workdir_m):
    run_ok("--mode dekd --teacher resnet8@epoch-1 --fixed", FAKE, mlflow_uri=server, cwd=workdir_m)
    (parent,), (child,) = runs_of(server, "dekd-fake-resnet8")
    assert parent.data.tags["teacher_location"].endswith("/snapshots/epoch-1")
    assert child.info.status == "FINISHED"


def test_train_teacher_trains_a_missing_teacher_first(server, workdir_m):
    stdout = run_ok(
        "--mode kd --teacher resnet20 --train-teacher --fixed",
        FAKE,
        mlflow_uri=server,
        cwd=workdir_m,
    )
    assert "training the teacher resnet20 first" in stdout
    version = MlflowClient(server).get_model_version_by_alias("tfkd-fake-resnet20", "best")
    (parent,), _ = runs_of(server, "kd-fake-resnet8")
    assert parent.data.tags["teacher_location"] == f"runs:/{version.run_id}/teacher"


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = Path(tempfile.mkdtemp(prefix="tfkd-chromium-"))  # a fresh --user-data-dir
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(options=options, service=Service(driver_path)), profile


EXPAND_BUTTON = "button[data-component-id*='runnamecellrenderer']"


def wait_for(driver, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def test_mlflow_ui_lists_the_sweep_runs(server, teacher_sweep, workdir_m):
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tfkd_self-fake-resnet8")
    if experiment is None:  # run on its own: make the sweep it shows
        run_ok("--mode tfkd_self --num-samples 2", FAKE, mlflow_uri=server, cwd=workdir_m)
        experiment = client.get_experiment_by_name("tfkd_self-fake-resnet8")
    names = [r.info.run_name for r in client.search_runs([experiment.experiment_id])]
    driver, profile = chrome()
    try:
        driver.get(f"{server}/#/experiments/{experiment.experiment_id}/runs")
        wait_for(driver, lambda: experiment.name in driver.page_source)
        # trials are nested under their sweep's run: open the sweep's row once
        for button in driver.find_elements("css selector", EXPAND_BUTTON):
            button.click()
        wait_for(driver, lambda: all(n in driver.page_source for n in names))
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_runs.png"))
        missing = [n for n in names if n not in driver.page_source]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    assert len(names) == 3 and not missing, f"not on the page: {missing}"
    assert (ARTIFACTS / "mlflow_ui_runs.png").stat().st_size > 10_000
