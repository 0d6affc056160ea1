"""Trials larger than one worker: each trial runs data-parallel on N Ray Train workers.

`--workers-per-trial N` (N > 1) makes a Tune trial start a Ray Train `TorchTrainer` with N
workers (torch.distributed: NCCL on GPUs, gloo on CPUs; each worker holds `cpus_per_trial` CPUs
and `gpus_per_trial` GPUs). Every worker runs `tfkd.core.train.run_trial` on its shard of
each global batch (tfkd.core.parallel); rank 0 alone writes the epoch's checkpoint. Ray Train's
controller hands each epoch's (rank 0 metrics, checkpoint) to the Tune trial through a queue, and
the trial reports them exactly as a single-worker trial does (its record, MLflow through the
trial's outbox, tune.report with the checkpoint): Optuna, ASHA, resume and the fault handling
of tfkd.sweep are unchanged. A worker that dies fails the Ray Train run; the trial then fails
as infrastructure, and Tune restarts it from its last checkpoint (FailureConfig.max_failures).

N = 1 keeps today's trial (fractional GPUs, several trials per GPU): `runner_for(1)` is
`run_local`.

Ray Train V2 (the default of the Ray versions tfkd supports) schedules a trainer's workers
outside the Tune trial's own reservation, so the trial reserves almost nothing and the sweep
runs at most as many trials at once as the cluster has workers for (`trials_that_fit`): the
sampler proposes each trial when it can start, not all of them blind at the start. Ray Train's
checkpoints go to the sweep's results folder (or URI), which every node reaches.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from tfkd.core.errors import UserError
from tfkd.core.steps import TrainingFailure
from tfkd.core.train import Report, run_trial

Runner = Callable[[dict[str, Any], Report, Mapping[str, Any], "str | None"], None]
_DONE = "__tfkd_done__"
POLL_S = 1.0


def run_local(
    config: dict[str, Any], report: Report, packed: Mapping[str, Any], resume: str | None
) -> None:
    """The single-worker trial: run_trial in the trial's own process."""
    from tfkd.core.data_sharing import unpack_dataset

    run_trial(config, report, dataset=unpack_dataset(packed), resume_from=resume)


def check_data_parallel() -> None:
    """UserError unless this Ray can run data-parallel trials (before anything starts): they
    need Ray Train V2's public callback class (the controller calls it after each report)."""
    try:
        from ray.train import UserCallback  # noqa: F401  (whether it is there)
    except ImportError:
        raise UserError(
            "--workers-per-trial needs Ray Train V2 (ray[tune]>=2.60,<3, with "
            "RAY_TRAIN_V2_ENABLED unset or 1); install it or train each trial on one worker"
        ) from None


