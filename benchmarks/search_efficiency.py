"""What the search buys over the paper's hand grid: accuracy found per compute spent.

    python benchmarks/search_efficiency.py [--epochs 20] [--batch-size 64] [--seeds 0 1 2 3 4]
        [--modes tfkd_self tfkd_reg lsr] [--methods random tpe gp] [--out DIR] [--json]
        [--smoke-test]

For tfkd_self, tfkd_reg and lsr on scikit-learn's digits (resnet8, real data, offline), three
ways of choosing the hyper-parameters, each a sweep through `tfkd.sweep.tuner.run_sweep` (the
code path of tune_main), one CPU thread per trial, two trials at a time:

  grid    the paper's protocol: every combination of the values the original authors used across
          models (reference/original_hparams.csv), each trained for the full schedule;
  random  random search + ASHA on the mode's search space (search_spaces/<mode>.yaml);
  tpe     Optuna's multivariate TPE + ASHA, tfkd's default, the preset (or defaults) first;
  gp      Optuna's GP sampler + ASHA (`--search-alg gp`), the preset first; only when --methods
          names it;
          each search method (--methods, default random and tpe) once per search seed
          (--search-seed), every trial at seed 0, at tune_main's default budget and rungs unless
          --num-samples / --grace-period say else.

A Tune callback records every reported epoch in the order the driver receives it; one report is
one trial-epoch of compute. A sweep has found a configuration when a trial reports the last epoch
of the schedule (trials ASHA stopped early never count as found, as in analysis.best_configs).
Reported per sweep: the best validation accuracy found, that trial's test accuracy, the
trial-epochs spent in all, and the trial-epochs spent until the best-so-far validation accuracy
first came within --tolerance (0.3 pp) of the grid's best. Target: TPE + ASHA gets there within
1/3 of the grid's compute. Writes search_efficiency.json, .md and .png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from ray import tune  # noqa: E402

from tfkd import tracking  # noqa: E402
from tfkd.cli import tune as cli  # noqa: E402
from tfkd.cli.flags import EXIT_OK  # noqa: E402
from tfkd.cli.parser import build_parser as tune_main_parser  # noqa: E402
from tfkd.cli.plan import Plan  # noqa: E402
from tfkd.core import modes  # noqa: E402
from tfkd.sweep import cluster, tuner  # noqa: E402
from tfkd.sweep.spec import SweepSpec  # noqa: E402

# The values the original authors used across models (reference/original_hparams.csv).
GRIDS: dict[str, dict[str, list[float]]] = {
    "tfkd_self": {"temperature": [6, 20], "alpha": [0.4, 0.9, 0.95], "multiplier": [1, 50, 100]},
    "tfkd_reg": {
        "temperature": [10, 20, 40],
        "alpha": [0.1, 0.5, 0.95],
        "multiplier": [1, 50, 100],
    },
    "lsr": {"epsilon": [0.1]},  # the original's only value (hard-coded)
}
GRID_FIXED = {"semantics": "reference", "correct_prob": 0.99}  # the original code's values
# name -> --search-alg; "tpe_wide": TPE on the spaces given by --wide-spaces (e.g. the pre-#12 ones)
METHODS = {"grid": "grid", "random": "random", "tpe": "optuna", "gp": "gp", "tpe_wide": "optuna"}
SEARCH_METHODS = ("random", "tpe", "gp")  # what --methods may name (the grid always runs)
DEFAULT_METHODS = ("random", "tpe")
TARGET_FRACTION = 1 / 3
DEFAULT_SAMPLES = tune_main_parser().get_default("num_samples")  # tune_main's default budget
SMOKE_TEST = {"epochs": 2, "num_samples": 2, "seeds": [0], "fake_size": 256}


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


@dataclass(frozen=True)
class SweepSummary:
    mode: str
    method: str
    seed: int | None
    trials: int
    trial_epochs: int
    best_val: float | None
    best_test: float | None
    to_target: int | None  # trial-epochs until within tolerance of the grid's best
    wall_seconds: float


def summarise(
    mode: str,
    method: str,
    seed: int | None,
    reports: Sequence[Report],
    epochs: int,
    target: float,
    wall_seconds: float = 0.0,
) -> SweepSummary:
    best = best_trial(reports, epochs)
    return SweepSummary(
        mode=mode,
        method=method,
        seed=seed,
        trials=len({r.trial for r in reports}),
        trial_epochs=len(reports),
        best_val=best.val_accuracy if best else None,
        best_test=best.test_accuracy if best else None,
        to_target=compute_to_reach(best_so_far(reports, epochs), target),
        wall_seconds=round(wall_seconds, 1),
    )


def json_curve(curve: Sequence[tuple[int, float]]) -> list[tuple[int, float | None]]:
    """NaN (nothing found yet) as None, which JSON can hold."""
    return [(spent, None if math.isnan(best) else best) for spent, best in curve]


def median_to_target(reached: Sequence[int | None]) -> int | None:
    """The median seed's trial-epochs to the grid's best (the upper median of an even count);
    a seed that never got there counts as the most; None when the median seed never did."""
    spent = sorted(math.inf if r is None else r for r in reached)
    median = statistics.median_high(spent) if spent else math.inf
    return None if median == math.inf else int(median)


def target_met(reached: Sequence[int | None], grid_compute: int) -> bool:
    """The median seed reached the grid's best within 1/3 of the grid's compute."""
    median = median_to_target(reached)
    return median is not None and median <= grid_compute * TARGET_FRACTION


def verdicts(result: Mapping[str, Any]) -> dict[str, tuple[int | None, bool]]:
    """Per search method of a mode's result: the median seed's compute to the grid's best, and
    whether that meets the target."""
    by_method: dict[str, list[int | None]] = {}
    for s in result["summaries"]:
        if s["method"] != "grid":
            by_method.setdefault(s["method"], []).append(s["to_target"])
    return {
        m: (median_to_target(r), target_met(r, result["grid_compute"]))
        for m, r in by_method.items()
    }


# ---------------------------------------------------------------- running the sweeps


class EpochLog(tune.Callback):
    """Every result the driver receives, in order: the sweep's compute as it is spent."""

    def __init__(self) -> None:
        self.reports: list[Report] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.reports.append(
            Report(
                trial=trial.trial_id,
                epoch=int(result["epoch"]),
                val_accuracy=float(result["val_accuracy"]),
                test_accuracy=result.get("test_accuracy"),
            )
        )


