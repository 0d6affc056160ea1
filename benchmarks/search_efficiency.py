"""What a search method buys, with its uncertainty: the evidence for tfkd's default sampler.

    python benchmarks/search_efficiency.py --modes MODE [--methods ALG ...] [--workdir DIR]
        [--epochs 10] [--num-samples 8] [--search-seeds ALG=N ...] [--fresh-seeds 5]
        [--control-points 8] [--concurrency 2] [--out DIR] [--smoke-test]
    python benchmarks/search_efficiency.py --render DIR/out/search_efficiency_*.json \
        --out benchmarks/results

For each mode (tfkd_reg, tfkd_self, lsr; scikit-learn's digits, resnet8, real data, offline):

  search    every --search-alg of tune_main (tfkd.sweep.spec.SEARCH_ALGS, less `grid`;
            --methods picks some) run as a sweep through `tfkd.sweep.tuner.run_sweep` (the code
            path of tune_main), planned by tune_main's `tfkd.sweep.plan`, on the mode's shipped
            space, at tune_main's budget and rungs, once per search seed: 10 seeds for the
            default sampler and for random search, 5 for the others (--search-seeds ALG=N);
            every trial at trial seed 0;
  grid      every point of the hand grid (low, middle and high of each axis of the mode's
            shipped space, the space the searches draw from) trained for the full schedule at
            seed 0;
  control   the budget-matched grid: per search seed, --control-points (the search's number of
            trials) points of the grid drawn without replacement, best by validation;
  fresh     the configuration chosen by each method's median search seed (by best validation;
            the lower median), the grid's best and the control's median choice, re-trained on
            --fresh-seeds seeds that no search or grid trial trained (from 1000 up) and compared
            on test accuracy: mean with its 95% t interval, and the difference to the default
            sampler paired by seed (a student's initial weights depend only on its seed) with its
            95% interval, "inconclusive" when that spans 0;
  curves    expected best validation accuracy vs number of trials (Dodge et al., 2019): the
            expected maximum of n draws from the empirical distribution of a method's trial
            scores (a trial ASHA stopped scores the validation accuracy it was stopped at), with
            a 95% bootstrap band over search seeds (benchmarks/evidence_stats.py).

Every unit of work — one sweep (mode x method x search seed), one grid point, one re-training — is
one JSON file under --workdir/units/<mode>/, written atomically when the unit ends and skipped
when present: stop a run at any time (Ctrl-C, kill) and start the same command again to continue.
A partial sweep is discarded and run again. Ray starts only while a sweep is missing. Each mode
writes --out/search_efficiency_<mode>.{json,md,png}; --render merges such files into
search_efficiency.{json,md,png} and states the default sampler the numbers choose (see
`choose_default`) with the intervals behind the choice.

The full evidence, one mode per process in the background, each sweep with 2 trials at a time
(what tune_main runs on 2 CPUs; the samplers' behaviour depends on it), one CPU thread per trial:

    W=$HOME/tfkd-evidence; mkdir -p $W
    for m in tfkd_reg tfkd_self lsr; do
      nohup python benchmarks/search_efficiency.py --modes $m --workdir $W --concurrency 2 \
          > $W/$m.log 2>&1 &
    done
    # when all three have ended (rerun any that stopped: it continues where it was):
    python benchmarks/search_efficiency.py --out benchmarks/results \
        --render $W/out/search_efficiency_{tfkd_reg,tfkd_self,lsr}.json

Duration, estimated from measured units (resnet8, digits, batch 64, one thread): a trial-epoch
costs ~4.5 core-seconds in a sweep (2026-12-01: tfkd_self's 910 trial-epochs in 34 min at 2 trials
at a time, alone on the 2-core machine) and ~3.5 without Ray (one 10-epoch training: 33.5 s alone;
85 s on 2026-12-07 with the machine at load 24). Per mode: the searches (today's three
samplers: optuna and random 10 seeds each, gp 5 = 25 sweeps of ~70 trial-epochs; a fourth sampler
adds 5 sweeps), the grid (90 / 270 / 90 trial-epochs for tfkd_reg / tfkd_self / lsr) and 5-6 rows
x 5 fresh seeds x 10 epochs: ~2,000-2,700 trial-epochs, 2.5-3.3 core-hours; all three ~7-9.5
core-hours, i.e. ~4-5 h with the three processes sharing 2 otherwise idle cores (lsr ends
first). With fewer samplers (--methods) it scales with the number of sweeps.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evidence_stats as es  # noqa: E402
import numpy as np  # noqa: E402

from tfkd.core import atomic  # noqa: E402

MODES = ("tfkd_reg", "tfkd_self", "lsr")  # the modes the evidence covers by default


def hand_grid(mode: str) -> dict[str, list[float]]:
    """The hand grid of a mode: low, middle and high of every axis of its shipped space.

    The grid lives in the space the searches draw from (the same coordinates, ranges and fixed
    values), so grid, control and searches differ only in how they choose their points.
    """
    from tfkd.sweep import search_space

    space = search_space.load(search_space.default_path(mode), mode)
    return {name: param.grid() for name, param in space.params.items()}


GRID, CONTROL = "grid", "control"  # the two hand-grid rows beside the search methods
TRIAL_SEED = 0  # every search and grid trial trains at this seed
FRESH_SEED_START = 1000
MANY_SEEDS, FEW_SEEDS = 10, 5  # search seeds: the default sampler and random; the others
RANDOM = "random"
SMOKE_TEST = {"epochs": 2, "num_samples": 2, "seeds": 2, "fresh": 2, "fake_size": 256}
PROG = "search_efficiency.py"


class UserError(Exception):
    """Bad input: one line on stderr, exit status 2, nothing run."""


# ---------------------------------------------------------------- tune_main's own choices


def search_algs() -> tuple[str, ...]:
    """tune_main's --search-alg choices that search (its `grid` is the hand grid's job here)."""
    from tfkd.sweep.spec import SEARCH_ALGS

    return tuple(a for a in SEARCH_ALGS if a != GRID)


def default_alg() -> str:
    """tune_main's default --search-alg: the sampler this benchmark judges."""
    from tfkd.sweep.request import SweepRequest

    return SweepRequest.search_alg


