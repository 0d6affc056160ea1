"""Ray Tune sweeps: Optuna (TPE) or random/grid search, ASHA early stopping, fractional GPUs.

The only module of tfkd that imports Ray. A trial is `tfkd.core.train.run_trial` behind a thin
trainable; the dataset is loaded once by the driver and shared with every trial through Ray's
object store (one copy per node, read zero-copy).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tfkd import tracking
from tfkd.core import checkpoint, data
from tfkd.core.config import TrialConfig
from tfkd.core.errors import UserError
from tfkd.core.train import TrainingFailure, load_dataset, resolve_device, run_trial
from tfkd.sweep import cluster, watchdog
from tfkd.sweep import status as progress
from tfkd.sweep.search_space import Param, SearchSpace
from tfkd.sweep.storage import DEFAULT_STORAGE, GIVEN_CONFIG_KEY
from tfkd.tracking import sweep_files as sweep_report

METRIC = "val_accuracy"
MODE = "max"
# The latest checkpoints are kept (restore always finds the one the experiment state names);
# the best weights travel inside every checkpoint (checkpoint.TrialRecord).
CHECKPOINTS_KEPT = 2
# Set when Ctrl-C interrupted the sweep in this process. Module-level: a resumed Tuner brings
# back its own (unpickled) copy of the callback that sets it.
INTERRUPTED = threading.Event()
# The result a trial reports before failing because of its hyper-parameters. It has no
# validation accuracy, so Tune's strict metric check is off (a sweep's trials always report it:
# tune_main refuses val_fraction=0), ASHA passes over it and the Optuna searcher ignores it.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
FAILED_BY_HYPERPARAMETERS = "tfkd_failed_by_hyperparameters"
# Per-epoch checkpoints with num_to_keep make Tune warn about state snapshots every few seconds.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The experiment state (which checkpoint each trial resumes from) is saved at least every second,
# so it never names a checkpoint that the keep-the-latest rule has already deleted.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
# Ray's newer output engine prints its configuration box and a TensorBoard hint even when silent;
# tfkd prints its own status table (tfkd.sweep.status), so the classic engine at verbosity 0.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


# ---------------------------------------------------------------- the cluster


def cluster_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS, else None (a local Ray started for this sweep)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at host:port."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"no Ray cluster reachable at {address} ({exc.strerror or exc}); start one with "
            f"'ray start --head --port={port}' or fix --address / RAY_ADDRESS"
        ) from None


def connect(address: str | None, *, num_cpus: int | None = None) -> str:
    """Join an existing cluster (token authentication handled) or start a local Ray."""
    target = cluster_address(address)
    if target is None or target == "local":
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=progress.forward_trial_output(),
            configure_logging=True,
            logging_level="WARNING",
        )
        watchdog.start_for(os.getpid())  # a killed driver's local Ray is stopped with it
        return "local"
    check_reachable(target)
    try:
        ray.init(address=target, logging_level="WARNING")
    except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError...
        hint = (
            "the cluster uses token authentication: set RAY_AUTH_MODE=token and provide the "
            "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        )
        raise UserError(f"cannot join the Ray cluster at {target}: {hint}") from exc
    return target


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


# ---------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs; built and validated by tune_main before Ray starts."""

    name: str
    base_config: dict[str, Any]
    space: SearchSpace
    search_alg: str = "optuna"
    num_samples: int = 8
    grace_period: int = 1
    seed: int = 0
    fixed: bool = False
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    storage: str = DEFAULT_STORAGE
    resume: bool = False
    max_failures: int = 2
    tracking: tracking.TrackingContext | None = None
    first_point: dict[str, Any] = field(default_factory=dict)
    callbacks: tuple[tune.Callback, ...] = ()  # extra Tune callbacks (benchmarks, tooling)
    verbose: bool = False  # the trials' own output (epoch lines) on the terminal too
    trial_names: tuple[str, ...] = ()  # run_configs: one name per given config

    @property
    def epochs(self) -> int:
        return int(self.base_config["epochs"])