@dataclass(frozen=True)
class Setting:
    """What every sweep of the benchmark shares."""

    dataset: str
    epochs: int
    batch_size: int
    grace_period: int | None  # None: the schedule rungs of tune_main
    concurrency: int
    workdir: Path
    extra_sets: tuple[str, ...] = ()

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.workdir / 'mlflow.db'}"


def grid_space_file(mode: str, grid: Mapping[str, list[float]], workdir: Path) -> Path:
    """The hand grid as a search-space YAML of choices (run with --search-alg grid)."""
    fixed = {k: v for k, v in GRID_FIXED.items() if k not in grid}
    doc = {
        "mode": mode,
        "description": "the paper's hand grid (benchmarks/search_efficiency.py)",
        "params": {k: {"distribution": "choice", "values": list(v)} for k, v in grid.items()},
        "defaults": fixed,
    }
    path = workdir / f"grid_{mode}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tune_main_args(
    setting: Setting, mode: str, method: str, seed: int, space: Path | None, samples: int
) -> list[str]:
    args = [
        *("--mode", mode, "--dataset", setting.dataset, "--model", "resnet8"),
        *("--epochs", str(setting.epochs), "--set", f"batch_size={setting.batch_size}"),
        *("--search-alg", METHODS[method], "--num-samples", str(samples)),
        *("--search-seed", str(seed), "--seed", "0"),  # every sweep's trials share one seed
        *("--storage", str(setting.workdir / "ray_results"), "--data-dir", str(setting.workdir)),
        *("--name", f"{mode}-{method}-{seed}", "--mlflow-uri", setting.mlflow_uri),
        *("--max-concurrent", str(setting.concurrency), "--cpus-per-trial", "1"),
        *(["--train-teacher"] if modes.get(mode).needs_teacher else []),
    ]
    for pair in setting.extra_sets:
        args += ["--set", pair]
    return args + (["--search-space", str(space)] if space else [])


