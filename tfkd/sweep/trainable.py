"""The trial as Ray runs it: `tfkd.core.train.run_trial` behind a thin trainable.

The dataset is loaded once by the driver and shared with every trial through Ray's object store
(one copy per node, read zero-copy). A trial resumes from the newest whole checkpoint it has, and
its process ends only after its training thread has.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tfkd import tracking
from tfkd.core import atomic, data
from tfkd.core.config import TrialConfig
from tfkd.core.train import TrainingFailure, load_dataset, resolve_device
from tfkd.sweep import cluster, distributed
from tfkd.sweep.record import TrialRecord, newest_complete
from tfkd.sweep.spec import FAILED_BY_HYPERPARAMETERS, SweepSpec, storage_uri
from tfkd.sweep.storage import GIVEN_CONFIG_KEY, local_experiment_dir

# ---------------------------------------------------------------- the dataset


def dataset_of(spec: SweepSpec) -> data.Dataset:
    """The dataset that `spec.base_config` names (loaded by the driver, shared with trials)."""
    return load_dataset(TrialConfig.from_dict(spec.base_config))


# ---------------------------------------------------------------- the trainable

TRIAL_HOME = "tfkd"  # inside the trial's results folder: its outbox and best weights
FAILED_MARK = "failed_by_hyperparameters.txt"  # in the trial's home: why its values failed
RESTORED_DIR = "restoring"  # in the trial's home: the checkpoint a restart continues from


def _restore_point(folder: Path, trial_folders: tuple[Path, ...]) -> str | None:
    """The checkpoint folder to continue from when Tune restarts or resumes this trial.

    The one Tune names (fetched into `folder`, in the trial's home: never the temp folder),
    unless the trial's own folders hold a later whole one (Tune's record of the experiment can
    lag behind the trial's last checkpoint when the driver is killed).
    """
    saved = tune.get_checkpoint()
    if saved is None:
        return None
    shutil.rmtree(folder, ignore_errors=True)  # left by a process killed while restoring
    named = saved.to_directory(str(folder))
    written = [path for folder in trial_folders for path in sorted(folder.glob("checkpoint_*"))]
    return str(newest_complete([named, *written]) or named)


def trial_home(experiment_dir: str, trial_dir: str) -> tuple[Path, bool]:
    """The trial's own folder for its outbox and best weights, and whether checkpoints must
    carry the best weights.

    With results on a local (or shared) folder it is the trial's folder there, which every node
    and every reader (the end of the sweep, `replay`, a restarted trial) sees, and which Ray's
    periodic copy of its staging folder never overwrites. With results on a URI storage it is
    the trial's folder on its node, and the best weights travel in the checkpoints.
    """
    if experiment_dir:
        return Path(experiment_dir) / Path(trial_dir).name / TRIAL_HOME, False
    return Path(trial_dir) / TRIAL_HOME, True


def _fail_again_if_failed_by_values(home: Path) -> None:
    """A trial that failed by its hyper-parameters (a non-finite or diverged loss) stays failed
    when `--resume` restarts the sweep's errored trials: it would fail the same way again."""
    mark = home / FAILED_MARK
    if mark.is_file():
        reason = mark.read_text()
        tune.report({FAILED_BY_HYPERPARAMETERS: reason})
        raise TrainingFailure(f"failed by its hyper-parameters before the resume: {reason}")


def device_for(config: Mapping[str, Any], gpus: float) -> str:
    """The device a trial trains on: CUDA when it was given a GPU share, the CPU when it was
    given none (Ray does not hide a node's GPUs from a trial that asked for none), else what the
    config names; run_trial falls back to CPU with a warning when CUDA is missing."""
    if config.get("device", "auto") != "auto":
        return config["device"]
    return "cuda" if gpus > 0 else "cpu"


def trainable(
    config: dict[str, Any],
    packed_dataset: Mapping[str, Any],
    tracking_context: tracking.TrackingContext | None,
    cpus: float,
    gpus: float,
    experiment_dir: str = "",
    workers: int = 1,
    experiment_uri: str = "",
) -> None:
    """The thin Ray trainable: resume point in, run_trial, per-epoch tune.report out.

    With `workers` > 1 the trial trains data-parallel on that many Ray Train workers
    (tfkd.sweep.distributed), reporting here exactly as a single-worker trial.

    Every checkpoint carries the trial's record (epoch history, best weights, nodes), so a
    restarted or resumed trial keeps its best checkpoint and its tracking history. A failure
    caused by the hyper-parameters (non-finite or diverged loss) is reported as such first, so
    the driver does not retry it; anything else (a lost node, a killed worker) is retried.
    """
    config = dict(config.get(GIVEN_CONFIG_KEY, config))  # run_configs nests each config
    torch.set_num_threads(max(1, int(cpus)))
    config["device"] = device_for(config, gpus)
    if gpus > 0:
        config["gpu_share"] = gpus
        cluster.warn_if_time_sliced(resolve_device(config["device"]), gpus)
    context = tune.get_context()
    home, carry_best = trial_home(experiment_dir, context.get_trial_dir())
    _fail_again_if_failed_by_values(home)
    restored = home / RESTORED_DIR
    try:
        resume_dir = _restore_point(restored, (Path(context.get_trial_dir()), home.parent))
        record = TrialRecord.restore(home, resume_dir, carry_best)
        shared = _on_storage(experiment_dir, experiment_uri, context.get_trial_dir(), home)
        runner = distributed.runner_for(workers, cpus, gpus, shared)
        _train(config, packed_dataset, tracking_context, record, resume_dir, runner)
    finally:
        shutil.rmtree(restored, ignore_errors=True)


def _on_storage(experiment_dir: str, experiment_uri: str, trial_dir: str, home: Path) -> str:
    """A folder of the trial's that every node reaches: its home in a local (shared) results
    folder, else its folder at the storage URI."""
    if experiment_dir or not experiment_uri:
        return str(home)
    return f"{experiment_uri.rstrip('/')}/{Path(trial_dir).name}/{TRIAL_HOME}"


def _train(
    config: dict[str, Any],
    packed_dataset: Mapping[str, Any],
    tracking_context: tracking.TrackingContext | None,
    record: TrialRecord,
    resume_dir: str | None,
    runner: distributed.Runner,
) -> None:
    """The trial from its restore point to its last report, tracked in its run; `runner`
    trains it on one process or on Ray Train workers."""
    context = tune.get_context()
    record.ran_on(ray.get_runtime_context().get_node_id())
    tracker = tracking.trial_tracker(
        tracking_context,
        config,
        context.get_trial_id(),
        context.get_trial_name(),
        record,
        record.home / tracking.OUTBOX_DIR,
    )
    uri = tracking_context.uri if tracking_context else None
    config["teacher_checkpoint"] = tracking.local_path(config["teacher_checkpoint"], uri)

    reported: list[int] = []  # the epochs this attempt trained and reported

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        assert checkpoint_dir is not None, "the trial's rank 0 reports each epoch's checkpoint"
        reported.append(int(metrics["epoch"]))
        best = record.add_epoch(metrics, checkpoint_dir)
        tracker.on_epoch(metrics, checkpoint_dir, best)  # queued: never waits on the server
        if metrics["epoch"] == config["epochs"]:
            tracker.on_finish(metrics)  # before tune.report: Tune may end the actor there
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    try:
        runner(config, report, packed_dataset, resume_dir)
        if not reported and _trained_to_the_end(record, config):
            _report_the_end(record, tracker)
    except TrainingFailure as exc:
        atomic.write_text(record.home / FAILED_MARK, str(exc))
        tracker.on_failed(exc)
        tune.report({FAILED_BY_HYPERPARAMETERS: str(exc)})
        raise
    except (SystemExit, KeyboardInterrupt):  # stopped (ASHA, max_t) or the sweep interrupted
        tracker.on_stopped()  # the driver, which knows which, sets the run's status
        raise
    except BaseException as exc:
        tracker.on_failed(exc)
        raise


def _trained_to_the_end(record: TrialRecord, config: Mapping[str, Any]) -> bool:
    return bool(record.history) and record.history[-1].get("epoch") == config["epochs"]


def _report_the_end(record: TrialRecord, tracker) -> None:
    """A trial restored from its last epoch's checkpoint (it finished after the driver was
    killed, before Tune recorded it) has nothing to train: it tells its run and Tune so, with
    that epoch's metrics (Tune would otherwise keep an older epoch's result as the trial's end
    and count it stopped early)."""
    tracker.on_finish(record.history[-1])
    tune.report(dict(record.history[-1]))


# ---------------------------------------------------------------- as Tune runs it


class _StopsCleanly(tune.Trainable):
    """Mixin for the function trainable: stop() waits for the training thread to end.

    Tune runs a function trainable in a daemon thread; when ASHA stops a trial, the actor's
    stop() tells that thread to exit (tune.report raises SystemExit in it) and returns at once,
    and the actor process exits. A daemon thread still running at interpreter exit is ended
    by pthread_exit, whose forced unwinding through C++ frames (torch, MLflow's SQLite and HTTP
    clients) aborts the process: a SIGABRT stack trace and "Fatal Python error: Aborted". Waiting
    here lets the thread finish (the trainable closes its MLflow run) before the process exits.
    """

    STOP_GRACE_S = 120.0

    def restore(self, checkpoint_path):
        return super().restore(still_on_storage(checkpoint_path))

    def cleanup(self) -> None:
        thread = training_thread()
        try:
            super().cleanup()
        finally:
            if thread is not None and thread.is_alive():
                thread.join(self.STOP_GRACE_S)


def still_on_storage(result):
    """The checkpoint Tune restores a trial from, or the trial's newest whole one when that is
    gone: the experiment state saved before a driver was killed can lag two or more epochs
    behind a trial with short epochs, and name a checkpoint the keep-the-latest rule deleted
    (Ray would fail the trial, and every retry, with "does not exist on storage anymore")."""
    checkpoint = getattr(result, "checkpoint", None)
    if checkpoint is None or checkpoint.filesystem.type_name != "local":
        return result
    named = Path(checkpoint.path)
    if not named.exists():
        newest = newest_complete(sorted(named.parent.glob("checkpoint_*")))
        if newest is not None:
            result.checkpoint = tune.Checkpoint.from_directory(str(newest))
    return result


def training_thread():
    """The thread running this actor's function trainable, or None where Ray's private session
    API (ray.train._internal.session, pinned by pyproject's ray bound) no longer offers it: the
    stop is then Ray's own, which may abort the process as it exits (logged once)."""
    try:
        from ray.train._internal.session import get_session

        return getattr(get_session(), "training_thread", None)
    except (ImportError, AttributeError):
        warnings.warn(
            "this Ray version has no ray.train._internal.session.get_session: a stopped "
            "trial's process may abort as it exits; install a ray[tune] within tfkd's bounds",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _stoppable(fn):
    """The function trainable `fn` as a Tune trainable class whose stop() ends cleanly."""
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(fn)
    return type(base.__name__, (_StopsCleanly, base), {})


def with_resources(spec: SweepSpec, packed: Mapping[str, Any], resources: dict[str, float]):
    """The trainable of a sweep's trials: the shared dataset and the sweep's tracking bound to
    it, a stop that ends cleanly, and the CPUs and GPUs each trial asks for."""
    return tune.with_resources(
        _stoppable(
            tune.with_parameters(
                trainable,
                packed_dataset=packed,
                tracking_context=spec.tracking,
                cpus=resources["cpu"],
                gpus=resources["gpu"],
                experiment_dir=local_experiment_dir(spec.storage, spec.name),
                workers=spec.workers_per_trial,
                experiment_uri=f"{storage_uri(spec.storage).rstrip('/')}/{spec.name}",
            )
        ),
        distributed.trial_resources(resources, spec.workers_per_trial),
    )