@dataclass(frozen=True)
class SweepResult:
    experiment_path: str
    best_config: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    best_trial_id: str | None
    trials: int
    failed: int
    stopped_early: int
    trial_metrics: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # trial id -> reason, one line
    failed_by_infrastructure: int = 0  # failures not caused by the hyper-parameters
    interrupted: bool = False  # Ctrl-C: resumable with --resume
    tracking_pending: list[str] = field(default_factory=list)  # outboxes not yet sent

    @property
    def complete(self) -> bool:
        """Every trial ran to its end (finished, stopped by ASHA, or failed by its values)."""
        return not self.interrupted and not self.failed_by_infrastructure

    @property
    def status(self) -> str:
        """The sweep run's MLflow status."""
        if self.interrupted:
            return "KILLED"
        return "FINISHED" if self.complete and self.failed < self.trials else "FAILED"


def storage_uri(storage: str) -> str:
    """Ray wants absolute local paths; URIs (s3://, gs://, ...) go to pyarrow's filesystems."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


SAMPLERS: dict[str, Callable[[Param], Any]] = {
    "uniform": lambda p: tune.uniform(p.low, p.high),
    "loguniform": lambda p: tune.loguniform(p.low, p.high),
    "int": lambda p: tune.randint(int(p.low), int(p.high) + 1),
    "logint": lambda p: tune.lograndint(int(p.low), int(p.high) + 1),
    "quniform": lambda p: tune.quniform(p.low, p.high, p.q),
    "choice": lambda p: tune.choice(list(p.values)),
}


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The fixed trial config plus a Tune distribution (or grid) for every searched key."""
    space = dict(spec.base_config)
    if spec.fixed:
        return {**space, **spec.first_point}
    for name, param in spec.space.params.items():
        if spec.search_alg == "grid":
            space[name] = tune.grid_search(param.grid())
        else:
            space[name] = SAMPLERS[param.distribution](param)
    return space


def _concurrency(spec: SweepSpec) -> int | None:
    return spec.max_concurrent if spec.max_concurrent and spec.max_concurrent > 0 else None


def searcher(spec: SweepSpec):
    """Optuna's seeded multivariate TPE, starting from the paper's preset; or random/grid."""
    points = [spec.first_point] if spec.first_point and spec.space.params else None
    if spec.fixed or spec.search_alg == "grid":
        return BasicVariantGenerator(max_concurrent=_concurrency(spec) or 0)
    if spec.search_alg == "random":
        return BasicVariantGenerator(
            points_to_evaluate=points,
            random_state=spec.seed,
            max_concurrent=_concurrency(spec) or 0,
        )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
        alg = _OptunaSearch(sampler=sampler, points_to_evaluate=points)
    limit = _concurrency(spec)
    return ConcurrencyLimiter(alg, max_concurrent=limit) if limit else alg