def prepare(args: list[str]) -> tuple[Plan, Any]:
    """tune_main's own validation and teacher resolution (training the teacher if missing)."""
    prepared = cli.prepare(tune_main_parser().parse_args(args))
    try:
        code, prepared = cli.train_missing_teacher(prepared)
    finally:
        prepared.lock.release()  # run_one runs the sweep itself, under its own name
    if code != EXIT_OK:
        raise SystemExit(f"training the teacher failed (exit {code})")
    plan = prepared.plan
    location = plan.config.get("teacher_checkpoint", "")
    if location:  # trials run without tracking: give them the downloaded file
        config = {
            **plan.config,
            "teacher_checkpoint": tracking.local_path(location, prepared.mlflow_uri),
        }
        plan = replace(plan, config=config)
    return plan, prepared.dataset


def run_one(
    setting: Setting, mode: str, method: str, seed: int, samples: int, space: Path | None
) -> tuple[list[Report], float]:
    """One sweep through tuner.run_sweep; returns its reports in arrival order and wall time."""
    plan, dataset = prepare(tune_main_args(setting, mode, method, seed, space, samples))
    log = EpochLog()
    spec = SweepSpec(
        name=plan.name,
        base_config=plan.config,
        space=plan.space,
        search_alg=METHODS[method],
        num_samples=samples,
        grace_period=setting.epochs if method == "grid" else setting.grace_period,
        rungs=plan.rungs,
        search_seed=seed,
        cpus_per_trial=1.0,
        gpus_per_trial=0.0,
        max_concurrent=setting.concurrency,
        storage=str(setting.workdir / "ray_results"),
        first_point=plan.first_point,
        callbacks=(log,),
    )
    started = time.perf_counter()
    result = tuner.run_sweep(spec, dataset)
    expected = (
        math.prod(len(p.values) for p in plan.space.params.values())
        if method == "grid"
        else samples
    )
    if result.trials < expected:  # Tune ends a sweep early on Ctrl-C; its numbers would mislead
        raise SystemExit(
            f"search_efficiency.py: sweep {plan.name} ran {result.trials} of {expected} "
            "trials; stopping"
        )
    return log.reports, time.perf_counter() - started


def run_mode(
    setting: Setting,
    mode: str,
    grid: Mapping[str, list[float]],
    samples: int,
    seeds: list[int],
    tolerance: float,
    wide: tuple[Path | None, list[int]] = (None, []),
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, Any]:
    """The grid, then each search method per seed; curves and summaries against the grid's best.

    `wide`: a folder of <mode>.yaml spaces for TPE to run on as well, and the seeds to run.
    """
    grid_reports, grid_wall = run_one(
        setting, mode, "grid", 0, 1, grid_space_file(mode, grid, setting.workdir)
    )
    runs = [("grid", None, grid_reports, grid_wall)]
    sweeps = [(m, s, None) for m in methods for s in seeds]
    if wide[0] is not None:
        sweeps += [("tpe_wide", s, wide[0] / f"{mode}.yaml") for s in wide[1]]
    for method, seed, space in sweeps:
        reports, wall = run_one(setting, mode, method, seed, samples, space)
        runs.append((method, seed, reports, wall))
    grid_best = best_trial(grid_reports, setting.epochs)
    target = (grid_best.val_accuracy if grid_best else math.inf) - tolerance
    summaries = [
        summarise(mode, method, seed, reports, setting.epochs, target, wall)
        for method, seed, reports, wall in runs
    ]
    return {
        "mode": mode,
        "grid": {k: list(v) for k, v in grid.items()},
        "grid_compute": len(grid_reports),
        "target_val": target,
        "summaries": [asdict(s) for s in summaries],
        "curves": [
            {"method": m, "seed": s, "curve": json_curve(best_so_far(r, setting.epochs))}
            for m, s, r, _ in runs
        ],
    }


