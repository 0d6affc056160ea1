"""How many trials a model-based sweep proposes before any result, and how many run at once.

    python benchmarks/first_wave.py [--epoch-s 1.5] [--runs 8:none,8:4,12:4,8:default] [--out F]

A local Ray declaring one GPU and 4 CPUs (4 trials of 0.25 GPU and 1 CPU fit; nothing touches a
GPU), tfkd's TPE searcher (tfkd.sweep.tuner.searcher) and a dummy trial of two epochs that sleeps
--epoch-s seconds each. Each run is N:LIMIT: N trials with Tune's concurrency limit LIMIT (none:
no limit, as tfkd had before: Ray then keeps one trial pending beyond those running; default:
tfkd.sweep.tuner.concurrency). A Tune callback counts the trials proposed before the first
trial ended (Tune proposes at the start of a step, before that step's events) and the most
trials running at once.
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

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no configuration box per run
import ray  # noqa: E402
from ray import tune  # noqa: E402

from tfkd.sweep import tuner  # noqa: E402
from tfkd.sweep.search_space import loads  # noqa: E402
from tfkd.sweep.spec import SweepSpec  # noqa: E402

SPACE = loads(
    """
mode: tfkd_reg
params:
  temperature: {distribution: loguniform, low: 1, high: 40}
  ce_weight: {distribution: uniform, low: 0.05, high: 0.95}
""",
    mode="tfkd_reg",
)
RESOURCES = {"cpu": 1, "gpu": 0.25}


class ProposalCounter(tune.Callback):
    """Trials proposed before the first result, and the most trials running at once."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.ended = 0
        self.before_first_result = 0
        self.most_running = 0

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.known |= {t.trial_id for t in trials}
        self.most_running = max(self.most_running, sum(t.status == "RUNNING" for t in trials))

    def on_step_end(self, iteration, trials, **info) -> None:
        new = {t.trial_id for t in trials} - self.known
        self.before_first_result += len(new) if self.ended == 0 else 0
        self.known |= new

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended += 1


def dummy_trial(config: dict) -> None:
    for epoch in (1, 2):
        time.sleep(config["epoch_s"])
        tune.report({"val_accuracy": 50 - (config["ce_weight"] - 0.3) ** 2, "epoch": epoch})


def run(trials: int, limit: str, epoch_s: float, storage: str) -> dict:
    spec = SweepSpec(
        name="first-wave",
        base_config={"epochs": 2},
        space=SPACE,
        num_samples=trials,
        first_point={"temperature": 20.0, "ce_weight": 0.5},
    )
    named = {"none": None, "default": tuner.concurrency(spec)}
    at_once = named[limit] if limit in named else int(limit)
    counter = ProposalCounter()
    start = time.monotonic()
    tune.Tuner(
        tune.with_resources(dummy_trial, RESOURCES),
        param_space={
            "epoch_s": epoch_s,
            "temperature": tune.loguniform(1, 40),
            "ce_weight": tune.uniform(0.05, 0.95),
        },
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            search_alg=tuner.searcher(spec),
            num_samples=trials,
            max_concurrent_trials=at_once,
        ),
        run_config=tune.RunConfig(callbacks=[counter], verbose=0, storage_path=storage),
    ).fit()
    return {
        "trials": trials,
        "limit": at_once if at_once else "none",
        "proposed_before_any_result": counter.before_first_result,
        "most_running": counter.most_running,
        "wall_s": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-s", type=float, default=1.5)
    parser.add_argument("--runs", default="8:none,8:4,12:4,8:default")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the JSON here")
    args = parser.parse_args()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as storage:
        rows = [
            run(int(n), limit, args.epoch_s, storage)
            for n, limit in (pair.split(":") for pair in args.runs.split(","))
        ]
    ray.shutdown()
    machine = {"machine": platform.machine(), "cores": os.cpu_count(), "epoch_s": args.epoch_s}
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "runs": rows}, indent=2) + "\n")
    print("trials  limit    proposed before any result  most running  wall s")
    for row in rows:
        print(
            f"{row['trials']:>6}  {row['limit']!s:<7}  {row['proposed_before_any_result']:>26}"
            f"  {row['most_running']:>12}  {row['wall_s']:>6}"
        )


if __name__ == "__main__":
    main()