def _to_trial(queue: Queue) -> Any:
    """The callback that runs in Ray Train's controller: each epoch's rank-0 metrics and
    checkpoint to the trial."""
    check_data_parallel()
    from ray.train import UserCallback

    class ToTrial(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:  # noqa: ANN001
            queue.put((dict(metrics[0]), checkpoint))

    return ToTrial()


def _worker_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: run_trial on its shard; every rank reports (rank 0 with a
    checkpoint)."""
    from tfkd.core.data_sharing import unpack_dataset

    torch.set_num_threads(max(1, int(loop["threads"])))
    config = dict(loop["config"])
    if loop["gpus"] > 0:
        config["device"] = str(ray.train.torch.get_device())

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        saved = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=saved)

    packed = ray.get(loop["dataset"])
    run_trial(config, report, dataset=unpack_dataset(packed), resume_from=loop["resume"])


def _trainer(config: dict[str, Any], packed_ref: Any, resume: str | None, queue: Queue,
             workers: int, cpus: float, gpus: float, storage: str,
             name: str) -> TorchTrainer:  # fmt: skip
    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    return TorchTrainer(
        _worker_loop,
        train_loop_config={
            "config": config,
            "dataset": packed_ref,
            "resume": resume,
            "threads": cpus,
            "gpus": gpus,
        },  # fmt: skip
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=0),  # Tune restarts the trial instead
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_to_trial(queue)],
        ),
    )


def _first_training_failure(exc: BaseException) -> BaseException:
    """The worker's own TrainingFailure inside Ray Train's error, so it is not retried."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, TrainingFailure):
            return cause
        if isinstance(failure, TrainingFailure):
            return failure
    return exc


def run_data_parallel(
    config: dict[str, Any],
    report: Report,
    packed: Mapping[str, Any],
    resume: str | None,
    *,
    workers: int,
    cpus: float,
    gpus: float,
    storage: str,
) -> None:
    """Train the trial on `workers` Ray Train workers; `report` sees each epoch once, in order.

    `storage` is a folder (or URI) of the trial's on the sweep's storage, which every node
    reaches: Ray Train's checkpoints go there, under a name of this attempt's own, and are
    removed when the attempt ends (the trial's own checkpoints hold each epoch).
    """
    queue = Queue(actor_options={"num_cpus": 0})
    attempt = f"data-parallel-{uuid.uuid4().hex[:8]}"
    packed_ref = ray.put(dict(packed))
    trainer = _trainer(config, packed_ref, resume, queue, workers, cpus, gpus, storage, attempt)
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the trial's thread below
            outcome["error"] = exc
        finally:
            queue.put((_DONE, None))

    thread = threading.Thread(target=fit, name="tfkd-data-parallel", daemon=True)
    thread.start()
    try:
        _drain(queue, report)
        thread.join()
    finally:
        _remove(storage, attempt)
    if "error" in outcome:
        raise _first_training_failure(outcome["error"])


def _remove(storage: str, name: str) -> None:
    """Delete Ray Train's folder of one attempt, locally or at a URI."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(_uri(storage))
    try:
        fs.delete_dir(f"{path.rstrip('/')}/{name}")
    except (FileNotFoundError, OSError):
        pass


def _uri(storage: str) -> str:
    return storage if "://" in storage else f"file://{storage}"


def _drain(queue: Queue, report: Report) -> None:
    """Hand every epoch the controller queued to `report` until the run has ended; a
    checkpoint on a remote storage is fetched into a local folder for the time of its report."""
    while True:
        try:
            metrics, checkpoint = queue.get(timeout=POLL_S)
        except Empty:
            continue
        if metrics == _DONE:
            return
        if checkpoint is None or checkpoint.filesystem.type_name == "local":
            report(metrics, checkpoint.path if checkpoint else None)
            continue
        local = tempfile.mkdtemp(prefix="tfkd-dp-checkpoint-")
        try:
            report(metrics, checkpoint.to_directory(local))
        finally:
            shutil.rmtree(local, ignore_errors=True)


def runner_for(workers: int, cpus: float, gpus: float, storage: str = "") -> Runner:
    """run_local for one worker per trial, else run_data_parallel on `workers` workers with
    Ray Train's checkpoints under `storage` (a folder or URI every node reaches)."""
    if workers <= 1:
        return run_local
    return partial(run_data_parallel, workers=workers, cpus=cpus, gpus=gpus, storage=storage)


def trial_resources(resources: dict[str, float], workers: int) -> dict[str, float]:
    """What Tune reserves for a trial: its resources, or nothing for a data-parallel trial,
    whose Ray Train workers reserve theirs (the trial's own process only waits on them; the
    sweep's concurrency is bounded by `trials_that_fit` instead)."""
    # Tune needs a non-empty request: one byte of memory holds no CPU the workers need.
    return dict(resources) if workers <= 1 else {"cpu": 0.0, "gpu": 0.0, "memory": 1}


def trials_that_fit(
    cluster: Mapping[str, float], resources: Mapping[str, float], workers: int
) -> int | None:
    """How many data-parallel trials the cluster runs at once: its CPUs and GPUs over what the
    `workers` workers of one trial hold (at least 1; None when a trial asks for neither)."""
    counts = [
        math.floor(cluster.get(name.upper(), 0.0) / (per_worker * workers) + 1e-9)
        for name, per_worker in resources.items()
        if name in ("cpu", "gpu") and per_worker > 0
    ]
    return max(1, min(counts)) if counts else None
