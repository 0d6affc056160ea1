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
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from tfkd.core.steps import TrainingFailure
from tfkd.core.train import Report, run_trial

Runner = Callable[[dict[str, Any], Report, Mapping[str, Any], "str | None"], None]
_DONE = "__tfkd_done__"
POLL_S = 1.0


def run_local(
    config: dict[str, Any], report: Report, packed: Mapping[str, Any], resume: str | None
) -> None:
    """The single-worker trial: run_trial in the trial's own process."""
    from tfkd.sweep.trainable import unpack_dataset

    run_trial(config, report, dataset=unpack_dataset(packed), resume_from=resume)


class _ToTrial(UserCallback):
    """Runs in Ray Train's controller: each epoch's rank-0 metrics and checkpoint to the trial."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:  # noqa: ANN001
        self.queue.put((dict(metrics[0]), checkpoint.path if checkpoint else None))


def _worker_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: run_trial on its shard; every rank reports (rank 0 with a
    checkpoint)."""
    from tfkd.sweep.trainable import unpack_dataset

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
             workers: int, cpus: float, gpus: float, storage: str) -> TorchTrainer:  # fmt: skip
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
            name="data-parallel",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=0),  # Tune restarts the trial instead
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_ToTrial(queue)],
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
) -> None:
    """Train the trial on `workers` Ray Train workers; `report` sees each epoch once, in order."""
    queue = Queue(actor_options={"num_cpus": 0})
    storage = tempfile.mkdtemp(prefix="tfkd-train-")
    trainer = _trainer(config, ray.put(dict(packed)), resume, queue, workers, cpus, gpus, storage)
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
        shutil.rmtree(storage, ignore_errors=True)
    if "error" in outcome:
        raise _first_training_failure(outcome["error"])


def _drain(queue: Queue, report: Report) -> None:
    """Hand every epoch the controller queued to `report` until the run has ended."""
    while True:
        try:
            metrics, checkpoint_dir = queue.get(timeout=POLL_S)
        except Empty:
            continue
        if metrics == _DONE:
            return
        report(metrics, checkpoint_dir)


def runner_for(workers: int, cpus: float, gpus: float) -> Runner:
    """run_local for one worker per trial, else run_data_parallel on `workers` workers."""
    if workers <= 1:
        return run_local
    return partial(run_data_parallel, workers=workers, cpus=cpus, gpus=gpus)


def trial_resources(resources: dict[str, float], workers: int) -> dict[str, float]:
    """What Tune reserves for a trial: its resources, or nothing for a data-parallel trial,
    whose Ray Train workers reserve theirs (the trial's own process only waits on them)."""
    # Tune needs a non-empty request: one byte of memory holds no CPU the workers need.
    return dict(resources) if workers <= 1 else {"cpu": 0.0, "gpu": 0.0, "memory": 1}
