"""What a sweep is and what it gives back: its spec, its result, and the Tune search space it spans.

Built and validated by the command line before Ray starts, so nothing here imports Ray at import
time; `param_space` imports Ray's samplers when a sweep is about to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfkd.sweep.search_space import Param, SearchSpace
from tfkd.sweep.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    from ray import tune

    from tfkd import tracking

METRIC = "val_accuracy"  # what a sweep ranks trials on unless its spec says otherwise
MODE = "max"
# The result a trial reports before failing because of its hyper-parameters. It has no
# validation accuracy, so ASHA passes over it and the Optuna searcher ignores it.
FAILED_BY_HYPERPARAMETERS = "tfkd_failed_by_hyperparameters"
# how a sweep chooses its trials (tfkd.sweep.tuner.SEARCHERS has one searcher per name)
SEARCH_ALGS = ("optuna", "gp", "random", "grid")
# The most finished trials the GP sampler models (tfkd.sweep.samplers.capped_history): its refit
# grows with the cube of them. Alone (Optuna 5.1 with greenlet, 3 parameters, 2 cores) a proposal
# took 0.14 s at 32 results, 0.32 s at 64, 0.54 s at 128. In 256-trial sweeps with 8 trials
# training beside the driver (benchmarks/sweep_scale.py), 64 instead of 128 cut the driver's CPU
# per trial from 0.61 to 0.51 s; the longest proposal stayed about a second (1.04 -> 1.09 s).
GP_HISTORY = 64
# the SweepSpec fields that the resource, storage and retry flags set (`resource_options`)
RESOURCE_FIELDS = (
    "gpus_per_trial",
    "cpus_per_trial",
    "workers_per_trial",
    "max_concurrent",
    "storage",
    "resume",
    "max_failures",
)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs; built and validated (tfkd.sweep.plan) before Ray starts."""

    name: str
    base_config: dict[str, Any]
    space: SearchSpace
    search_alg: str = "optuna"
    num_samples: int = 8
    grace_period: int | None = None  # geometric ASHA rungs from here; None: `rungs`
    rungs: tuple[int, ...] = ()  # epochs ASHA judges at (tfkd.sweep.rungs); () and no grace: none
    search_seed: int = 0  # the sampler's; the trials' seed is base_config["seed"]
    metric: str = METRIC  # what the searcher, ASHA and "best" rank trials on (--metric)
    fixed: bool = False
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    workers_per_trial: int = 1  # > 1: each trial data-parallel on Ray Train (sweep.distributed)
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
    # the other trials whose score is the best trial's (it is the first of them in trial order)
    tied_trial_ids: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # trial id -> reason, one line
    failed_by_infrastructure: int = 0  # failures not caused by the hyper-parameters
    interrupted: bool = False  # Ctrl-C: resumable with --resume
    tracking_pending: list[str] = field(default_factory=list)  # outboxes not yet sent
    tracking_refused: list[str] = field(default_factory=list)  # outboxes with refused writes

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


def _sampler(param: Param) -> Any:
    """The Tune distribution a searched key is drawn from."""
    from ray import tune

    samplers = {
        "uniform": lambda p: tune.uniform(p.low, p.high),
        "loguniform": lambda p: tune.loguniform(p.low, p.high),
        "int": lambda p: tune.randint(int(p.low), int(p.high) + 1),
        "logint": lambda p: tune.lograndint(int(p.low), int(p.high) + 1),
        "quniform": lambda p: tune.quniform(p.low, p.high, p.q),
        "choice": lambda p: tune.choice(list(p.values)),
    }
    return samplers[param.distribution](param)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The fixed trial config plus a Tune distribution (or grid) for every searched key."""
    from ray import tune

    space = dict(spec.base_config)
    if spec.fixed:
        return {**space, **spec.first_point}
    for name, param in spec.space.params.items():
        if spec.search_alg == "grid":
            space[name] = tune.grid_search(param.grid())
        else:
            space[name] = _sampler(param)
    return space


def resource_options(flags: Any) -> dict[str, Any]:
    """The SweepSpec fields of RESOURCE_FIELDS, from an object holding them as attributes (a
    SweepRequest, or the parsed flags of a command that takes the resource flags)."""
    return {name: getattr(flags, name) for name in RESOURCE_FIELDS}