class _OptunaSearch(OptunaSearch):
    """Optuna's searcher, deaf to the one result that only says a trial failed by its values."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def scheduler(spec: SweepSpec) -> ASHAScheduler:
    """ASHA on the validation accuracy, with time measured in epochs."""
    return ASHAScheduler(
        time_attr="epoch",
        max_t=spec.epochs,
        grace_period=min(spec.grace_period, spec.epochs),
        reduction_factor=2,
    )


def resources(spec: SweepSpec) -> dict[str, float]:
    gpus = spec.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if cluster_gpus() > 0 else 0.0
    return {"cpu": spec.cpus_per_trial, "gpu": gpus}


# ---------------------------------------------------------------- sharing the dataset


def pack_dataset(dataset: data.Dataset) -> dict[str, Any]:
    """Numpy arrays, so that trials read them zero-copy from the object store."""

    def pack_split(split: data.Split) -> dict[str, Any]:
        return {
            "images": split.images.numpy(),
            "labels": split.labels.numpy(),
            "mean": split.mean,
            "std": split.std,
            "augment": split.augment,
        }

    return {
        "name": dataset.name,
        "num_classes": dataset.num_classes,
        **{s: pack_split(getattr(dataset, s)) for s in ("train", "val", "test")},
    }


def unpack_dataset(packed: Mapping[str, Any]) -> data.Dataset:
    def unpack_split(p: Mapping[str, Any]) -> data.Split:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only shared memory: loaders never write to it
            images = torch.from_numpy(np.asarray(p["images"]))
            labels = torch.from_numpy(np.asarray(p["labels"]))
        return data.Split(
            images=images,
            labels=labels,
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
            augment=tuple(p["augment"]),
        )

    return data.Dataset(
        name=packed["name"],
        num_classes=packed["num_classes"],
        **{s: unpack_split(packed[s]) for s in ("train", "val", "test")},
    )


def dataset_of(spec: SweepSpec) -> data.Dataset:
    """The dataset that `spec.base_config` names (loaded by the driver, shared with trials)."""
    return load_dataset(TrialConfig.from_dict(spec.base_config))


# ---------------------------------------------------------------- the trainable


def _restore_point() -> str | None:
    """The checkpoint folder to continue from when Tune restarts or resumes this trial.

    The one Tune names, unless the trial's own folder holds a later whole one (Tune's record
    of the experiment can lag behind the trial's last checkpoint when the driver is killed).
    """
    saved = tune.get_checkpoint()
    if saved is None:
        return None
    named = saved.to_directory(tempfile.mkdtemp(prefix="tfkd-resume-"))
    written = Path(tune.get_context().get_trial_dir()).glob("checkpoint_*")
    return str(checkpoint.newest_complete([named, *sorted(written)]) or named)


def _device_for(config: Mapping[str, Any], gpus: float) -> str:
    """A trial given a GPU share asks for CUDA; run_trial falls back to CPU with a warning."""
    return "cuda" if gpus > 0 and config.get("device", "auto") == "auto" else config["device"]


def trainable(
    config: dict[str, Any],
    packed_dataset: Mapping[str, Any],
    tracking_context: tracking.TrackingContext | None,
    cpus: float,
    gpus: float,
) -> None:
    """The thin Ray trainable: resume point in, run_trial, per-epoch tune.report out.

    Every checkpoint carries the trial's record (epoch history, best weights, nodes), so a
    restarted or resumed trial keeps its best checkpoint and its tracking history. A failure
    caused by the hyper-parameters (non-finite or diverged loss) is reported as such first, so
    the driver does not retry it; anything else (a lost node, a killed worker) is retried.
    """
    config = dict(config.get(GIVEN_CONFIG_KEY, config))  # run_configs nests each config
    torch.set_num_threads(max(1, int(cpus)))
    context = tune.get_context()
    resume_dir = _restore_point()
    record = checkpoint.TrialRecord.restore(tempfile.mkdtemp(prefix="tfkd-record-"), resume_dir)
    record.ran_on(ray.get_runtime_context().get_node_id())
    tracker = tracking.trial_tracker(
        tracking_context,
        config,
        context.get_trial_id(),
        context.get_trial_name(),
        record,
        Path(context.get_trial_dir()) / tracking.OUTBOX_DIR,
    )
    uri = tracking_context.uri if tracking_context else None
    config["teacher_checkpoint"] = tracking.local_path(config["teacher_checkpoint"], uri)
    config["device"] = _device_for(config, gpus)
    if gpus > 0:
        config["gpu_share"] = gpus
        cluster.warn_if_time_sliced(resolve_device(config["device"]), gpus)

    def report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
        best = record.add_epoch(metrics, checkpoint_dir)
        tracker.on_epoch(metrics, checkpoint_dir, best)  # queued: never waits on the server
        if metrics["epoch"] == config["epochs"]:
            tracker.on_finish(metrics)  # before tune.report: Tune may end the actor there
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    try:
        run_trial(config, report, dataset=unpack_dataset(packed_dataset), resume_from=resume_dir)
    except TrainingFailure as exc:
        tracker.on_failed(exc)
        tune.report({FAILED_BY_HYPERPARAMETERS: str(exc)})
        raise
    except (SystemExit, KeyboardInterrupt):  # stopped (ASHA, max_t) or the sweep interrupted
        tracker.on_stopped()  # the driver, which knows which, sets the run's status
        raise
    except BaseException as exc:
        tracker.on_failed(exc)
        raise


class _SweepCallback(tune.Callback):
    """The driver's view of the trials: retries, interruption, and MLflow runs left open.

    * A trial whose failure came from its hyper-parameters is not retried.
    * Ctrl-C (SIGINT): Tune stops the sweep gracefully and saves its state; this notices it,
      so the sweep is reported as interrupted (never as a success).
    * Runs whose trial died or was stopped without closing them are closed here.
    """

    def __init__(self, context: tracking.TrackingContext | None) -> None:
        self.context = context

    def setup(self, **info) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler):  # Tune installs its own handler only on the main thread
            return

        def notice_interrupt(signum, frame) -> None:
            INTERRUPTED.set()
            tune_handler(signum, frame)

        signal.signal(signal.SIGINT, notice_interrupt)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if FAILED_BY_HYPERPARAMETERS in result:
            trial.max_failures = 0  # retrying the same hyper-parameters fails the same way

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        tracking.close_trial_run(self.context, trial.trial_id, "FAILED")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Tune may end a stopped trial's process before the trial could close its run."""
        if INTERRUPTED.is_set():
            return  # not finished: the sweep marks its run KILLED
        epochs = trial.config.get(GIVEN_CONFIG_KEY, trial.config).get("epochs", 0)
        last = (trial.last_result or {}).get("epoch", 0)
        tracking.close_trial_run(
            self.context, trial.trial_id, "FINISHED", stopped_early=last < epochs
        )


