"""What Ray Tune costs: the same trials run directly with run_trial and as a `tfkd tune` sweep.

    python benchmarks/tune_overhead.py [--trials 4] [--epochs 20] [--json]

Trials are resnet8 on scikit-learn's digits (real data, offline), one CPU thread each. The sweep
runs with concurrency = the number of cores (a local Ray, MLflow tracking to a SQLite file in a
temporary folder). Reported:
  * start-up latency per trial: from Tune starting the trial to its first report, minus that
    epoch's own compute time (actor start, imports, dataset from the object store, MLflow run);
  * sweep efficiency: sum of trial compute time / (sweep wall time x concurrency), where compute
    time is the trials' own epoch times and the wall time runs from the first trial's start to
    the last trial's end.
Targets: efficiency >= 0.8 for trials of 30 s or more; start-up < 5 s after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from ray import tune  # noqa: E402

from tfkd.core.train import dataset_of, run_trial  # noqa: E402
from tfkd.sweep import cluster, tuner  # noqa: E402
from tfkd.sweep.plan import make_plan  # noqa: E402
from tfkd.sweep.request import SweepRequest  # noqa: E402
from tfkd.sweep.spec import SweepSpec  # noqa: E402


class Timeline(tune.Callback):
    """Driver-side times of each trial's start, results and end."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.results: dict[str, list[tuple[float, dict]]] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.setdefault(trial.trial_id, []).append((time.time(), dict(result)))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended[trial.trial_id] = time.time()


def trial_request(trials: int, epochs: int, workdir: Path, concurrency: int) -> SweepRequest:
    """The sweep `tfkd tune` would run for the trials: a grid over their seeds."""
    space = workdir / "seeds.yaml"
    space.write_text(
        f"mode: baseline\nparams: {{seed: {{distribution: choice, "
        f"values: {list(range(trials))}}}}}\n"
    )
    return SweepRequest(
        mode="baseline",
        dataset="digits",
        model="resnet8",
        epochs=epochs,
        search_alg="grid",
        num_samples=1,
        max_concurrent=concurrency,
        cpus_per_trial=1.0,
        grace_period=epochs,
        name="overhead",
        search_space=str(space),
        storage=str(workdir / "ray_results"),
        mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        data_dir=str(workdir),
    )


def run_direct(config: dict, seeds: list[int]) -> list[float]:
    torch.set_num_threads(1)
    seconds = []
    for seed in seeds:
        started = time.perf_counter()
        run_trial({**config, "seed": seed})
        seconds.append(time.perf_counter() - started)
    return seconds


def run_tuned(request: SweepRequest, concurrency: int) -> tuple[Timeline, float]:
    plan = make_plan(request)
    dataset = dataset_of(plan.config)
    timeline = Timeline()
    spec = SweepSpec(
        name=plan.name,
        base_config=plan.config,
        space=plan.space,
        search_alg="grid",
        num_samples=1,
        grace_period=plan.config["epochs"],
        cpus_per_trial=1.0,
        max_concurrent=concurrency,
        storage=request.storage,
        callbacks=(timeline,),
    )
    started = time.perf_counter()
    with cluster.session(None, num_cpus=concurrency):
        tuner.run_sweep(spec, dataset)
    return timeline, time.perf_counter() - started


def summarise(timeline: Timeline, concurrency: int) -> dict:
    compute = {t: sum(r["epoch_seconds"] for _, r in rs) for t, rs in timeline.results.items()}
    startup = {
        t: rs[0][0] - timeline.started[t] - rs[0][1]["epoch_seconds"]
        for t, rs in timeline.results.items()
    }
    order = sorted(timeline.started, key=timeline.started.get)
    wall = max(timeline.ended.values()) - min(timeline.started.values())
    return {
        "trial_compute_seconds": [round(compute[t], 2) for t in order],
        "startup_seconds": [round(startup[t], 2) for t in order],
        "startup_after_first_max": round(max(startup[t] for t in order[1:]), 2)
        if len(order) > 1
        else None,
        "sweep_wall_seconds": round(wall, 2),
        "efficiency": round(sum(compute.values()) / (wall * concurrency), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        request = trial_request(opts.trials, opts.epochs, workdir, opts.concurrency)
        plan = make_plan(request)
        direct = run_direct({**plan.config, "data_dir": str(workdir)}, list(range(opts.trials)))
        timeline, total = run_tuned(request, opts.concurrency)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "trials": opts.trials,
        "epochs": opts.epochs,
        "concurrency": opts.concurrency,
        "direct_trial_seconds": [round(s, 2) for s in direct],
        "tune_total_seconds_with_ray_start": round(total, 2),
        **summarise(timeline, opts.concurrency),
    }
    print(f"{'trial':>6} {'direct s':>9} {'tune compute s':>15} {'start-up s':>11}")
    for i, (d, c, s) in enumerate(
        zip(
            result["direct_trial_seconds"],
            result["trial_compute_seconds"],
            result["startup_seconds"],
            strict=False,
        )
    ):
        print(f"{i:>6} {d:>9.1f} {c:>15.1f} {s:>11.2f}")
    print(
        f"sweep wall {result['sweep_wall_seconds']} s x {opts.concurrency} concurrent: "
        f"efficiency {result['efficiency']} (target >= 0.8); start-up after the first "
        f"<= {result['startup_after_first_max']} s (target < 5)"
    )
    if opts.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