def default_num_samples() -> int:
    """tune_main's default --num-samples."""
    from tfkd.sweep.request import SweepRequest

    return SweepRequest.num_samples


def seeds_wanted(method: str, default: str, overrides: Mapping[str, int]) -> int:
    """Search seeds per method: 10 for the default sampler and random search, 5 for others."""
    if method in overrides:
        return overrides[method]
    return MANY_SEEDS if method in (default, RANDOM) else FEW_SEEDS


# ---------------------------------------------------------------- units of work on disk


class Units:
    """One JSON file per finished unit of work, under <root>/units/<mode>/<kind>/<name>.json."""

    def __init__(self, root: Path, mode: str) -> None:
        self.folder = root / "units" / mode

    def path(self, kind: str, name: str) -> Path:
        return self.folder / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.path(kind, name)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, kind: str, name: str, document: Mapping[str, Any]) -> dict[str, Any]:
        atomic.write_text(self.path(kind, name), json.dumps(document, indent=1))
        return dict(document)


def cached(
    units: Units, kind: str, name: str, compute: Callable[[], Mapping[str, Any]]
) -> dict[str, Any]:
    """The unit's stored result, else `compute()`'s, stored once it has returned."""
    found = units.get(kind, name)
    return found if found is not None else units.put(kind, name, compute())