# ---------------------------------------------------------------- output


def _pp(value: float | None) -> str:
    return (
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    )


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def method_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per (mode, method): seeds pooled as mean ± std, compute to target per seed."""
    grid_compute = result["grid_compute"]
    rows = []
    for method in METHODS:
        runs = [s for s in result["summaries"] if s["method"] == method]
        if not runs:
            continue
        reached = [s["to_target"] for s in runs]
        rows.append(
            {
                "mode": result["mode"],
                "method": method,
                "sweeps": str(len(runs)),
                "trials": "/".join(str(s["trials"]) for s in runs),
                "trial-epochs": "/".join(str(s["trial_epochs"]) for s in runs),
                "best val (%)": _mean_std(
                    [s["best_val"] for s in runs if s["best_val"] is not None]
                ),
                "its test (%)": _mean_std(
                    [s["best_test"] for s in runs if s["best_test"] is not None]
                ),
                "trial-epochs to grid best": "/".join(
                    "—" if r is None else str(r) for r in reached
                ),
                "fraction of grid": "/".join(
                    "—" if r is None else f"{r / grid_compute:.2f}" for r in reached
                ),
            }
        )
    return rows


def markdown(results: Sequence[Mapping[str, Any]], tolerance: float) -> str:
    rows = [row for result in results for row in method_rows(result)]
    header = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
    notes = [
        f"\n{r['mode']}: grid best validation {_pp(r['target_val'] + tolerance)}%; target "
        f"(within {tolerance} pp) reached within 1/3 of the grid's {r['grid_compute']} "
        "trial-epochs by the median seed (its trial-epochs): "
        + ", ".join(
            f"{m} {'yes' if met else 'no'} ({'never' if median is None else median})"
            for m, (median, met) in verdicts(r).items()
        )
        for r in results
    ]
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def plot(results: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "grid": "black",
        "random": "tab:blue",
        "tpe": "tab:orange",
        "gp": "tab:green",
        "tpe_wide": "tab:red",
    }
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        labelled = set()
        for run in result["curves"]:
            points = [(x, y) for x, y in run["curve"] if y is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            label = None if run["method"] in labelled else run["method"]
            labelled.add(run["method"])
            ax.step(
                xs,
                ys,
                where="post",
                color=colours[run["method"]],
                label=label,
                lw=2.2 if run["method"] == "grid" else 1.2,
                alpha=0.9,
            )
        ax.axhline(result["target_val"], ls="--", color="grey", lw=0.8, label="grid best − tol.")
        ax.axvline(
            result["grid_compute"] * TARGET_FRACTION,
            ls=":",
            color="grey",
            lw=0.8,
            label="1/3 of the grid's compute",
        )
        ax.set_title(f"{result['mode']}: best-so-far validation accuracy")
        ax.set_xlabel("trial-epochs spent")
        ax.set_ylabel("validation accuracy (%)")
        low = min(
            (y for run in result["curves"] for _, y in run["curve"] if y is not None),
            default=0.0,
        )
        ax.set_ylim(max(low - 1, 0), 100.5)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--epochs", type=int, default=20, help="the full schedule (default 20)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="geometric ASHA rungs from N (default: tune_main's rungs on the schedule)",
    )
    parser.add_argument(
        "--num-samples",
        nargs="+",
        default=[],
        metavar="MODE=N",
        help="trials per search sweep (default tune_main's, 8)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=SEARCH_METHODS,
        help="search methods to compare with the grid (default: %(default)s)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--tolerance", type=float, default=0.3, help="pp below the grid's best")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--wide-spaces",
        default=None,
        metavar="DIR",
        help="also run TPE + ASHA on DIR/<mode>.yaml (e.g. an earlier version of the spaces)",
    )
    parser.add_argument(
        "--wide-seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds for --wide-spaces (default --seeds)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--workdir", default=None, help="Ray results and MLflow (default: temp)")
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    parser.add_argument(
        "--render",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: merge earlier runs' search_efficiency.json (e.g. one per --modes run) "
        "and write the table, plot and JSON into --out",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="fake data, 2 epochs, a 2-point grid, 2 trials, one seed (tests and CI)",
    )
    return parser


def samples_per_mode(pairs: Sequence[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        mode, _, n = pair.partition("=")
        if mode not in GRIDS or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"search_efficiency.py: error: --num-samples {pair}: want MODE=N")
        out[mode] = int(n)
    return out


def smoke_grid(grid: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """The first two temperatures, the first value of everything else."""
    return {k: v[:2] if k == "temperature" else v[:1] for k, v in grid.items()}


def run(opts: argparse.Namespace, workdir: Path, out: Path) -> dict[str, Any]:
    """Every mode's sweeps; the outputs are rewritten after each mode (a long run shows early)."""
    samples = samples_per_mode(opts.num_samples)
    seeds, epochs, extra, dataset = opts.seeds, opts.epochs, (), "digits"
    if opts.smoke_test:
        seeds, epochs = SMOKE_TEST["seeds"], SMOKE_TEST["epochs"]
        samples = dict.fromkeys(GRIDS, SMOKE_TEST["num_samples"])
        dataset, extra = "fake", (f"fake_size={SMOKE_TEST['fake_size']}",)
    setting = Setting(
        dataset,
        epochs,
        opts.batch_size,
        None if opts.grace_period is None else min(opts.grace_period, epochs),
        opts.concurrency,
        workdir,
        extra,
    )
    document = {
        "machine": machine(),
        "dataset": dataset,
        "model": "resnet8",
        "epochs": epochs,
        "batch_size": opts.batch_size,
        "grace_period": setting.grace_period,
        "num_samples": {mode: samples.get(mode, DEFAULT_SAMPLES) for mode in opts.modes},
        "concurrency": opts.concurrency,
        "seeds": seeds,
        "methods": list(opts.methods),
        "tolerance": opts.tolerance,
        "wall_seconds": 0.0,
        "results": [],
    }
    wide = (
        Path(opts.wide_spaces).resolve() if opts.wide_spaces else None,
        seeds if opts.wide_seeds is None or opts.smoke_test else opts.wide_seeds,
    )
    started = time.perf_counter()
    with cluster.session(None, num_cpus=opts.concurrency):
        for mode in opts.modes:
            grid = smoke_grid(GRIDS[mode]) if opts.smoke_test else GRIDS[mode]
            document["results"].append(
                run_mode(
                    setting,
                    mode,
                    grid,
                    samples.get(mode, DEFAULT_SAMPLES),
                    seeds,
                    opts.tolerance,
                    wide,
                    opts.methods,
                )
            )
            document["wall_seconds"] = round(time.perf_counter() - started, 1)
            write_outputs(document, out)
    return document


