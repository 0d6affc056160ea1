"""MLflow end to end: a real tracking server on 127.0.0.1, teachers from the model registry, and
the MLflow UI in headless Chromium."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tfkd.core.config import TrialConfig, core_keys
from tfkd.sweep import search_space
from tfkd.sweep import status as progress

from browser import (
    EXPAND_BUTTON,
    chrome,
    click_text,
    expand_until_shown,
    tidy_for_screenshot,
    wait_for,
)
from conftest import ARTIFACTS, assert_ok, clean_env, mlflow_server, tune_main

pytestmark = pytest.mark.slow

FAKE = "--dataset fake --model resnet8 --set fake_size=512 --epochs 2"
SWEEP_METRICS = {"best_val_accuracy", "best_test_accuracy", "trials", "failed", "stopped_early"}


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


TEACHER_RUN, TEACHER_EXPERIMENT = "teacher-fake-resnet8", "baseline-fake-resnet8"


@pytest.fixture(scope="module")
def teacher_sweep(server, workdir_m) -> str:
    """A baseline teacher run (experiment TEACHER_EXPERIMENT) that registers its weights, and
    its epoch-1 snapshot, as teachers; what tune_main said."""
    words = "--mode baseline --fixed --snapshot-epochs 1"
    return run_ok(words, FAKE, name=TEACHER_RUN, mlflow_uri=server, cwd=workdir_m)


def test_sweep_and_trial_runs_are_recorded(server, teacher_sweep):
    client = MlflowClient(server)
    parents, children = runs_of(server, TEACHER_EXPERIMENT)
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
    assert parent.info.status == "FINISHED"
    assert set(parent.data.metrics) == SWEEP_METRICS  # sweep-level only, no Ray bookkeeping
    assert parent.data.metrics["trials"] == 1 and parent.data.metrics["failed"] == 0
    sweep_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert sweep_files == {"trials.csv", "trials.html"}  # nothing searched: no plot
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED" and child.data.tags["stopped_early"] == "false"
    # every stored key of the config (a baseline declares no keys of its own); the search
    # coordinates set fields, they are not stored
    assert set(child.data.params) == set(core_keys())
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
    _, (child,) = runs_of(server, TEACHER_EXPERIMENT)
    best = client.get_model_version_by_alias("tfkd-fake-resnet8", "best")
    snapshot = client.get_model_version_by_alias("tfkd-fake-resnet8", "epoch-1")
    assert best.run_id == snapshot.run_id == child.info.run_id
    assert best.tags["kind"] == "final" and snapshot.tags["epoch"] == "1"


def test_a_teacher_runs_versions_are_registered_together_and_named(server, teacher_sweep):
    """Every version a teacher run registers carries its name and run id; its output names them."""
    client = MlflowClient(server)
    (parent,), (child,) = runs_of(server, TEACHER_EXPERIMENT)
    mine = [
        v
        for v in client.search_model_versions("name = 'tfkd-fake-resnet8'")
        if v.tags.get("teacher_run") == TEACHER_RUN
    ]
    assert sorted((v.tags["kind"], v.tags["epoch"]) for v in mine) == [
        ("final", "2"),
        ("snapshot", "1"),
    ]
    assert {v.tags["sweep_run_id"] for v in mine} == {parent.info.run_id}
    assert {v.run_id for v in mine} == {child.info.run_id}
    snapshot, final = sorted(mine, key=lambda v: v.tags["kind"] == "final")
    line = (
        f"[tfkd] registered teacher tfkd-fake-resnet8: version {snapshot.version} (epoch-1), "
        f"version {final.version} (final) of teacher run {TEACHER_RUN} "
        f"(MLflow run {child.info.run_id}); use it with --teacher resnet8@epoch-1:{TEACHER_RUN}\n"
    )
    assert line in teacher_sweep


@pytest.fixture(scope="module")
def self_sweep(server, teacher_sweep, workdir_m) -> str:
    """A two-trial tfkd_self sweep taught by the registered baseline; what tune_main said."""
    return run_ok(
        "--mode tfkd_self --num-samples 2 --system-metrics",
        FAKE,
        mlflow_uri=server,
        cwd=workdir_m,
        env=clean_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1"),
    )


def test_self_training_finds_its_teacher(server, self_sweep):
    (parent,), children = runs_of(server, "tfkd_self-fake-resnet8")
    best = MlflowClient(server).get_model_version_by_alias("tfkd-fake-resnet8", "best")
    assert parent.data.tags["teacher"] == "resnet8@best"
    assert parent.data.tags["teacher_location"] == f"runs:/{best.run_id}/teacher"
    assert 0 <= parent.data.metrics["teacher_val_accuracy"] <= 100
    assert (
        f"[tfkd] teacher resnet8@best: tfkd-fake-resnet8 version {best.version}, the final "
        f"weights of teacher run {best.tags['teacher_run']} (MLflow run {best.run_id})\n"
    ) in self_sweep
    assert len(children) == 2
    assert all(
        c.data.params["teacher_checkpoint"] == f"runs:/{best.run_id}/teacher" for c in children
    )
    for run in (parent, *children):  # the teacher's run, on the sweep and on every student
        assert run.data.tags["teacher_run_id"] == best.run_id
        assert run.data.tags["teacher_run"] == best.tags["teacher_run"]
    assert set(parent.data.metrics) == SWEEP_METRICS | {"teacher_val_accuracy"}


def test_the_sweep_run_compares_its_trials(server, self_sweep):
    """Trials named by their searched values; the sweep run holds the comparison."""
    client = MlflowClient(server)
    (parent,), children = runs_of(server, "tfkd_self-fake-resnet8")
    space = search_space.load(search_space.default_path("tfkd_self"), "tfkd_self")
    searched = list(space.params)  # the shipped space's searched keys, in its order
    for child in children:
        config = TrialConfig.from_dict(child.data.params).to_dict()
        # the searched kd_share, from the logged alpha (its params hold kd_share itself)
        config["kd_share"] = float(child.data.params["kd_share"])
        assert child.info.run_name == progress.short_name(config, searched)
        assert len(child.info.run_name) <= 30 and child.info.run_name.startswith("T")
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert files == {"trials.csv", "trials.html", "parallel_coordinates.png"}
    folder = Path(tempfile.mkdtemp(prefix="tfkd-sweep-files-"))
    try:
        table = client.download_artifacts(parent.info.run_id, "trials.csv", str(folder))
        rows = Path(table).read_text().splitlines()
        plot = client.download_artifacts(
            parent.info.run_id, "parallel_coordinates.png", str(folder)
        )
        assert Path(plot).read_bytes().startswith(b"\x89PNG")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert rows[0].split(",")[4:-2] == searched and len(rows) == 3
    assert {row.split(",")[0] for row in rows[1:]} == {c.info.run_name for c in children}


def test_system_metrics_are_logged_per_trial(server, self_sweep):
    _, children = runs_of(server, "tfkd_self-fake-resnet8")
    for child in children:
        assert "system/cpu_utilization_percentage" in child.data.metrics, child.data.metrics
        assert "system/system_memory_usage_megabytes" in child.data.metrics


def test_defective_kd_takes_the_epoch_snapshot_of_the_named_teacher_run(
    server, teacher_sweep, workdir_m
):
    stdout = run_ok(
        f"--mode dekd --teacher resnet8@epoch-1:{TEACHER_RUN} --fixed",
        FAKE,
        mlflow_uri=server,
        cwd=workdir_m,
    )
    (parent,), (child,) = runs_of(server, "dekd-fake-resnet8")
    (teacher,) = [
        v
        for v in MlflowClient(server).search_model_versions("name = 'tfkd-fake-resnet8'")
        if v.tags.get("teacher_run") == TEACHER_RUN and v.tags["kind"] == "snapshot"
    ]
    assert parent.data.tags["teacher_location"] == f"runs:/{teacher.run_id}/snapshots/epoch-1"
    assert child.info.status == "FINISHED"
    assert child.data.tags["teacher_run_id"] == parent.data.tags["teacher_run_id"] == teacher.run_id
    assert child.data.tags["teacher_run"] == TEACHER_RUN
    assert (
        f"[tfkd] teacher resnet8@epoch-1: tfkd-fake-resnet8 version {teacher.version}, the "
        f"epoch-1 snapshot of teacher run {TEACHER_RUN} (MLflow run {teacher.run_id})\n"
    ) in stdout
    # resnet8 has no dekd preset: --fixed says so in one line
    assert "[tfkd] --fixed: the original has no dekd values for resnet8; the mode's defaults\n" in (
        stdout
    )


def test_epoch_n_resolves_within_the_newest_or_the_named_teacher_run(tmp_path):
    """Two teacher runs of one model (--snapshot-epochs alone makes each one fixed trial):
    resnet8@epoch-1 is the newest run's snapshot, resnet8@epoch-1:RUN the named run's (by
    name or run id), and an unknown run is one line naming the runs there are. A private
    SQLite store keeps the shared server's aliases as the other tests left them."""
    from tfkd.core.errors import UserError
    from tfkd.sweep.teachers import TeacherRequest, resolve

    uri = f"sqlite:///{tmp_path / 'teachers.db'}"
    words = "--mode baseline --dataset digits --model resnet8 --epochs 2 --snapshot-epochs 1"
    for name in ("teacher-a", "teacher-b"):
        run_ok(words, name=name, mlflow_uri=uri, cwd=tmp_path)
    client = MlflowClient(uri)
    sweeps = {
        r.info.run_name: r
        for r in client.search_runs(
            [client.get_experiment_by_name("baseline-digits-resnet8").experiment_id]
        )
        if r.data.tags.get("tfkd.kind") == "sweep"
    }
    assert {s.data.tags["search_alg"] for s in sweeps.values()} == {"fixed"}

    def teacher(spec: str):
        return resolve(TeacherRequest("dekd", "digits", "resnet8", teacher=spec), uri)

    snapshots = {
        v.tags["teacher_run"]: v
        for v in client.search_model_versions("name = 'tfkd-digits-resnet8'")
        if v.tags["kind"] == "snapshot"
    }
    assert set(snapshots) == {"teacher-a", "teacher-b"}
    newest = teacher("resnet8@epoch-1")
    assert newest.teacher_run == "teacher-b" and newest.run_id == snapshots["teacher-b"].run_id
    sweep_id = sweeps["teacher-a"].info.run_id
    for run in ("teacher-a", sweep_id):
        named = teacher(f"resnet8@epoch-1:{run}")
        assert named.teacher_run == "teacher-a" and named.run_id == snapshots["teacher-a"].run_id
        assert named.location == f"runs:/{named.run_id}/snapshots/epoch-1"
        assert f"version {snapshots['teacher-a'].version}, the epoch-1 snapshot" in named.describe()
    assert teacher("resnet8:teacher-a").location.endswith("/teacher")  # its final weights
    with pytest.raises(UserError, match="teacher runs that did: teacher-a, teacher-b") as error:
        teacher("resnet8@epoch-1:nope")
    assert "\n" not in str(error.value)


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


