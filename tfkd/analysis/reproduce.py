"""Retrain a sweep's best configs from scratch with several seeds, tested as --protocol says.

    tfkd reproduce --experiment tfkd_reg-cifar100-resnet18 [--seeds 5]
        [--first-seed 1000] [--top 1] [--sweep NAME] [--protocol holdout|paper]

Each chosen config (see tfkd.analysis.best_configs) is trained for the full schedule (`--epochs`
overrides) with the seeds S..S+N-1 (`--first-seed` S, default 1000; `--seeds` N, default 5) under
`--protocol` (tfkd.core.protocol). The seeds are fresh: a seed the sweep trained (its trials'
`seed`, 0 unless tfkd tune was told otherwise) would re-run the winner of the selection, not
test it, so a seed the sweep trained is refused. Every sweep is reproduced on the same seeds
unless told otherwise, so the modes of a report pair seed by seed (a student's initial weights
depend only on its seed and model). Protocols: `holdout` (the default)
keeps the sweep's validation split, which chooses the epoch whose weights are tested once, at
the end (a paper sweep's configs have none: the last epoch is tested, and the command says so;
reproduce a paper sweep with `--protocol paper`); `paper` trains on the full training set, tests
every epoch and reports the maximum (`paper_test_accuracy`), as the original did. All (config,
seed) pairs run as ONE Ray Tune run through tfkd.sweep.tuner.run_configs, with tfkd tune's
resource flags (fractional GPUs, --address, ...); `--resume` continues an interrupted one. Every
pair is an MLflow run of kind "reproduction" under a "reproduction-set" run named
reproduce-<sweep> (reproduce-<sweep>-paper under the paper's protocol), in the sweep's
experiment, tagged with the sweep's run id, the protocol, the config rank and a hash of the
config. A rerun skips the pairs already FINISHED in MLflow.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkd.analysis import best_configs, results, sweeps
from tfkd.analysis.common import config_hash, say, tracking_uri, typed_config
from tfkd.core import protocol as protocols
from tfkd.core.errors import UserError
from tfkd.sweep import storage
from tfkd.tracking import store

PROTOCOL_SAYS = {
    "holdout": "the validation split chooses the epoch, tested once at the end",
    "paper": "full training set, tested every epoch, the maximum reported (the test set chooses)",
}
SET_PREFIX = "reproduce-"
DEFAULT_SEEDS = 5
FIRST_SEED = 1000  # sweeps train at tfkd tune's --seed (default 0): a block far from it


@dataclass(frozen=True)
class Job:
    """One (config, seed) pair to train."""

    rank: int
    seed: int
    config: dict[str, Any]
    config_hash: str


def reproduction_config(
    config: Mapping[str, Any], *, epochs: int, seed: int, data_dir: str | None, protocol: str
) -> dict[str, Any]:
    """The sweep's config under `protocol` (its split: the sweep's validation split under
    holdout, none under paper), for `epochs`, with `seed`."""
    changes: dict[str, Any] = {
        "epochs": epochs,
        "seed": seed,
        **protocols.trial_config(protocol),
    }
    if data_dir:
        changes["data_dir"] = str(Path(data_dir).expanduser().resolve())
    return typed_config({**config, **changes}, "reproduction config")


def reproduction_seeds(first: int, count: int) -> list[int]:
    """The seeds every config is reproduced with: first..first+count-1."""
    return list(range(first, first + count))


def sweep_seeds(sweep: sweeps.Sweep) -> set[int]:
    """Every seed the sweep trained (its trials' configs)."""
    return {int(trial.config["seed"]) for trial in sweep.trials}


def check_fresh(seeds: Sequence[int], sweep: sweeps.Sweep) -> None:
    """Refuse seeds the sweep trained: their reproduction would be the selected trial itself."""
    trained = sweep_seeds(sweep)
    reused = sorted(trained & set(seeds))
    if reused:
        raise UserError(
            f"--first-seed/--seeds: seed {reused[0]} was trained by sweep {sweep.name} (its "
            f"trials trained seed(s) {', '.join(map(str, sorted(trained)))}); a reproduction "
            f"must train seeds the selection never saw: choose --first-seed above {max(trained)}"
        )


def plan_jobs(
    best: Sequence[sweeps.Trial],
    seeds: Sequence[int],
    epochs: int,
    data_dir: str | None,
    protocol: str,
) -> list[Job]:
    jobs = []
    for rank, trial in enumerate(best, start=1):
        for seed in seeds:
            config = reproduction_config(
                trial.config, epochs=epochs, seed=seed, data_dir=data_dir, protocol=protocol
            )
            jobs.append(Job(rank, seed, config, config_hash(config)))
    return jobs


def finished_pairs(uri: str, experiment: str) -> dict[tuple[str, int], str]:
    """{(config hash, seed): run id} of the experiment's FINISHED, tested reproductions.

    The hash is computed from the run's params (its full config), so a run counts even when
    the tags that `label_runs` adds are missing (an interrupted reproduce).
    """
    mlflow_client = store.client(uri)
    experiment_id = store.experiment_id(mlflow_client, experiment)
    if experiment_id is None:
        return {}
    runs = store.runs_of_kind(
        mlflow_client, [experiment_id], store.REPRODUCTION, status=store.FINISHED
    )
    done = {}
    for run in runs:
        if "test_accuracy" in run.data.metrics:
            config = typed_config(run.data.params, f"MLflow run {run.info.run_id}")
            done[(config_hash(config), int(config["seed"]))] = run.info.run_id
    return done


def pending(jobs: Sequence[Job], done: Mapping[tuple[str, int], str]) -> list[Job]:
    """The jobs not done yet; says which ones are skipped."""
    todo = []
    for job in jobs:
        run_id = done.get((job.config_hash, job.seed))
        if run_id is None:
            todo.append(job)
        else:
            say(
                f"skip config #{job.rank} ({job.config_hash}) seed {job.seed}: already "
                f"FINISHED as MLflow run {run_id}"
            )
    return todo


def run_name(job: Job) -> str:
    """A reproduction run's name in MLflow: its config's rank and its seed."""
    return f"#{job.rank} seed {job.seed}"


def set_name(sweep: sweeps.Sweep, protocol: str = "holdout") -> str:
    """The reproduction-set run (and results folder) of a sweep under a protocol."""
    suffix = "" if protocol == "holdout" else f"-{protocol}"
    return f"{SET_PREFIX}{sweep.name}{suffix}"


def link_tags(sweep: sweeps.Sweep) -> dict[str, str]:
    """Tags of every reproduction run that lead back to its sweep."""
    return {
        results.SWEEP_RUN_TAG: sweep.run_id,
        results.SWEEP_TAG: sweep.name,
        results.TEACHER_TAG: sweep.tags.get("teacher", ""),
    }


def tracking_options(sweep: sweeps.Sweep, jobs: Sequence[Job], args: argparse.Namespace):
    """The reproduction-set parent run's name, tags and options (found again on --resume)."""
    first = jobs[0].config
    tags = {
        "mode": first["mode"],
        "dataset": first["dataset"],
        "model": first["model"],
        "epochs": str(first["epochs"]),
        "protocol": first["protocol"],
        "seeds": str(args.seeds),
        "first_seed": str(args.first_seed),
        "top": str(args.top),
        **link_tags(sweep),
    }
    return {
        "run_name": set_name(sweep, args.protocol),
        "tags": tags,
        "register_teachers": False,
        "dataset": first["dataset"],
        "model": first["model"],
        "resume": args.resume,
        "kind": store.REPRODUCTION_SET,
        "child_kind": store.REPRODUCTION,
        "child_tags": link_tags(sweep),
        "outbox_root": storage.local_experiment_dir(args.storage, set_name(sweep, args.protocol)),
        "system_metrics": args.system_metrics,
        "grace_s": args.tracking_grace,
    }


def label_runs(uri: str, context: Any, jobs: Sequence[Job]) -> None:
    """Tag each reproduction run with its config's rank and hash.

    tfkd's child_tags are the same for every run of a Tune run, so the per-config tags are set
    here, from each run's params, once the runs exist.
    """
    mlflow_client = store.client(uri)
    ranks = {job.config_hash: job.rank for job in jobs}
    runs = store.runs_of_kind(
        mlflow_client, [context.experiment_id], store.REPRODUCTION, parent=context.parent_run_id
    )
    for run in runs:
        digest = config_hash(typed_config(run.data.params, f"MLflow run {run.info.run_id}"))
        mlflow_client.set_tag(run.info.run_id, results.HASH_TAG, digest)
        if digest in ranks:
            mlflow_client.set_tag(run.info.run_id, results.RANK_TAG, str(ranks[digest]))


def run_jobs(
    args: argparse.Namespace, uri: str, experiment: str, sweep: sweeps.Sweep, jobs: list[Job]
) -> int:
    """Train the jobs as one Ray Tune run and log them to MLflow; returns how many failed."""
    from tfkd import tracking
    from tfkd.core import train
    from tfkd.sweep import cluster, tuner
    from tfkd.sweep import status as progress
    from tfkd.sweep.search_space import SearchSpace
    from tfkd.sweep.spec import SweepSpec, resource_options
    from tfkd.tracking import system_metrics

    progress.configure_driver(verbose=False)  # tfkd tune's quiet output: the trials' own in logs

    # a rerun trains the pairs still missing into the same folder
    name = set_name(sweep, args.protocol)
    storage.check_storage(args.storage, name, args.resume, reuse=True)
    system_metrics.check_available(args.system_metrics)
    if args.address:
        cluster.check_cluster_reachable(args.address)
    dataset = train.dataset_of(jobs[0].config)
    with tracking.sweep_run(uri, experiment, **tracking_options(sweep, jobs, args)) as context:
        spec = SweepSpec(
            name=name,
            base_config=jobs[0].config,
            metric=protocols.sweep_metric(args.protocol, None, fixed=True)[0],  # status column
            space=SearchSpace(path=Path(""), mode=jobs[0].config["mode"], params={}),
            tracking=context,
            trial_names=tuple(run_name(job) for job in jobs),
            **resource_options(args),
        )
        try:
            with cluster.session(args.address):
                result = tuner.run_configs(spec, [job.config for job in jobs], dataset)
        finally:
            label_runs(uri, context, jobs)
    say(
        f"{result.trials} reproduction runs, {result.failed} failed; MLflow run "
        f"{name} in experiment {experiment!r}"
    )
    print_accuracy_table(uri, context, experiment)
    return result.failed


def print_accuracy_table(uri: str, context: Any, experiment: str) -> None:
    """What this reproduction ran, per config: the report's row (accuracy with its interval,
    calibration, and the compute of the sweep it came from)."""
    mlflow_client = store.client(uri)
    runs = store.runs_of_kind(
        mlflow_client,
        [context.experiment_id],
        store.REPRODUCTION,
        parent=context.parent_run_id,
        status=store.FINISHED,
    )
    done = [
        results.reproduction_from_run(r, experiment)
        for r in runs
        if "test_accuracy" in r.data.metrics
    ]
    if done:
        facts = results.sweep_facts(uri, mlflow_client, done)
        print(results.markdown(results.results_table(done, facts)), flush=True)


def protocol_change(sweep: sweeps.Sweep, best: sweeps.Trial, protocol: str) -> str | None:
    """A line when the reproduction's protocol is not the one the sweep searched under."""
    searched = best.config["protocol"]
    if searched == protocol:
        return None
    split = (
        "; its configs have no validation split (val_fraction 0), so the last epoch is tested"
        if protocol == "holdout" and not best.config["val_fraction"]
        else ""
    )
    return (
        f"sweep {sweep.name} searched under protocol {searched} (ranked on {sweep.metric}); "
        f"reproducing under --protocol {protocol}{split}"
    )


def reproduce(args: argparse.Namespace) -> int:
    """The reproduction `tfkd reproduce`'s flags ask for; returns how many runs failed."""
    if args.no_tracking:
        raise UserError("--no-tracking: reproductions are MLflow runs; drop the flag")
    uri = tracking_uri(args.mlflow_uri)
    sweep, best = best_configs.choose(args.experiment, uri, args.storage, args.top, args.sweep)
    note = protocol_change(sweep, best[0], args.protocol)
    if note:
        say(note)
    experiment = sweep.experiment or args.experiment
    seeds = reproduction_seeds(args.first_seed, args.seeds)
    check_fresh(seeds, sweep)
    jobs = plan_jobs(best, seeds, args.epochs or sweep.epochs, args.data_dir, args.protocol)
    todo = jobs if args.resume else pending(jobs, finished_pairs(uri, experiment))
    if not todo:
        say(
            f"nothing left to reproduce: all {len(jobs)} (config, seed) pairs of "
            f"{sweep.name} are FINISHED in MLflow"
        )
        return 0
    say(
        f"reproducing {len(todo)} of {len(jobs)} (config, seed) pairs of {sweep.name}: "
        f"{len(best)} config(s) x seeds {seeds[0]}..{seeds[-1]} (fresh: the sweep trained "
        f"{', '.join(map(str, sorted(sweep_seeds(sweep))))}), {todo[0].config['epochs']} epochs, "
        f"protocol {args.protocol}: {PROTOCOL_SAYS[args.protocol]}"
    )
    return run_jobs(args, uri, experiment, sweep, todo)