def config_key(config: Mapping[str, Any]) -> str:
    """A short, stable name for a configuration (a re-training's cache key includes it, so a
    changed choice is trained anew rather than read from an older one)."""
    text = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def train_unit(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """A worker: train one configuration to the end with run_trial (no Ray), store the unit."""
    import torch

    from tfkd.core.train import run_trial

    config, path = job
    torch.set_num_threads(1)
    curve: list[float] = []
    started = time.perf_counter()
    final = run_trial(config, lambda metrics, _: curve.append(float(metrics["val_accuracy"])))
    document = {
        "config": config,
        "val_curve": curve,
        "val": curve[-1],
        "test": final.get("test_accuracy"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic.write_text(path, json.dumps(document, indent=1))
    return document


def train_missing(jobs: Sequence[tuple[dict[str, Any], Path]], concurrency: int) -> None:
    """Train the jobs whose unit file is missing, `concurrency` at a time (spawned workers)."""
    missing = {str(path): config for config, path in jobs if not path.is_file()}
    todo = [(config, path) for path, config in missing.items()]  # one job per unit
    if not todo:
        return
    units = len({str(path) for _, path in jobs})
    print(f"[{PROG}] training {len(todo)} of {units} units ({units - len(todo)} stored)")
    with multiprocessing.get_context("spawn").Pool(min(concurrency, len(todo))) as pool:
        for done in pool.imap_unordered(train_unit, todo):
            print(f"[{PROG}] trained: val {done['val']:.2f} test {done['test']:.2f}")


# ---------------------------------------------------------------- accounting (pure functions)


@dataclass(frozen=True)
class Report:
    """One epoch reported by one trial: one trial-epoch of compute."""

    trial: str
    epoch: int
    val_accuracy: float
    test_accuracy: float | None = None


def best_so_far(reports: Sequence[Report], epochs: int) -> list[tuple[int, float]]:
    """(trial-epochs spent, best full-schedule validation accuracy so far) after each report.

    The accuracy is NaN until some trial has reported the schedule's last epoch.
    """
    curve, best = [], math.nan
    for spent, report in enumerate(reports, start=1):
        if report.epoch >= epochs and not report.val_accuracy <= best:
            best = report.val_accuracy
        curve.append((spent, best))
    return curve


def compute_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """Trial-epochs spent when the best-so-far first reached `target`; None if it never did."""
    return next((spent for spent, best in curve if best >= target), None)


def best_trial(reports: Sequence[Report], epochs: int) -> Report | None:
    """The full-schedule report with the highest validation accuracy (the first of ties)."""
    full = [r for r in reports if r.epoch >= epochs]
    return max(full, key=lambda r: r.val_accuracy, default=None)


def trial_scores(reports: Sequence[Report]) -> list[float]:
    """Each trial's score for the expected-best curves: its last reported validation accuracy
    (the full schedule's, or the one ASHA stopped it at), in the order the trials first
    reported."""
    last: dict[str, float] = {}
    for report in reports:
        last[report.trial] = report.val_accuracy
    return list(last.values())


def sweep_summary(
    unit: Mapping[str, Any], epochs: int, target: float | None = None
) -> dict[str, Any]:
    """A stored sweep's numbers: best full-schedule trial, its config, compute, trial scores."""
    reports = [Report(**r) for r in unit["reports"]]
    best = best_trial(reports, epochs)
    return {
        "seed": unit["seed"],
        "trials": len({r.trial for r in reports}),
        "trial_epochs": len(reports),
        "best_val": best.val_accuracy if best else None,
        "best_test": best.test_accuracy if best else None,
        "best_config": unit["configs"][best.trial] if best else None,
        "scores": trial_scores(reports),
        "to_grid_best": None
        if target is None
        else compute_to_reach(best_so_far(reports, epochs), target),
        "wall_seconds": unit["wall_seconds"],
    }


def control_draws(
    grid_points: Sequence[Mapping[str, Any]], points: int, seeds: Sequence[int]
) -> list[dict[str, Any]]:
    """The budget-matched control: per search seed, `points` grid points drawn without
    replacement (numpy's generator seeded by the search seed), the best by validation."""
    draws = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(grid_points), size=min(points, len(grid_points)), replace=False)
        chosen = [grid_points[int(i)] for i in picked]
        best = max(chosen, key=lambda p: p["val"])
        draws.append(
            {
                "seed": seed,
                "points": [int(i) for i in picked],
                "trials": len(chosen),
                "trial_epochs": sum(len(p["val_curve"]) for p in chosen),
                "best_val": best["val"],
                "best_test": best["test"],
                "best_config": best["config"],
                "scores": [p["val"] for p in chosen],
            }
        )
    return draws


def median_choice(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The run of the median search seed by best validation (lower median, first of ties)."""
    found = [r for r in runs if r["best_val"] is not None]
    if not found:
        raise RuntimeError("no search seed of this method finished a trial")
    return found[es.median_index([r["best_val"] for r in found])]


# ---------------------------------------------------------------- the sweeps (Ray)


@dataclass(frozen=True)
class Setting:
    """What every unit of one mode shares."""

    mode: str
    dataset: str
    epochs: int
    batch_size: int
    num_samples: int
    grace_period: int | None  # None: the schedule rungs of tune_main
    concurrency: int
    scratch: Path  # Ray results, MLflow, data of this mode's process
    extra_sets: tuple[str, ...] = ()

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.scratch / 'mlflow.db'}"

    @property
    def storage(self) -> Path:
        return self.scratch / "ray_results"


def sweep_name(setting: Setting, method: str, seed: int) -> str:
    return f"{setting.mode}-{method}-{seed}"


def sweep_request(setting: Setting, method: str, seed: int):
    """The sweep as tune_main's flags would ask for it (tfkd.sweep.request.SweepRequest)."""
    from tfkd.core import modes
    from tfkd.sweep.request import SweepRequest

    return SweepRequest(
        mode=setting.mode,
        dataset=setting.dataset,
        model="resnet8",
        epochs=setting.epochs,
        set=[f"batch_size={setting.batch_size}", *setting.extra_sets],
        search_alg=method,
        num_samples=setting.num_samples,
        search_seed=seed,
        seed=TRIAL_SEED,
        storage=str(setting.storage),
        data_dir=str(setting.scratch),
        name=sweep_name(setting, method, seed),
        mlflow_uri=setting.mlflow_uri,
        max_concurrent=setting.concurrency,
        cpus_per_trial=1.0,
        train_teacher=modes.get(setting.mode).needs_teacher,
    )


def train_teacher(setting: Setting, model: str, student: str) -> None:
    """The teacher the registry lacks, trained and registered as `tfkd tune --train-teacher`
    trains it: a baseline run of the original's values (--fixed) on the student's data and
    schedule, at the trials' seed, one CPU."""
    argv = [
        *(sys.executable, str(REPO / "tune_main.py"), "--mode", "baseline", "--fixed"),
        *("--dataset", setting.dataset, "--model", model, "--epochs", str(setting.epochs)),
        *("--seed", str(TRIAL_SEED), "--cpus-per-trial", "1", "--name", f"{student}-teacher"),
        *("--storage", str(setting.storage), "--data-dir", str(setting.scratch)),
        *("--mlflow-uri", setting.mlflow_uri),
        *(word for pair in setting.extra_sets for word in ("--set", pair)),
    ]
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        raise SystemExit(f"{PROG}: training the teacher failed (exit {code})")


def prepare(setting: Setting, method: str, seed: int):
    """tune_main's own plan (tfkd.sweep.plan) and teacher (tfkd.sweep.teachers: trained first
    when the registry lacks it); the plan's teacher checkpoint as a local file (trials here run
    without tracking). Returns the plan and the dataset."""
    from tfkd import tracking
    from tfkd.core.train import dataset_of
    from tfkd.sweep import teachers
    from tfkd.sweep.plan import make_plan

    request = sweep_request(setting, method, seed)
    plan = make_plan(request)
    dataset = dataset_of(plan.config)
    wanted = teachers.TeacherRequest.from_args(request)
    teacher = teachers.resolve(wanted, setting.mlflow_uri)
    if teacher is not None and not teacher.location:
        train_teacher(setting, teacher.model, plan.name)
        teacher = teachers.resolve(wanted, setting.mlflow_uri)
    if teacher is not None:
        config, _ = teachers.attach(
            teacher, plan.config, plan.first_trial(), dataset, setting.mlflow_uri
        )
        local = tracking.local_path(teacher.location, setting.mlflow_uri)
        plan = replace(plan, config={**config, "teacher_checkpoint": local})
    return plan, dataset


def epoch_log():
    """A Tune callback keeping every result in arrival order and each trial's config."""
    from ray import tune

    from tfkd.sweep.storage import GIVEN_CONFIG_KEY

    class EpochLog(tune.Callback):
        def __init__(self) -> None:
            self.reports: list[Report] = []
            self.configs: dict[str, dict[str, Any]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            config = trial.config.get(GIVEN_CONFIG_KEY, trial.config)
            self.configs[trial.trial_id] = {k: v for k, v in config.items() if k != "device"}
            self.reports.append(
                Report(
                    trial=trial.trial_id,
                    epoch=int(result["epoch"]),
                    val_accuracy=float(result["val_accuracy"]),
                    test_accuracy=result.get("test_accuracy"),
                )
            )

    return EpochLog()


def run_sweep(setting: Setting, method: str, seed: int) -> dict[str, Any]:
    """One sweep through tuner.run_sweep: its reports in arrival order, its trials' configs."""
    from tfkd.sweep import tuner
    from tfkd.sweep.spec import SweepSpec

    shutil.rmtree(setting.storage / sweep_name(setting, method, seed), ignore_errors=True)
    plan, dataset = prepare(setting, method, seed)
    log = epoch_log()
    spec = SweepSpec(
        name=plan.name,
        base_config=plan.config,
        space=plan.space,
        search_alg=method,
        num_samples=setting.num_samples,
        grace_period=setting.grace_period,
        rungs=plan.rungs,
        search_seed=seed,
        cpus_per_trial=1.0,
        gpus_per_trial=0.0,
        max_concurrent=setting.concurrency,
        storage=str(setting.storage),
        first_point=plan.first_point,
        callbacks=(log,),
    )
    started = time.perf_counter()
    result = tuner.run_sweep(spec, dataset)
    if result.trials < setting.num_samples:  # Tune ends a sweep early on Ctrl-C
        raise SystemExit(
            f"{PROG}: sweep {plan.name} ran {result.trials} of {setting.num_samples} trials"
        )
    return {
        "mode": setting.mode,
        "method": method,
        "seed": seed,
        "reports": [r.__dict__ for r in log.reports],
        "configs": log.configs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


class LazyCluster:
    """A local Ray cluster started at the first sweep that is not cached, stopped at the end."""

    def __init__(self, concurrency: int, stack: contextlib.ExitStack) -> None:
        self.concurrency, self.stack, self.started = concurrency, stack, False

    def ensure(self) -> None:
        if not self.started:
            from tfkd.sweep import cluster

            self.stack.enter_context(cluster.session(None, num_cpus=self.concurrency))
            self.started = True


# ---------------------------------------------------------------- one mode, stage by stage


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (the last key fastest)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def check_grid(mode: str, grid: Mapping[str, Sequence[float]]) -> None:
    """Each grid point must be a valid trial config (the coordinates may have moved)."""
    from tfkd.core.config import TrialConfig

    for point in grid_points(grid):
        try:
            TrialConfig.from_dict({"mode": mode, **point})
        except (ValueError, TypeError) as exc:
            raise UserError(
                f"the hand grid of {mode} is not a valid trial config ({exc}); "
                f"check search_spaces/{mode}.yaml"
            ) from None


def base_config(setting: Setting, units: Units) -> dict[str, Any]:
    """The mode's trial config without the searched keys (teacher attached), stored."""

    def compute() -> dict[str, Any]:
        plan, _ = prepare(setting, default_alg(), 0)
        return {"config": {**plan.config, "device": "cpu"}}

    return cached(units, "base", "config", compute)["config"]


def run_grid(
    setting: Setting, units: Units, base: Mapping[str, Any], grid: Mapping[str, Sequence[float]]
) -> list[dict[str, Any]]:
    """Every hand-grid point at the full schedule, seed 0 (cached per point)."""
    jobs = [
        ({**base, **point, "seed": TRIAL_SEED}, units.path(GRID, f"point-{i:03d}"))
        for i, point in enumerate(grid_points(grid))
    ]
    train_missing(jobs, setting.concurrency)
    return [json.loads(path.read_text()) for _, path in jobs]


def run_searches(
    setting: Setting, units: Units, cluster: LazyCluster, seeds: Mapping[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """Every method's sweeps, one per search seed (cached per sweep)."""
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for method, count in seeds.items():
        for seed in range(count):

            def compute(method: str = method, seed: int = seed) -> dict[str, Any]:
                cluster.ensure()
                print(f"[{PROG}] sweep {setting.mode} {method} search seed {seed}")
                return run_sweep(setting, method, seed)

            sweeps.setdefault(method, []).append(
                cached(units, "search", f"{method}-{seed:03d}", compute)
            )
    return sweeps


def retrain(
    setting: Setting,
    units: Units,
    choices: Mapping[str, Mapping[str, Any]],
    fresh: Sequence[int],
) -> dict[str, list[dict[str, Any]]]:
    """Each method's chosen configuration trained on the fresh seeds (cached per seed)."""
    jobs, where = [], {}
    for method, config in choices.items():
        key = config_key(config)
        for seed in fresh:
            path = units.path("retrain", f"{key}-seed{seed:05d}")
            jobs.append(({**config, "seed": seed, "device": "cpu"}, path))
            where.setdefault(method, []).append(path)
    train_missing(jobs, setting.concurrency)
    return {m: [json.loads(p.read_text()) for p in paths] for m, paths in where.items()}


def method_evidence(
    runs: Sequence[Mapping[str, Any]],
    trained: Sequence[Mapping[str, Any]],
    budgets: Sequence[int],
    reps: int,
) -> dict[str, Any]:
    """One method's numbers: best validation over seeds, the expected-best curve with its band,
    the median seed's choice and its fresh-seed test accuracy."""
    chosen = median_choice(runs)
    found = [r["best_val"] for r in runs if r["best_val"] is not None]
    return {
        "seeds": len(runs),
        "best_val": es.mean_ci(found),
        "best_val_per_seed": [r["best_val"] for r in runs],
        "trials": [r["trials"] for r in runs],
        "trial_epochs": [r["trial_epochs"] for r in runs],
        "expected_best": es.bootstrap_band([r["scores"] for r in runs], budgets, reps, seed=0),
        "median_seed": chosen["seed"],
        "chosen_config": chosen["best_config"],
        "fresh_seeds": [t["config"]["seed"] for t in trained],
        "fresh_test": [t["test"] for t in trained],
        "fresh_val": [t["val"] for t in trained],
        "fresh_test_ci": es.mean_ci([t["test"] for t in trained]),
    }


def compare_to_default(evidence: dict[str, dict[str, Any]], default: str) -> None:
    """Each row's difference to the default sampler: fresh-seed test accuracy paired by seed,
    best validation over search seeds unpaired (Welch)."""
    base = evidence[default]
    for method, row in evidence.items():
        if method == default:
            continue
        row["vs_default_test"] = es.paired_difference(row["fresh_test"], base["fresh_test"])
        found = [v for v in row["best_val_per_seed"] if v is not None]
        base_found = [v for v in base["best_val_per_seed"] if v is not None]
        row["vs_default_best_val"] = es.welch_difference(found, base_found)


def used_trial_seeds(
    grid: Sequence[Mapping[str, Any]], sweeps: Mapping[str, Sequence[Mapping[str, Any]]]
) -> set[int]:
    """Every seed a grid point or a search trial trained (what fresh seeds must avoid)."""
    seeds = {int(p["config"]["seed"]) for p in grid}
    for units in sweeps.values():
        seeds |= {int(c.get("seed", TRIAL_SEED)) for u in units for c in u["configs"].values()}
    return seeds


def run_mode(setting: Setting, opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Grid, searches, control, re-trainings and statistics of one mode (resumable)."""
    units = Units(root, setting.mode)
    grid_spec = hand_grid(setting.mode)
    grid_spec = smoke_grid(grid_spec) if opts.smoke_test else grid_spec
    check_grid(setting.mode, grid_spec)
    with contextlib.ExitStack() as stack:
        cluster = LazyCluster(setting.concurrency, stack)
        base = base_config(setting, units)
        grid = run_grid(setting, units, base, grid_spec)
        sweeps = run_searches(setting, units, cluster, opts.seeds_per_method)
    grid_best = max(grid, key=lambda p: p["val"])
    target = grid_best["val"] - opts.tolerance
    runs = {m: [sweep_summary(u, setting.epochs, target) for u in us] for m, us in sweeps.items()}
    control_seeds = range(max(opts.seeds_per_method.values()))
    runs[CONTROL] = control_draws(grid, opts.control_points or setting.num_samples, control_seeds)
    runs[GRID] = [
        {
            "seed": None,
            "trials": len(grid),
            "trial_epochs": sum(len(p["val_curve"]) for p in grid),
            "best_val": grid_best["val"],
            "best_test": grid_best["test"],
            "best_config": grid_best["config"],
            "scores": [p["val"] for p in grid],
        }
    ]
    used = used_trial_seeds(grid, sweeps)
    fresh = es.fresh_seeds(opts.fresh_seeds, used, FRESH_SEED_START)
    choices = {m: median_choice(r)["best_config"] for m, r in runs.items()}
    trained = retrain(setting, units, choices, fresh)
    budgets = list(range(1, setting.num_samples + 1))
    evidence = {m: method_evidence(runs[m], trained[m], budgets, opts.bootstrap) for m in runs}
    compare_to_default(evidence, opts.default_method)
    return {
        "mode": setting.mode,
        "grid": {k: list(v) for k, v in grid_spec.items()},
        "grid_compute": runs[GRID][0]["trial_epochs"],
        "grid_best_val": grid_best["val"],
        "tolerance": opts.tolerance,
        "default_method": opts.default_method,
        "trial_seeds": sorted(used),
        "fresh_seeds": fresh,
        "evidence": evidence,
        "runs": runs,
    }


# ---------------------------------------------------------------- verdicts and output


def choose_default(results: Sequence[Mapping[str, Any]], default: str) -> dict[str, Any]:
    """The sampler the numbers choose: a search method replaces the current default only if its
    fresh-seed test accuracy is above the default's beyond noise (paired 95% interval above 0) in
    at least one mode and below it beyond noise in none; the first such method by its smallest
    lower bound wins. Otherwise the default stays, and the intervals say how strongly."""
    methods = (
        [m for m in results[0]["evidence"] if m not in (GRID, CONTROL, default)] if results else []
    )
    better, evidence = [], {}
    for method in methods:
        diffs = [
            r["evidence"][method]["vs_default_test"] for r in results if method in r["evidence"]
        ]
        evidence[method] = {
            r["mode"]: {
                "test": r["evidence"][method]["vs_default_test"],
                "best_val": r["evidence"][method]["vs_default_best_val"],
            }
            for r in results
            if method in r["evidence"]
        }
        above = [d for d in diffs if not d["inconclusive"] and d["mean"] > 0]
        below = [d for d in diffs if not d["inconclusive"] and d["mean"] < 0]
        if above and not below:
            better.append((min(d["low"] for d in above), method))
    if better:
        choice = max(better)[1]
        reason = f"{choice}'s fresh-seed test accuracy is above {default}'s beyond noise"
    else:
        choice = default
        reason = (
            f"no search method's fresh-seed test accuracy is above {default}'s beyond noise "
            "(every paired 95% interval that does not span 0 is below it, or all span 0)"
        )
    return {"choice": choice, "current_default": default, "reason": reason, "evidence": evidence}


def _num(value: float | None, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _ci(interval: Mapping[str, Any], sign: bool = False) -> str:
    text = f"{_num(interval['mean'], sign)} [{_num(interval['low'], sign)}, "
    text += f"{_num(interval['high'], sign)}]"
    return text + (" inconclusive" if interval.get("inconclusive") else "")


def _vs(evidence: Mapping[str, Any], key: str) -> str:
    return _ci(evidence[key], sign=True) if key in evidence else ""


def method_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per method of a mode."""
    rows = []
    for method, ev in result["evidence"].items():
        band = ev["expected_best"]
        last = len(band["budgets"]) - 1
        rows.append(
            {
                "mode": result["mode"],
                "method": method + (" (default)" if method == result["default_method"] else ""),
                "search seeds": str(ev["seeds"]),
                "trial-epochs (median)": f"{int(np.median(ev['trial_epochs']))}",
                "best val (%) [95% CI]": _ci(ev["best_val"]),
                f"E[best val] at {band['budgets'][last]} trials [band]": (
                    f"{band['curve'][last]:.2f} [{band['low'][last]:.2f}, {band['high'][last]:.2f}]"
                ),
                "fresh-seed test (%) [95% CI]": _ci(ev["fresh_test_ci"]),
                "vs default: test (pp) [95% CI]": _vs(ev, "vs_default_test"),
                "vs default: best val (pp) [95% CI]": _vs(ev, "vs_default_best_val"),
            }
        )
    return rows


def markdown(results: Sequence[Mapping[str, Any]], choice: Mapping[str, Any] | None) -> str:
    rows = [row for result in results for row in method_rows(result)]
    if not rows:
        return ""
    lines = []
    for result in results:
        mine = method_rows(result)
        header = list(mine[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row.values()) + " |" for row in mine]
        lines.append(
            f"\n{result['mode']}: hand grid {result['grid_compute']} trial-epochs, best validation "
            f"{result['grid_best_val']:.2f}%; {CONTROL}: the budget-matched grid (per search seed, "
            "as many random grid points as a search has trials); fresh seeds "
            f"{result['fresh_seeds']} (trial seeds {result['trial_seeds']}).\n"
        )
    if choice:
        lines.append(f"Default sampler chosen: **{choice['choice']}** — {choice['reason']}.")
        for method, per_mode in choice["evidence"].items():
            lines.append(
                f"- {method} − {choice['current_default']}, fresh-seed test (paired by seed, pp): "
                + "; ".join(f"{mode} {_ci(d['test'], sign=True)}" for mode, d in per_mode.items())
                + "; best validation over search seeds (Welch, pp): "
                + "; ".join(
                    f"{mode} {_ci(d['best_val'], sign=True)}" for mode, d in per_mode.items()
                )
            )
    return "\n".join(lines) + "\n"


COLOURS = {GRID: "black", CONTROL: "grey", RANDOM: "tab:blue"}
PALETTE = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot(results: Sequence[Mapping[str, Any]], target: Any) -> None:
    """Expected best validation accuracy vs trials per method, with the bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        others = iter(PALETTE)
        for method, ev in result["evidence"].items():
            band = ev["expected_best"]
            colour = COLOURS.get(method) or next(others, "tab:cyan")
            style = "--" if method == GRID else "-"  # the grid's expectation is the control's
            ax.plot(band["budgets"], band["curve"], style, color=colour, label=method, lw=1.6)
            ax.fill_between(band["budgets"], band["low"], band["high"], color=colour, alpha=0.15)
        ax.set_title(f"{result['mode']}: expected best validation (Dodge et al. 2019)")
        ax.set_xlabel("trials (hyper-parameter assignments)")
        ax.set_ylabel("expected best validation accuracy (%)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(target, dpi=110, format="png")
    plt.close(fig)


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


def write_outputs(document: Mapping[str, Any], out: Path, stem: str) -> str:
    """<stem>.json, .md and .png into `out`, each written atomically."""
    table = markdown(document["results"], document.get("choice"))
    atomic.write_text(out / f"{stem}.json", json.dumps(document, indent=1))
    atomic.write_text(out / f"{stem}.md", table)
    with atomic.replacing(out / f"{stem}.png") as png:
        plot(document["results"], png)
    return table


def merged(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several per-mode documents as one, with the default sampler the numbers choose."""
    document = dict(documents[0])
    document["results"] = [r for d in documents for r in d["results"]]
    document["modes"] = [r["mode"] for r in document["results"]]
    document["wall_seconds"] = round(sum(d["wall_seconds"] for d in documents), 1)
    document["unit_wall_seconds"] = {
        r["mode"]: d.get("unit_wall_seconds") for d in documents for r in d["results"]
    }
    default = document["results"][0]["default_method"] if document["results"] else ""
    document["choice"] = choose_default(document["results"], default)
    return document


# ---------------------------------------------------------------- command line


def key_counts(pairs: Sequence[str], allowed: Sequence[str], flag: str) -> dict[str, int]:
    """NAME=N pairs -> {NAME: N}; bad ones are user errors."""
    out = {}
    for pair in pairs:
        name, _, n = pair.partition("=")
        if name not in allowed or not n.isdigit() or int(n) < 1:
            raise UserError(f"{flag} {pair}: want NAME=N with NAME one of {', '.join(allowed)}")
        out[name] = int(n)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="ALG",
        help="tune_main --search-alg values to run (default: all but grid)",
    )
    parser.add_argument(
        "--default-method",
        default=None,
        metavar="ALG",
        help="the sampler the others are compared with (default: tune_main's --search-alg)",
    )
    parser.add_argument(
        "--search-seeds",
        nargs="+",
        default=[],
        metavar="ALG=N",
        help=f"search seeds per method (default {MANY_SEEDS} for the default and random, "
        f"{FEW_SEEDS} for the others)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="the full schedule (default 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--num-samples", type=int, default=None, help="trials per sweep (tune_main's default)"
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="geometric ASHA rungs from N (default: tune_main's rungs on the schedule)",
    )
    parser.add_argument("--fresh-seeds", type=int, default=5, help="re-training seeds (5)")
    parser.add_argument(
        "--control-points",
        type=int,
        default=None,
        help="grid points per control draw (default: --num-samples)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--tolerance", type=float, default=0.3, help="pp below the grid's best")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at a time")
    parser.add_argument(
        "--workdir",
        default=str(Path.home() / "tfkd-evidence"),
        help="units of work (resumable), Ray results, MLflow (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="per-mode outputs (default: WORKDIR/out)")
    parser.add_argument(
        "--render",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: merge per-mode search_efficiency_<mode>.json files into "
        "search_efficiency.{json,md,png} in --out",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="fake data, 2 epochs, a 2-point grid, 2 trials, 2 search seeds, 2 fresh seeds",
    )
    return parser


def resolve(opts: argparse.Namespace) -> argparse.Namespace:
    """Methods, seeds and budget from tune_main's choices; user errors raise UserError."""
    algs = search_algs()
    opts.methods = list(dict.fromkeys(opts.methods or algs))
    unknown = [m for m in opts.methods if m not in algs]
    if unknown:
        raise UserError(f"--methods {' '.join(unknown)}: not a --search-alg of tune_main {algs}")
    opts.default_method = opts.default_method or default_alg()
    if opts.default_method not in algs:
        raise UserError(f"--default-method {opts.default_method}: want one of {algs}")
    if opts.default_method not in opts.methods:
        opts.methods.insert(0, opts.default_method)
    overrides = key_counts(opts.search_seeds, opts.methods, "--search-seeds")
    if opts.smoke_test:
        overrides = dict.fromkeys(opts.methods, SMOKE_TEST["seeds"])
        opts.epochs, opts.fresh_seeds = SMOKE_TEST["epochs"], SMOKE_TEST["fresh"]
        opts.num_samples = SMOKE_TEST["num_samples"]
    opts.seeds_per_method = {
        m: seeds_wanted(m, opts.default_method, overrides) for m in opts.methods
    }
    opts.num_samples = opts.num_samples or default_num_samples()
    for name in ("epochs", "batch_size", "num_samples", "fresh_seeds", "concurrency"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if opts.fresh_seeds < 2:
        raise UserError("--fresh-seeds must be at least 2 (an interval needs two)")
    return opts


def smoke_grid(grid: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """The first two temperatures (epsilons for lsr), the first value of everything else."""
    first = "temperature" if "temperature" in grid else next(iter(grid))
    return {k: v[:2] if k == first else v[:1] for k, v in grid.items()}


def setting_for(mode: str, opts: argparse.Namespace, root: Path) -> Setting:
    dataset, extra = "digits", ()
    if opts.smoke_test:
        dataset, extra = "fake", (f"fake_size={SMOKE_TEST['fake_size']}",)
    return Setting(
        mode=mode,
        dataset=dataset,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        num_samples=opts.num_samples,
        grace_period=None if opts.grace_period is None else min(opts.grace_period, opts.epochs),
        concurrency=opts.concurrency,
        scratch=root / mode,
        extra_sets=extra,
    )


def run(opts: argparse.Namespace, root: Path, out: Path) -> list[dict[str, Any]]:
    """Each mode in turn; its outputs are written when it ends."""
    documents = []
    for mode in opts.modes:
        started = time.perf_counter()
        result = run_mode(setting_for(mode, opts, root), opts, root)
        document = {
            "machine": machine(),
            "command": f"python benchmarks/{PROG} " + " ".join(opts.argv),
            "dataset": setting_for(mode, opts, root).dataset,
            "model": "resnet8",
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "num_samples": opts.num_samples,
            "grace_period": opts.grace_period,
            "concurrency": opts.concurrency,
            "methods": opts.methods,
            "search_seeds": opts.seeds_per_method,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "unit_wall_seconds": unit_wall_seconds(root, mode),
            "results": [result],
        }
        document["choice"] = choose_default([result], opts.default_method)
        print(write_outputs(document, out, f"search_efficiency_{mode}"))
        documents.append(document)
    return documents


def unit_wall_seconds(root: Path, mode: str) -> float:
    """The compute the mode's stored units took, all sessions together (seconds)."""
    return round(
        sum(
            json.loads(p.read_text()).get("wall_seconds", 0.0)
            for p in (root / "units" / mode).glob("*/*.json")
        ),
        1,
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    opts.argv = argv
    with user_errors():
        if opts.render:
            missing = [p for p in opts.render if not Path(p).is_file()]
            if missing:
                raise UserError(f"--render {missing[0]}: no such file; give per-mode JSON files")
            out = Path(opts.out or REPO / "benchmarks" / "results")
            documents = [json.loads(Path(p).read_text()) for p in opts.render]
            print(write_outputs(merged(documents), out, "search_efficiency"))
            return 0
        opts = resolve(opts)
    root = Path(opts.workdir).resolve()
    run(opts, root, Path(opts.out) if opts.out else root / "out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