def test_mlflow_ui_lists_the_sweep_runs(server, self_sweep):
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tfkd_self-fake-resnet8")
    names = [r.info.run_name for r in client.search_runs([experiment.experiment_id])]
    driver, profile = chrome()
    screenshot = ARTIFACTS / "mlflow_ui_runs.png"
    try:
        driver.get(f"{server}/#/experiments/{experiment.experiment_id}/runs")
        # the runs table first shows the sweep's run, with an expand control for its trials
        assert wait_for(driver, lambda: driver.find_elements("css selector", EXPAND_BUTTON)), (
            "the runs table never showed an expand control"
        )
        missing = expand_until_shown(driver, names)
        tidy_for_screenshot(driver)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    assert len(names) == 3 and not missing, f"not on the page: {missing}"
    assert screenshot.stat().st_size > 10_000


def test_mlflow_ui_opens_a_sweep_on_its_training_runs_with_the_comparison_one_click_away(
    server, self_sweep
):
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tfkd_self-fake-resnet8")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,), children = runs_of(server, "tfkd_self-fake-resnet8")
    found = re.search(r"^\[tfkd\] compare the trials in MLflow: (\S+)$", self_sweep, re.M)
    assert found, self_sweep[-2000:]
    link = found.group(1)
    assert link.startswith(server) and parent.info.run_id in link
    driver, profile = chrome()
    shots = {"trials": ARTIFACTS / "mlflow_ui_trials.png"}
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        # 1. the link tune_main printed: the sweep run's trials table (in the artifact viewer)
        driver.get(link)
        assert wait_for(driver, lambda: driver.find_elements("css selector", "iframe"))
        driver.switch_to.frame(driver.find_elements("css selector", "iframe")[0])
        names = [c.info.run_name for c in children]
        assert wait_for(driver, lambda: all(n in driver.page_source for n in names)), names
        driver.switch_to.default_content()
        tidy_for_screenshot(driver)
        driver.save_screenshot(str(shots["trials"]))
        # 2. one click to the experiment's runs table, on the training side (not GenAI's overview)
        click_text(driver, "Runs")
        assert wait_for(driver, lambda: parent.info.run_name in driver.page_source)
        assert "/runs?" in driver.current_url and "overview" not in driver.current_url
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
