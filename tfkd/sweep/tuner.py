"""Ray Tune sweeps: Optuna (TPE or GP) or random/grid search, ASHA early stopping, fractional GPUs.

A sweep is a spec (tfkd.sweep.spec) run as one Tune experiment: the searcher and scheduler it
names, the trainable (tfkd.sweep.trainable) with the resources each trial asks for, the driver's
callbacks (tfkd.sweep.callbacks), and at the end its summary (tfkd.sweep.summary), which closes
the sweep's MLflow run as what happened.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from tfkd import tracking
from tfkd.core import data, data_sharing
from tfkd.core.errors import UserError
from tfkd.sweep import (
    callbacks,
    cluster,
    distributed,
    rungs,
    samplers,
    state_files,
    summary,
    trainable,
)
from tfkd.sweep.asha import ResumableASHA, ScheduleASHA, SchedulerState
from tfkd.sweep.spec import MODE, SweepResult, SweepSpec, param_space, storage_uri
from tfkd.sweep.storage import GIVEN_CONFIG_KEY
from tfkd.tracking import state as tracking_state

# The latest checkpoints are kept (restore always finds the one the experiment state names);
# the best weights are kept apart, in the trial's home (tfkd.sweep.record.TrialRecord).
CHECKPOINTS_KEPT = 2
# Tune's settings a sweep needs, set when it starts and put back when it ends (never at import):
# - a trial failed by its hyper-parameters reports a result without validation accuracy
#   (spec.FAILED_BY_HYPERPARAMETERS), so Tune's strict metric check is off (a sweep's trials
#   always report it: tune_main refuses val_fraction=0);
# - per-epoch checkpoints with num_to_keep make Tune warn about state snapshots every few seconds;
# - Ray's newer output engine prints its configuration box and a TensorBoard hint even when
#   silent; tfkd prints its own status table (tfkd.sweep.status), so the classic engine.
SWEEP_ENVIRONMENT = {
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}
# How often the experiment state (which checkpoint each trial resumes from) is saved: every second
# on a local folder, so that it rarely names a checkpoint the keep-the-latest rule has deleted
# (a restore also looks for a later one in the trial's folder); on a URI storage each save is an
# upload, so at most every 30 s.
CHECKPOINT_PERIOD_S = {"local": 1.0, "uri": 30.0}
# A save pickles every trial and the searcher (its whole study), so its cost grows with the
# trials: past this many trials per second of period the period grows with them (8 s at 256
# trials), which keeps the share of the driver's time spent saving the same at any size.
TRIALS_PER_CHECKPOINT_SECOND = 32


def checkpoint_period_s(spec: SweepSpec) -> float:
    """Seconds between saves of the experiment state (CHECKPOINT_PERIOD_S, longer for sweeps of
    more than TRIALS_PER_CHECKPOINT_SECOND trials)."""
    kind = "uri" if "://" in storage_uri(spec.storage) else "local"
    return max(CHECKPOINT_PERIOD_S[kind], _total_trials(spec) / TRIALS_PER_CHECKPOINT_SECOND)


@contextlib.contextmanager
def sweep_environment(spec: SweepSpec) -> Iterator[None]:
    """Tune's settings for the duration of a sweep (a user's own values win), then the old ones."""
    wanted = {**SWEEP_ENVIRONMENT, "TUNE_GLOBAL_CHECKPOINT_S": f"{checkpoint_period_s(spec):g}"}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# ---------------------------------------------------------------- search, scheduling, resources


def _concurrency(spec: SweepSpec) -> int | None:
    """--max-concurrent; for data-parallel trials (whose workers Ray Train schedules outside
    the trial's reservation) at most as many as the cluster has workers for."""
    if spec.max_concurrent and spec.max_concurrent > 0:
        return spec.max_concurrent
    if spec.workers_per_trial > 1:
        import ray

        cluster_total = ray.cluster_resources()
        return distributed.trials_that_fit(cluster_total, resources(spec), spec.workers_per_trial)
    return None


# A model-based search proposes at most 1/FIRST_WAVE_SHARE of its budget before any result...
FIRST_WAVE_SHARE = 3
# ...but runs at least this many trials at once: below 6 trials the model has little to act on,
# and two at once keep small sweeps (smoke tests, quick looks) from running one by one.
MIN_CONCURRENT = 2


def model_based_concurrency(num_samples: int) -> int:
    """How many trials a model-based search (TPE, GP) runs at once unless --max-concurrent says:
    a third of the budget (at least 2), so that at most a third is proposed before any result.

    Chosen over a default budget that grows with the trials that fit at once: packing more
    trials on one GPU adds little throughput, so the cap costs little wall time where a larger
    budget costs its whole compute (docs/sweeps.md, "Trials side by side", has the measurements).
    """
    return max(MIN_CONCURRENT, num_samples // FIRST_WAVE_SHARE)


def trial_slots(spec: SweepSpec) -> int | None:
    """How many of the sweep's trials fit on the connected cluster at once (its CPUs and GPUs,
    all nodes together); None when not connected or when nothing fits yet (an autoscaling
    cluster's first nodes)."""
    import ray

    if not ray.is_initialized():
        return None
    total = ray.cluster_resources()
    need = resources(spec)
    fits = [
        math.floor(total.get(kind.upper(), 0.0) / (amount * spec.workers_per_trial) + 1e-9)
        for kind, amount in need.items()
        if amount > 0
    ]
    return min(fits) if fits and min(fits) > 0 else None


def model_based(spec: SweepSpec) -> bool:
    """Whether the sweep's trials are proposed from the results of earlier ones (TPE, GP)."""
    return not spec.fixed and spec.search_alg in OPTUNA_SAMPLERS


def concurrency(spec: SweepSpec) -> int | None:
    """How many trials run at once: --max-concurrent when given; for a model-based search
    `model_based_concurrency`, and never more than fit (a trial waiting for resources was
    proposed without results for nothing); otherwise as resources allow (None).

    Tune keeps this many trials proposed at once (a ConcurrencyLimiter): without one it keeps a
    trial pending beyond those running, proposed before it can start.
    """
    given = _concurrency(spec)
    if given or not model_based(spec):
        return given
    slots = trial_slots(spec)
    cap = model_based_concurrency(spec.num_samples)
    return cap if slots is None else min(cap, slots)


def concurrency_note(spec: SweepSpec) -> str:
    """One line when the model-based cap keeps trials the cluster could run at once, else ''."""
    slots, limit = trial_slots(spec), concurrency(spec)
    if spec.max_concurrent or slots is None or limit is None or limit >= slots:
        return ""
    fill = slots * FIRST_WAVE_SHARE
    return (
        f"[tfkd] {limit} trials at once (the cluster fits {slots}): a model-based search "
        f"proposes at most a third of its {spec.num_samples} trials before any result; "
        f"--num-samples {fill} fills the cluster, --max-concurrent {slots} runs more at once anyway"
    )


def startup_trials(num_samples: int) -> int:
    """How many results (complete or pruned trials) the model-based sampler waits for before it
    models: an eighth of the budget, >= 1. Until then the trials are space-filling points
    (tfkd.sweep.samplers.FirstWaveSampler).

    Optuna's default (10) makes a default-budget sweep (8 trials) entirely unmodelled. The first
    point (the preset) is one of them; the trials proposed before any result are others, so a
    larger count leaves few trials to the model.
    """
    return max(1, num_samples // 8)


def _first_points(spec: SweepSpec) -> list[dict[str, Any]] | None:
    return [spec.first_point] if spec.first_point and spec.space.params else None


def _grid_searcher(spec: SweepSpec):
    return BasicVariantGenerator(max_concurrent=_concurrency(spec) or 0)


def _random_searcher(spec: SweepSpec):
    return BasicVariantGenerator(
        points_to_evaluate=_first_points(spec),
        random_state=spec.search_seed,
        max_concurrent=_concurrency(spec) or 0,
    )


def _tpe_sampler(spec: SweepSpec):
    """Multivariate TPE with a good set for small budgets (samplers.small_budget_gamma);
    constant_liar keeps concurrent proposals apart."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=spec.search_seed,
        multivariate=True,
        n_startup_trials=startup_trials(spec.num_samples),
        constant_liar=True,  # concurrent proposals do not all land on one point
        gamma=samplers.small_budget_gamma,
    )


def _gp_sampler(spec: SweepSpec):
    """Optuna's Gaussian-process sampler (log-expected improvement, made for small budgets on
    continuous spaces). It models the COMPLETE trials only (pruned ones are not in its model),
    at most spec.GP_HISTORY of them (samplers.capped_history), and takes the running trials into
    account itself."""
    return samplers.CappedGPSampler(
        seed=spec.search_seed,
        n_startup_trials=startup_trials(spec.num_samples),
        warn_independent_sampling=False,
    )


# --search-alg name -> the Optuna sampler it searches with (through _OptunaSearch)
OPTUNA_SAMPLERS = {"optuna": _tpe_sampler, "gp": _gp_sampler}


def _optuna_searcher(spec: SweepSpec):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE, constant_liar, GP are experimental
        model = OPTUNA_SAMPLERS[spec.search_alg](spec)
        sampler = samplers.FirstWaveSampler(
            model, seed=spec.search_seed, results_needed=startup_trials(spec.num_samples)
        )
        return _OptunaSearch(spec.epochs, sampler=sampler, points_to_evaluate=_first_points(spec))


# --search-alg name -> its searcher; --fixed is a grid of one point
SEARCHERS = {
    "grid": _grid_searcher,
    "random": _random_searcher,
    **dict.fromkeys(OPTUNA_SAMPLERS, _optuna_searcher),
}


def searcher(spec: SweepSpec):
    """The --search-alg's searcher, seeded by --search-seed and starting from the preset:
    Optuna's multivariate TPE (`optuna`, the default) or GP sampler (`gp`), random or grid.

    The Optuna samplers model from `startup_trials(num_samples)` results on, and propose
    scrambled Sobol points before (samplers.FirstWaveSampler); trials ASHA stopped are told to
    the study as pruned, with their intermediate values (TPE models them). How many run (and
    so are proposed) at once is `concurrency`, applied by the Tuner.
    """
    return SEARCHERS["grid" if spec.fixed else spec.search_alg](spec)


class _OptunaSearch(OptunaSearch):
    """Optuna's searcher, told the truth about how each trial ended.

    Ray's searcher tells Optuna a trial that ASHA stopped is COMPLETE, with its early accuracy
    as if it were final; here it is PRUNED, with its per-epoch values as intermediate values, so
    TPE ranks it below the finished trials. The one result that only says a trial failed by
    its values is not reported as an accuracy.
    """

    def __init__(self, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._epochs = epochs
        self._last_epoch: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An epoch's value becomes the trial's intermediate value at that epoch (Ray's searcher
        reports at `training_iteration`, which a restored trial restarts from 1: the last value,
        reported below at its epoch, would mix the two)."""
        if self.metric not in result or trial_id in self._completed_trials:
            return
        epoch = int(result.get("epoch", 0))
        if epoch > self._last_epoch.get(trial_id, 0) and trial_id in self._ot_trials:
            self._ot_trials[trial_id].report(result[self.metric], epoch)
            self._last_epoch[trial_id] = epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """The result a trial ends on (its last epoch, or the rung ASHA stopped it at) comes here,
        not through on_trial_result: it becomes the last intermediate value, then the trial is
        COMPLETE if it ran the schedule, PRUNED if it stopped before."""
        if error or trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ended_at = int(result.get("epoch", 0)) if result and self.metric in result else 0
        trial = self._ot_trials[trial_id]
        if result and ended_at > self._last_epoch.get(trial_id, 0):
            trial.report(result[self.metric], ended_at)
            self._last_epoch[trial_id] = ended_at
        if not 0 < self._last_epoch.get(trial_id, 0) < self._epochs:
            return super().on_trial_complete(trial_id, result, error)
        from optuna.trial import TrialState

        assert self._ot_study is not None  # the study its trials were asked from
        self._ot_study.tell(trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def scheduler(spec: SweepSpec) -> ResumableASHA:
    """ASHA on the validation accuracy, time in epochs: at the schedule's rungs by default,
    keeping the top half there (the top quarter at the default rung in a sweep of 32 trials or
    more: tfkd.sweep.rungs.reduction_factor), geometric from --grace-period when one is given
    (the top half at each); its state, and with Tune's saved Tuner its factor, survive --resume
    (tfkd.sweep.asha)."""
    common = {"time_attr": "epoch", "max_t": spec.epochs}
    if spec.grace_period is None and spec.rungs:
        factor = rungs.reduction_factor(_total_trials(spec), spec.rungs, spec.base_config)
        return ScheduleASHA(spec.rungs, reduction_factor=factor, **common)
    grace = spec.grace_period if spec.grace_period is not None else spec.epochs
    return ResumableASHA(
        grace_period=min(grace, spec.epochs), reduction_factor=rungs.REDUCTION_FACTOR, **common
    )


def resources(spec: SweepSpec) -> dict[str, float]:
    """What each trial asks for: its CPUs, and a quarter GPU by default on a cluster with GPUs."""
    gpus = spec.gpus_per_trial
    if gpus is None:  # a data-parallel trial's workers hold whole GPUs
        share = 1.0 if spec.workers_per_trial > 1 else 0.25
        gpus = share if cluster.cluster_gpus() > 0 else 0.0
    return {"cpu": spec.cpus_per_trial, "gpu": gpus}


# ---------------------------------------------------------------- the Tuner

# A trial runs in the actor (the process) of a trial that has ended, when there is one: its
# process start and imports (torch, Ray, MLflow: ~7 core-seconds on the 2-core machine) are paid
# once per slot, not once per trial (benchmarks/sweep_scale.py). Tune hands the actor over only
# when the previous trial's thread has ended (TUNE_FUNCTION_THREAD_TIMEOUT_S, 2 s; the trainable
# reads nothing of the previous trial); otherwise it stops that actor as before
# (_StopsCleanly) and starts a new one.
REUSE_ACTORS = True


def _trainable_of(spec: SweepSpec, packed: Mapping[str, Any]):
    return trainable.with_resources(spec, packed, resources(spec))


def _run_config(
    spec: SweepSpec,
    total: int | None = None,
    asha: ResumableASHA | None = None,
    searched: bool = False,
) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage_uri(spec.storage),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        callbacks=[
            callbacks.SweepCallback(spec.tracking),
            *spec.callbacks,
            callbacks.progress_callback(spec, total),
            *([callbacks.FirstResultNotice(spec, total or 0)] if searched else []),
            *([SchedulerState(asha)] if asha else []),
        ],
        verbose=0,  # tfkd's own status table (tfkd.sweep.status) instead of Ray's
    )


def experiment_uri(spec: SweepSpec) -> str:
    """The experiment's folder (or URI) as Tune names it."""
    return f"{storage_uri(spec.storage).rstrip('/')}/{spec.name}"


def _restored(spec: SweepSpec, fn) -> tune.Tuner | None:
    """The interrupted sweep's Tuner, or None when it was interrupted before Tune saved any
    state: nothing of it ran, so --resume starts it afresh under the same name. The command
    line has compared its state files with their recorded digests (tfkd.sweep.state_files)."""
    experiment = experiment_uri(spec)
    if not tune.Tuner.can_restore(experiment):
        return None
    try:
        return _fresh_actors(
            tune.Tuner.restore(
                experiment,
                trainable=fn,
                resume_unfinished=True,
                resume_errored=True,
                restart_errored=False,
            )
        )
    except Exception as exc:  # unreadable state (truncated, from another Ray): one line
        said = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(
            f"--resume: Ray cannot load the saved state of sweep {spec.name} "
            f"({exc.__class__.__name__}: {said}); start a new sweep under another --name"
        ) from None


def _fresh_actors(restored: tune.Tuner) -> tune.Tuner:
    """A resumed sweep starts each trial on a new actor, as sweeps did before REUSE_ACTORS: with
    actors reused, the Ctrl-C-and-resume test (tests/test_interrupt.py) once ran a resumed sweep
    to its end without its second trial's checkpoint being seen first, a cause not found yet.
    Ray keeps the saved TuneConfig on its private TunerInternal; without one, Ray's own value."""
    local = getattr(restored, "_local_tuner", None)
    if local is not None and hasattr(local, "_tune_config"):
        local._tune_config = replace(local._tune_config, reuse_actors=False)
    return restored


def _total_trials(spec: SweepSpec) -> int:
    """How many trials the sweep runs: every grid point num_samples times for a grid search."""
    if spec.fixed:
        return 1
    if spec.search_alg == "grid":
        return spec.num_samples * math.prod(len(p.grid()) for p in spec.space.params.values())
    return spec.num_samples


def _tuner(spec: SweepSpec, packed: Mapping[str, Any]) -> tune.Tuner:
    fn = _trainable_of(spec, packed)
    restored = _restored(spec, fn) if spec.resume else None
    if restored is not None:
        return restored
    asha = scheduler(spec)
    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode=MODE,
        search_alg=searcher(spec),
        max_concurrent_trials=concurrency(spec) if model_based(spec) else None,
        scheduler=asha,
        num_samples=1 if spec.fixed else spec.num_samples,
        reuse_actors=REUSE_ACTORS,
        trial_name_creator=callbacks.trial_namer(spec),
        trial_dirname_creator=callbacks.trial_dirname,
    )
    return tune.Tuner(
        fn,
        param_space=param_space(spec),
        tune_config=tune_config,
        run_config=_run_config(spec, _total_trials(spec), asha, searched=model_based(spec)),
    )


# ---------------------------------------------------------------- running it


def _fit(tuner: tune.Tuner, spec: SweepSpec, record_best: bool) -> SweepResult:
    """Run the Tuner; close the sweep's run as what happened (never FINISHED when interrupted)."""
    callbacks.INTERRUPTED.clear()
    try:
        with callbacks.noticing_tunes_interrupt():
            grid = tuner.fit()
    finally:  # however the session ends, the state the next --resume may load is Tune's own
        tracking_state.record_state_digests(
            spec.tracking, state_files.state_digests(experiment_uri(spec))
        )
    result = summary.summarise(grid, spec, interrupted=callbacks.INTERRUPTED.is_set())
    local = "://" not in result.experiment_path
    # trials that ended while the tracking server was down: their writes go first, if it is back
    grace = spec.tracking.grace_s if spec.tracking else tracking.END_OF_SWEEP_GRACE_S
    pending = set(tracking.flush_pending(result.experiment_path, grace)) if local else set()
    best_id = result.best_trial_id if record_best and not result.interrupted else None
    if best_id is not None:
        summary.log_sweep_files(spec, grid)
    sent = tracking.finish_sweep(
        spec.tracking,
        best_id,
        result.best_metrics if best_id else None,
        status=result.status,
        verdicts=_trial_verdicts(result, spec.epochs),
    )
    if not sent and spec.tracking is not None:
        pending.add(tracking.sweep_outbox(spec.tracking))
    refused = tracking.refused_outboxes(result.experiment_path) if local else []
    return replace(
        result,
        tracking_pending=sorted(map(str, pending)),
        tracking_refused=sorted(map(str, refused)),
    )


def _trial_verdicts(result: SweepResult, epochs: int) -> dict[str, dict[str, Any]]:
    """How Tune saw each trial end, for its MLflow run: FAILED with an error; FINISHED at its
    last epoch, or stopped by ASHA (stopped_early) in a sweep that was not interrupted; KILLED
    when the sweep was interrupted before it ended. Its runs end so whatever order their own
    writes arrive in (tfkd.tracking.ops)."""
    verdicts: dict[str, dict[str, Any]] = {t: {"status": "FAILED"} for t in result.failures}
    for metrics in result.trial_metrics:
        if not metrics.get("trial_id"):
            continue
        full = int(metrics.get("epoch") or 0) >= epochs
        if full or not result.interrupted:
            verdict = {"status": "FINISHED", "stopped_early": not full}
        else:
            verdict = {"status": "KILLED"}
        verdicts[metrics["trial_id"]] = verdict
    return verdicts


def run_sweep(spec: SweepSpec, dataset: data.Dataset | None = None) -> SweepResult:
    """Run (or resume) a sweep on the connected cluster and return its summary."""
    dataset = dataset or trainable.dataset_of(spec)
    note = concurrency_note(spec)
    if note:
        print(note, flush=True)
    with sweep_environment(spec):
        return _fit(_tuner(spec, data_sharing.pack_dataset(dataset)), spec, record_best=True)


def run_configs(
    spec: SweepSpec, configs: list[dict[str, Any]], dataset: data.Dataset | None = None
) -> SweepResult:
    """Run given trial configs (e.g. best configs x seeds) as one Tune run: no search, no ASHA.

    `spec.base_config` names the dataset to share; `spec.resume` continues an interrupted run.
    """
    dataset = dataset or trainable.dataset_of(spec)
    with sweep_environment(spec):
        return _fit(_configs_tuner(spec, configs, dataset), spec, record_best=False)


def _configs_tuner(
    spec: SweepSpec, configs: list[dict[str, Any]], dataset: data.Dataset
) -> tune.Tuner:
    fn = _trainable_of(spec, data_sharing.pack_dataset(dataset))
    tuner = _restored(spec, fn) if spec.resume else None
    if tuner is None:
        tuner = tune.Tuner(
            fn,
            param_space={GIVEN_CONFIG_KEY: tune.grid_search(configs)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=_concurrency(spec),
                reuse_actors=REUSE_ACTORS,
                trial_name_creator=callbacks.trial_namer(spec, configs),
                trial_dirname_creator=callbacks.trial_dirname,
            ),
            run_config=_run_config(spec, len(configs)),
        )
    return tuner