def _trial_name(trial) -> str:
    """Short folders (Ray's default folder name lists the whole config)."""
    return f"trial_{trial.trial_id}"


def _trial_namer(spec: SweepSpec, configs: list[dict[str, Any]] | None = None):
    """Trials named by what differs between them ('T7.5 a.89 p.98 m7.6 sref'), in the status
    table and in MLflow; given configs by `spec.trial_names`."""
    keys = list(spec.space.params)
    seen: dict[str, int] = {}

    def name(trial) -> str:
        config = trial.config.get(GIVEN_CONFIG_KEY, trial.config)
        if configs and spec.trial_names and config in configs:
            return spec.trial_names[configs.index(config)]
        short = progress.short_name(config, keys) or "trial"
        seen[short] = seen.get(short, 0) + 1
        return short if seen[short] == 1 else f"{short} #{seen[short]}"

    return name


def _epochs_of(trial) -> int:
    return int(trial.config.get(GIVEN_CONFIG_KEY, trial.config).get("epochs", 0))


class _ProgressCallback(tune.Callback):
    """Feeds the sweep's status table (tfkd.sweep.status) and prints it, throttled."""

    def __init__(self, status: progress.SweepStatus) -> None:
        self.status = status

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.status.on_start(trial.trial_id, str(trial), _epochs_of(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.status.on_result(trial.trial_id, str(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.status.on_complete(trial.trial_id, str(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.status.on_error(trial.trial_id, str(trial))
        print(f"[tfkd] trial {trial} failed; its error is in {trial.path}/error.txt", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        self.status.maybe_print()

    def on_experiment_end(self, trials, **info) -> None:
        self.status.finish()


def _progress(spec: SweepSpec, total: int | None) -> _ProgressCallback:
    status = progress.SweepStatus(spec.name, total or 0, spec.epochs, drain_s=spec.verbose * 2.0)
    return _ProgressCallback(status)


class _StopsCleanly:
    """Mixin for the function trainable: stop() waits for the training thread to end.

    Tune runs a function trainable in a daemon thread; when ASHA stops a trial, the actor's
    stop() tells that thread to exit (tune.report raises SystemExit in it) and returns at once,
    and the actor process exits. A daemon thread still running at interpreter exit is ended
    by pthread_exit, whose forced unwinding through C++ frames (torch, MLflow's SQLite and HTTP
    clients) aborts the process: a SIGABRT stack trace and "Fatal Python error: Aborted". Waiting
    here lets the thread finish (the trainable closes its MLflow run) before the process exits.
    """

    STOP_GRACE_S = 120.0

    def cleanup(self) -> None:
        from ray.train._internal.session import get_session

        session = get_session()
        thread = getattr(session, "training_thread", None)
        try:
            super().cleanup()
        finally:
            if thread is not None and thread.is_alive():
                thread.join(self.STOP_GRACE_S)


def _stoppable(fn):
    """The function trainable `fn` as a Tune trainable class whose stop() ends cleanly."""
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(fn)
    return type(base.__name__, (_StopsCleanly, base), {})


def _trainable_with_resources(spec: SweepSpec, packed: Mapping[str, Any]):
    res = resources(spec)
    return tune.with_resources(
        _stoppable(
            tune.with_parameters(
                trainable,
                packed_dataset=packed,
                tracking_context=spec.tracking,
                cpus=res["cpu"],
                gpus=res["gpu"],
            )
        ),
        res,
    )


def _run_config(spec: SweepSpec, total: int | None = None) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage_uri(spec.storage),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        callbacks=[_SweepCallback(spec.tracking), *spec.callbacks, _progress(spec, total)],
        verbose=0,  # tfkd's own status table (tfkd.sweep.status) instead of Ray's
    )


def _restored(spec: SweepSpec, fn) -> tune.Tuner:
    experiment = f"{storage_uri(spec.storage).rstrip('/')}/{spec.name}"
    if not tune.Tuner.can_restore(experiment):
        raise UserError(
            f"--resume: no experiment to resume at {experiment}; run without "
            "--resume first (or fix --name / --storage)"
        )
    return tune.Tuner.restore(
        experiment, trainable=fn, resume_unfinished=True, resume_errored=True, restart_errored=False
    )


def _tuner(spec: SweepSpec, packed: Mapping[str, Any]) -> tune.Tuner:
    fn = _trainable_with_resources(spec, packed)
    if spec.resume:
        return _restored(spec, fn)
    tune_config = tune.TuneConfig(
        metric=METRIC,
        mode=MODE,
        search_alg=searcher(spec),
        scheduler=scheduler(spec),
        num_samples=1 if spec.fixed else spec.num_samples,
        max_concurrent_trials=_concurrency(spec) if spec.search_alg != "optuna" else None,
        reuse_actors=False,
        trial_name_creator=_trial_namer(spec),
        trial_dirname_creator=_trial_name,
    )
    total = 1 if spec.fixed else spec.num_samples
    if spec.search_alg == "grid" and not spec.fixed:
        total = spec.num_samples * math.prod(len(p.grid()) for p in spec.space.params.values())
    return tune.Tuner(
        fn,
        param_space=param_space(spec),
        tune_config=tune_config,
        run_config=_run_config(spec, total),
    )


def _is_full_length(metrics: Mapping[str, Any], epochs: int) -> bool:
    return int(metrics.get("epoch", 0)) >= epochs


def _trial_id(result: tune.Result) -> str:
    return Path(result.path).name.removeprefix("trial_")


def _failure_reason(result: tune.Result) -> str:
    """One line: the reason a trial reported, else the last line of its error."""
    if FAILED_BY_HYPERPARAMETERS in (result.metrics or {}):
        return str(result.metrics[FAILED_BY_HYPERPARAMETERS])
    lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
    return lines[-1] if lines else result.error.__class__.__name__


def _summarise(grid: tune.ResultGrid, spec: SweepSpec, interrupted: bool) -> SweepResult:
    finished = [r for r in grid if r.error is None and r.metrics and METRIC in r.metrics]
    full = [r for r in finished if _is_full_length(r.metrics, spec.epochs)]
    candidates = full or finished
    best = max(candidates, key=lambda r: r.metrics.get(METRIC, -math.inf), default=None)
    failed = [r for r in grid if r.error is not None]
    keep = ("trial_id", "epoch", METRIC, "test_accuracy")
    return SweepResult(
        experiment_path=grid.experiment_path,
        best_config=dict(best.config.get(GIVEN_CONFIG_KEY, best.config)) if best else None,
        best_metrics=dict(best.metrics) if best else None,
        best_trial_id=best.metrics.get("trial_id") if best else None,
        trials=len(grid),
        failed=len(failed),
        stopped_early=len(finished) - len(full),
        trial_metrics=[{k: r.metrics.get(k) for k in keep} for r in finished],
        failures={_trial_id(r): _failure_reason(r) for r in failed},
        failed_by_infrastructure=sum(
            1 for r in failed if FAILED_BY_HYPERPARAMETERS not in (r.metrics or {})
        ),
        interrupted=interrupted,
    )


def _searched(spec: SweepSpec) -> dict[str, Param]:
    """The keys the sweep varies (none for --fixed: one trial at the preset)."""
    return {} if spec.fixed else dict(spec.space.params)


def _trial_state(result: tune.Result, epochs: int) -> str:
    if result.error is not None:
        return "FAILED"
    return "DONE" if _is_full_length(result.metrics or {}, epochs) else "STOPPED"


def trial_rows(grid: tune.ResultGrid, spec: SweepSpec) -> list[sweep_report.TrialRow]:
    """Every trial at its end: name, searched values, state and last metrics."""
    keys = list(_searched(spec))
    rows = []
    for result in grid:
        config = result.config.get(GIVEN_CONFIG_KEY, result.config) if result.config else {}
        metrics = result.metrics or {}
        rows.append(
            sweep_report.TrialRow(
                name=progress.short_name(config, keys) or Path(result.path).name,
                trial_id=str(metrics.get("trial_id", Path(result.path).name)),
                state=_trial_state(result, spec.epochs),
                epoch=int(metrics.get("epoch", 0)),
                val_accuracy=metrics.get(METRIC),
                test_accuracy=metrics.get("test_accuracy"),
                values={k: config[k] for k in keys if k in config},
            )
        )
    return rows


def _log_sweep_report(spec: SweepSpec, grid: tune.ResultGrid) -> None:
    """The sweep run's trials table, parallel-coordinates plot and counts (sweep_files)."""
    if spec.tracking is None:
        return
    rows = trial_rows(grid, spec)
    files = sweep_report.files(spec.name, rows, _searched(spec), spec.epochs)
    tracking.log_sweep_report(spec.tracking, sweep_report.sweep_metrics(rows), files)


def _fit(tuner: tune.Tuner, spec: SweepSpec, record_best: bool) -> SweepResult:
    """Run the Tuner; close the sweep's run as what happened (never FINISHED when interrupted)."""
    INTERRUPTED.clear()
    grid = tuner.fit()
    result = _summarise(grid, spec, interrupted=INTERRUPTED.is_set())
    local = "://" not in result.experiment_path
    # trials that ended while the tracking server was down: their writes go first, if it is back
    pending = set(tracking.flush_pending(result.experiment_path)) if local else set()
    best_id = result.best_trial_id if record_best and not result.interrupted else None
    if best_id is not None:
        _log_sweep_report(spec, grid)
    sent = tracking.finish_sweep(
        spec.tracking, best_id, result.best_metrics if best_id else None, status=result.status
    )
    if not sent and spec.tracking is not None:
        pending.add(tracking.sweep_outbox(spec.tracking))
    return replace(result, tracking_pending=sorted(map(str, pending)))


def run_sweep(spec: SweepSpec, dataset: data.Dataset | None = None) -> SweepResult:
    """Run (or resume) a sweep on the connected cluster and return its summary."""
    dataset = dataset or dataset_of(spec)
    return _fit(_tuner(spec, pack_dataset(dataset)), spec, record_best=True)


def run_configs(
    spec: SweepSpec, configs: list[dict[str, Any]], dataset: data.Dataset | None = None
) -> SweepResult:
    """Run given trial configs (e.g. best configs x seeds) as one Tune run: no search, no ASHA.

    `spec.base_config` names the dataset to share; `spec.resume` continues an interrupted run.
    """
    dataset = dataset or dataset_of(spec)
    fn = _trainable_with_resources(spec, pack_dataset(dataset))
    if spec.resume:
        tuner = _restored(spec, fn)
    else:
        tuner = tune.Tuner(
            fn,
            param_space={GIVEN_CONFIG_KEY: tune.grid_search(configs)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=_concurrency(spec),
                reuse_actors=False,
                trial_name_creator=_trial_namer(spec, configs),
                trial_dirname_creator=_trial_name,
            ),
            run_config=_run_config(spec, len(configs)),
        )
    return _fit(tuner, spec, record_best=False)


@contextlib.contextmanager
def session(address: str | None, *, num_cpus: int | None = None):
    """Connect for the duration of a block, always disconnecting."""
    where = connect(address, num_cpus=num_cpus)
    try:
        yield where
    finally:
        disconnect()