def write_outputs(document: Mapping[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(document["results"], document["tolerance"])
    (out / "search_efficiency.json").write_text(json.dumps(document, indent=1))
    (out / "search_efficiency.md").write_text(table)
    plot(document["results"], out / "search_efficiency.png")
    return table


def merged(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several runs' documents as one: their modes' results in order, compute and time added."""
    document = dict(documents[0])
    document["results"] = [r for d in documents for r in d["results"]]
    document["num_samples"] = {k: v for d in documents for k, v in d["num_samples"].items()}
    document["methods"] = list(dict.fromkeys(m for d in documents for m in d.get("methods", ())))
    document["wall_seconds"] = round(sum(d["wall_seconds"] for d in documents), 1)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    out = Path(opts.out)
    if opts.render:
        document = merged([json.loads(Path(path).read_text()) for path in opts.render])
        write_outputs(document, out)
    elif opts.workdir:
        workdir = Path(opts.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        document = run(opts, workdir, out)
    else:
        with tempfile.TemporaryDirectory(prefix="tfkd-search-efficiency-") as tmp:
            document = run(opts, Path(tmp), out)
    print(markdown(document["results"], document["tolerance"]))
    print(f"wall time {document['wall_seconds']} s on {document['machine']['cpus']} CPUs")
    if opts.json:
        print(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
