"""The edges of resuming and of Ray: what --resume loads, what a teacher run inherits, which
steps a restarted trial logs, what a data-parallel trial reserves (issue 29)."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from conftest import assert_ok, assert_one_line, runs_of_kind, sqlite_uri, tune_main

# ---------------------------------------------------------------- --resume loads only tfkd's state


class _CreatesAFile:
    """A pickle whose loading creates `path` (what a planted tuner.pkl could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_state_digests_cover_what_ray_unpickles_and_nothing_else(tmp_path):
    from tfkd.sweep.state_files import state_digests

    files = {
        "tuner.pkl": b"a",
        "experiment_state-1.json": b"b",
        "searcher-state-1.pkl": b"c",
        "trial_0/error.pkl": b"d",
        "trial_0/result.json": b"e",  # a trial's results are not unpickled
        "trial_0/checkpoint_000000/x.pkl": b"f",  # checkpoints: torch.load(weights_only=True)
        "tfkd_flags.json": b"g",  # tfkd's own, read as JSON and checked on its own
        "best_config.yaml": b"h",
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    expected = {
        name: hashlib.sha256(files[name]).hexdigest()
        for name in ("experiment_state-1.json", "searcher-state-1.pkl", "trial_0/error.pkl",
                     "tuner.pkl")
    }  # fmt: skip
    assert state_digests(str(tmp_path)) == expected
    assert state_digests(str(tmp_path / "absent")) == {}


def test_a_failed_resume_of_a_finished_sweep_leaves_it_finished(tmp_path):
    """The sweep run of a finished sweep stays FINISHED when a --resume of it fails."""
    from tfkd import tracking

    uri = sqlite_uri(tmp_path)
    options = {"register_teachers": False, "dataset": "fake", "model": "resnet8"}
    first = tracking.start_sweep(uri, "e", "s", {}, outbox_root=str(tmp_path / "1"), **options)
    assert tracking.finish_sweep(first, None, None, status="FINISHED")
    with (
        pytest.raises(RuntimeError),
        tracking.sweep_run(
            uri, "e", "s", {}, resume=True, outbox_root=str(tmp_path / "2"), **options
        ),
    ):
        raise RuntimeError("the restore failed")
    run = MlflowClient(uri).get_run(first.parent_run_id)
    assert run.info.status == "FINISHED"


CHEAPEST = (
    "--mode baseline --dataset fake --model resnet8 --fixed --epochs 1 "
    "--set fake_size=64 --set warmup_epochs=0 --name planted"
)


@pytest.mark.slow
def test_a_planted_or_truncated_tuner_pkl_is_refused_unloaded_and_the_sweep_stays_finished(
    tmp_path,
):
    uri = sqlite_uri(tmp_path)
    assert_ok(tune_main(CHEAPEST, mlflow_uri=uri, cwd=tmp_path))
    tuner_pkl = tmp_path / "ray_results" / "planted" / "tuner.pkl"
    original = tuner_pkl.read_bytes()
    marker = tmp_path / "the planted pickle ran"

    for planted in (pickle.dumps(_CreatesAFile(marker)), original[: len(original) // 2]):
        tuner_pkl.write_bytes(planted)
        done = tune_main(CHEAPEST, mlflow_uri=uri, resume=True, cwd=tmp_path)
        assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
        assert_one_line(done.stderr, "--resume", "tuner.pkl")
        assert not marker.exists(), "the planted tuner.pkl was unpickled"
        sweeps = runs_of_kind(uri, "baseline-fake-resnet8", "sweep")
        assert [r.info.status for r in sweeps] == ["FINISHED"]


# ---------------------------------------------------------------- a config's identity in reports


def test_a_config_run_on_another_gpu_share_or_execution_path_is_the_same_config():
    """Reproducing on another GPU share (or with graph capture, compile, a memory layout) trains
    the same configuration: one report row, and finished (config, seed) pairs are not re-run."""
    from tfkd.analysis.common import config_hash

    base = {"mode": "lsr", "dataset": "fake", "model": "resnet8", "lr": 0.1, "epsilon": 0.1}
    where_or_how_fast = [
        {**base, "gpu_share": 0.25},
        {**base, "gpu_share": 0.5},
        {**base, "gpu_share": 1.0, "cuda_graphs": "off", "compile": True},
        {**base, "channels_last": False, "device": "cpu", "seed": 3},
    ]
    assert len({config_hash(c) for c in where_or_how_fast}) == 1
    assert config_hash({**base, "lr": 0.2}) != config_hash(base)
    assert config_hash({**base, "amp": False}) != config_hash(base)  # another precision


# ---------------------------------------------------------------- --train-teacher's teacher run

STUDENT = [
    *"--mode kd --dataset fake --model resnet8 --teacher resnet8 --train-teacher --fixed".split(),
    *"--protocol paper --epochs 2 --set fake_size=64 --set lr=0.05 --gpus-per-trial 0.5".split(),
    *"--cpus-per-trial 3 --workers-per-trial 2 --max-failures 5 --tracking-grace 7".split(),
    "--system-metrics",
]


def _student(tmp_path: Path, monkeypatch) -> list[str]:
    """The student's command line, as sys.argv holds it when tune_main runs."""
    argv = [*STUDENT, "--storage", str(tmp_path / "results"), "--mlflow-uri", sqlite_uri(tmp_path)]
    monkeypatch.setattr("sys.argv", ["tune_main.py", *argv])
    return argv


def test_the_teacher_run_trains_under_the_students_protocol_resources_and_settings(
    tmp_path, monkeypatch
):
    from tfkd.cli import tune
    from tfkd.cli.parser import parse_args
    from tfkd.sweep import teachers

    args = parse_args(_student(tmp_path, monkeypatch))
    teacher = (teachers.Teacher("resnet8", "best", ""), "kd-student")
    run = tune._teacher_args(args, *teacher)
    assert (run.mode, run.model, run.fixed, run.name) == (
        "baseline",
        "resnet8",
        True,
        "kd-student-teacher",
    )
    assert run.protocol == "paper"
    assert (run.gpus_per_trial, run.cpus_per_trial, run.workers_per_trial) == (0.5, 3.0, 2)
    assert (run.max_failures, run.tracking_grace, run.system_metrics) == (5, 7.0, True)
    assert (run.storage, run.mlflow_uri) == (str(tmp_path / "results"), sqlite_uri(tmp_path))
    assert run.set == ["fake_size=64"], "the student's own training values are not the teacher's"
    warm = tune._teacher_args(parse_args([*STUDENT, "--set", "warmup_epochs=0"]), *teacher)
    assert warm.set == ["fake_size=64", "warmup_epochs=0"]  # the schedule's, as --epochs


def test_ctrl_c_during_the_teacher_run_prints_the_students_command_which_resumes_both(
    tmp_path, monkeypatch, capsys
):
    """The printed command is accepted by the saved flags of the student and of its teacher
    run, and resumes the teacher run under its name."""
    import shlex

    from tfkd.cli import outcome, tune
    from tfkd.cli.parser import parse_args
    from tfkd.sweep import teachers
    from tfkd.sweep.plan import make_plan

    teacher = teachers.Teacher("resnet8", "best", "")
    student = parse_args(_student(tmp_path, monkeypatch))
    student_plan = make_plan(student)  # no --name: a new timestamped one
    tune._check_resume_flags(student, student_plan)  # what the student's prepare saves
    first = tune._teacher_args(student, teacher, student_plan.name)
    tune._check_resume_flags(first, make_plan(first))  # and the teacher run's

    assert outcome.interrupted(first, first.name) == 130
    said = capsys.readouterr().err.strip()
    words = shlex.split(said.split(": python ", 1)[1])
    assert words[0] == "tune_main.py"

    resumed = parse_args(words[1:])
    resumed_plan = make_plan(resumed)
    assert resumed.resume and resumed_plan.name == student_plan.name
    tune._check_resume_flags(resumed, resumed_plan)  # accepted (a UserError otherwise)
    again = tune._teacher_args(resumed, teacher, resumed_plan.name)
    assert again.resume and again.name == first.name
    tune._check_resume_flags(again, make_plan(again))  # accepted


# ---------------------------------------------------------------- a restarted trial's run


@dataclass
class _Record:
    """What a trial's checkpoint carries (tfkd.sweep.record.TrialRecord's fields)."""

    home: Path
    nodes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_accuracy: float = float("-inf")
    best_metric: str = "val_accuracy"

    @property
    def best_weights(self) -> Path:
        return self.home / "best.pt"


TRIAL_CONFIG = {"mode": "lsr", "model": "resnet8", "dataset": "fake", "epochs": 4}


def _sweep(tmp_path: Path):
    from tfkd import tracking

    options = {"register_teachers": False, "dataset": "fake", "model": "resnet8"}
    return tracking.start_sweep(sqlite_uri(tmp_path), "e", "s", {}, **options)


def _attempt(context, record: _Record, accuracies: dict[int, float], box: Path) -> None:
    """One attempt of trial t1: it trains `accuracies` (epoch: val accuracy), then dies."""
    from tfkd.tracking.trials import TrialTracker

    tracker = TrialTracker(context, TRIAL_CONFIG, "t1", "trial_t1", record, box)
    for epoch, accuracy in accuracies.items():
        metrics = {"epoch": epoch, "val_accuracy": accuracy}
        best = accuracy > record.best_accuracy
        if best:
            record.best_epoch, record.best_accuracy = epoch, accuracy
        record.history.append(metrics)
        tracker.on_epoch(metrics, "", best)
    assert tracker.outbox.close(60)


def _trial_run(context):
    from tfkd.tracking import store

    client = MlflowClient(context.uri)
    return store.trial_run(client, context.experiment_id, context.parent_run_id, "t1")


def test_a_restarted_trial_logs_each_best_epoch_once(tmp_path):
    context, record = _sweep(tmp_path), _Record(tmp_path)
    _attempt(context, record, {1: 10.0, 2: 30.0}, tmp_path / "box")
    _attempt(context, record, {3: 20.0}, tmp_path / "box")  # restarted from epoch 2's checkpoint
    _attempt(context, record, {4: 40.0}, tmp_path / "box")  # and again from epoch 3's
    client = MlflowClient(context.uri)
    history = client.get_metric_history(_trial_run(context).info.run_id, "best_epoch_val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 10.0), (2, 30.0), (4, 40.0)]
    epochs = client.get_metric_history(_trial_run(context).info.run_id, "epoch")
    assert sorted(m.step for m in epochs) == [1, 2, 3, 4]


def test_a_node_the_trial_died_on_before_its_first_checkpoint_stays_in_ray_nodes(tmp_path):
    """Node a ran the trial and died before a checkpoint: the restart's record starts afresh on
    node b, whose checkpoint then travels to node c. The run names all three, in order."""
    context = _sweep(tmp_path)
    _attempt(context, _Record(tmp_path, nodes=["a"]), {}, tmp_path / "box")
    on_b = _Record(tmp_path, nodes=["b"])
    _attempt(context, on_b, {1: 10.0}, tmp_path / "box")
    _attempt(context, replace(on_b, nodes=["b", "c"]), {2: 20.0}, tmp_path / "box")
    assert _trial_run(context).data.tags["ray_nodes"] == "a,b,c"
    _attempt(context, replace(on_b, nodes=["b", "c", "b"]), {3: 30.0}, tmp_path / "box")
    assert _trial_run(context).data.tags["ray_nodes"] == "a,b,c,b"


# ---------------------------------------------------------------- Optuna sees epochs


def test_optuna_intermediate_values_are_at_epochs_also_for_a_restored_trial():
    """A trial restored at epoch 3 restarts Ray's training_iteration at 1; its values stay at
    their epochs, the one it ends on too, and a trial stopped before the schedule is PRUNED."""
    import optuna
    from ray import tune

    from tfkd.sweep.tuner import _OptunaSearch

    search = _OptunaSearch(
        8, space={"lr": tune.uniform(0.01, 0.1)}, metric="val_accuracy", mode="max"
    )
    search.suggest("t1")
    for iteration, epoch, accuracy in [(1, 1, 10.0), (2, 2, 20.0), (1, 3, 30.0)]:
        result = {"val_accuracy": accuracy, "epoch": epoch, "training_iteration": iteration}
        search.on_trial_result("t1", result)
    last = {"val_accuracy": 40.0, "epoch": 4, "training_iteration": 2}
    search.on_trial_complete("t1", last)
    (trial,) = search._ot_study.get_trials()
    assert trial.intermediate_values == {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}
    assert trial.state == optuna.trial.TrialState.PRUNED


# ---------------------------------------------------------------- Ray's edges


def test_data_parallel_trials_run_at_most_as_many_at_once_as_the_cluster_has_workers_for(
    monkeypatch,
):
    import ray

    from tfkd.sweep import tuner
    from tfkd.sweep.distributed import trials_that_fit

    assert trials_that_fit({"CPU": 16, "GPU": 4}, {"cpu": 2, "gpu": 1}, 2) == 2  # GPUs bound
    assert trials_that_fit({"CPU": 6, "GPU": 8}, {"cpu": 1, "gpu": 1}, 2) == 3  # CPUs bound
    assert trials_that_fit({"CPU": 1}, {"cpu": 1, "gpu": 0}, 4) == 1  # one, however large
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    spec = SimpleNamespace(
        max_concurrent=None, workers_per_trial=2, cpus_per_trial=2.0, gpus_per_trial=0.0
    )
    assert tuner._concurrency(spec) == 2
    assert tuner._concurrency(replace_namespace(spec, max_concurrent=1)) == 1
    assert tuner._concurrency(replace_namespace(spec, workers_per_trial=1)) is None


def replace_namespace(namespace: SimpleNamespace, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(namespace), **changes})


def test_ray_train_writes_a_data_parallel_trials_checkpoints_where_every_node_reaches(tmp_path):
    from tfkd.sweep.trainable import _on_storage

    home = tmp_path / "results" / "sweep" / "trial_1" / "tfkd"
    shared = str(tmp_path / "results" / "sweep")
    assert _on_storage(shared, "unused", "/tmp/ray/session/trial_1", home) == str(home)
    on_uri = _on_storage("", "s3://bucket/runs/sweep", "/tmp/ray/session/trial_1", home)
    assert on_uri == "s3://bucket/runs/sweep/trial_1/tfkd"


def test_a_ray_without_the_internals_tfkd_needs_is_one_line_naming_the_supported_range(
    monkeypatch,
):
    import ray.train
    from ray.tune.trainable import function_trainable

    from tfkd.core.errors import UserError
    from tfkd.sweep import ray_support

    ray_support.check_ray(workers_per_trial=2)  # the installed Ray has them
    monkeypatch.delattr(ray.train, "UserCallback")  # Ray Train V1 (RAY_TRAIN_V2_ENABLED=0)
    with pytest.raises(UserError, match="--workers-per-trial needs Ray Train V2"):
        ray_support.check_ray(workers_per_trial=2)
    ray_support.check_ray(workers_per_trial=1)  # one worker per trial does not need it
    monkeypatch.delattr(function_trainable, "wrap_function")
    with pytest.raises(UserError) as refused:
        ray_support.check_ray()
    said = str(refused.value)
    assert "wrap_function" in said and ray_support.SUPPORTED_RAY in said and "\n" not in said


@pytest.mark.slow
def test_train_teacher_trains_the_teacher_under_the_students_protocol(tmp_path):
    uri = sqlite_uri(tmp_path)
    student = (
        "--mode kd --dataset fake --model resnet8 --teacher resnet8 --train-teacher --fixed "
        "--protocol paper --epochs 1 --set fake_size=64 --set warmup_epochs=0 --name student"
    )
    assert_ok(tune_main(student, mlflow_uri=uri, cwd=tmp_path))
    (teacher_run,) = runs_of_kind(uri, "baseline-fake-resnet8", "sweep")
    assert teacher_run.info.run_name == "student-teacher"
    assert teacher_run.data.tags["protocol"] == "paper"
    (teacher_trial,) = runs_of_kind(uri, "baseline-fake-resnet8", "trial")
    assert teacher_trial.data.params["protocol"] == "paper"
    assert float(teacher_trial.data.params["val_fraction"]) == 0.0  # trained on the full set
