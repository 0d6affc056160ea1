"""What a sweep is asked to do, as `tfkd tune`'s flags say it: one field per flag, with its
default. The command line parses its flags into one (its defaults are these); code that plans
sweeps without the command line (benchmarks, tools) builds one directly:

    from tfkd.sweep.plan import make_plan
    from tfkd.sweep.request import SweepRequest

    plan = make_plan(SweepRequest(mode="tfkd_reg", dataset="digits", model="resnet8"))

Mutable: `tfkd.sweep.plan.make_plan` applies --smoke-test to the request it is given, so that
everything reading the request afterwards (the sweep's spec, its saved flags) sees the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tfkd.core.config import TrialConfig
from tfkd.sweep import rungs
from tfkd.sweep.spec import SweepSpec
from tfkd.sweep.storage import DEFAULT_STORAGE


@dataclass
class SweepRequest:
    """A sweep's flags (argparse destinations of `tfkd tune`); see `tfkd tune --help`."""

    # what to train
    mode: str
    dataset: str
    model: str = TrialConfig.model
    teacher: str | None = None  # MODEL[@ALIAS][:RUN]
    teacher_checkpoint: str | None = None
    teacher_run: str | None = None
    train_teacher: bool = False
    snapshot_epochs: tuple[int, ...] = ()
    data_dir: str = TrialConfig.data_dir
    download: bool = False
    protocol: str = TrialConfig.protocol
    # search
    search_space: str | None = None  # a YAML file; None: the mode's shipped space
    num_samples: int = SweepSpec.num_samples
    epochs: int | None = None  # None: the config's (200)
    grace_period: int | None = None
    rungs: str = ",".join(rungs.DEFAULT_RUNGS)
    search_alg: str = SweepSpec.search_alg
    metric: str | None = None  # None: the protocol's (tfkd.core.protocol.sweep_metric)
    fixed: bool = False
    seed: int = 0
    search_seed: int = SweepSpec.search_seed
    set: list[str] = field(default_factory=list)  # KEY=VALUE overrides of the trial config
    name: str | None = None  # None: mode-dataset-model-YYYYMMDD-HHMMSS
    resume: bool = False
    verbose: bool = False
    smoke_test: bool = False
    # cluster and resources
    gpus_per_trial: float | None = SweepSpec.gpus_per_trial
    cpus_per_trial: float = SweepSpec.cpus_per_trial
    workers_per_trial: int = SweepSpec.workers_per_trial
    max_concurrent: int | None = SweepSpec.max_concurrent
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray
    mlflow_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    storage: str = DEFAULT_STORAGE
    experiment: str | None = None  # None: mode-dataset-model
    no_tracking: bool = False
    system_metrics: bool = False
    tracking_grace: float | None = None  # None: tfkd.tracking's END_OF_SWEEP_GRACE_S
    max_failures: int = SweepSpec.max_failures
