"""What a GP proposal costs as a sweep grows: tfkd's GP searcher beside Optuna's GP sampler at its
defaults (through Ray's OptunaSearch), outside Ray, on the same machine in one run.

    python benchmarks/gp_proposals.py [--trials 256] [--running 8] [--out benchmarks/results]

Both searchers propose `--trials` trials of tfkd_reg's three-axis space (the shapes of the shipped
space) while `--running` trials are running: each proposal is timed, then the oldest running trial
ends with a noisy score of a smooth function, as trials running side by side do. Printed as a table
and JSON (benchmarks/results/gp_proposals.json) with the machine: seconds per proposal, median and
longest, over all proposals and over the last half, and the CPU seconds of all proposals (every
thread of the process: torch's intra-op threads count). tfkd's searcher is the one `tfkd tune
--search-alg gp` runs (a scrambled Sobol first wave, the GP from num_samples/8 results on,
modelling at most spec.GP_HISTORY of them, on one torch thread); Optuna's GP at its defaults models
every result from its tenth on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from tfkd.sweep import tuner  # noqa: E402
from tfkd.sweep.search_space import loads  # noqa: E402
from tfkd.sweep.spec import METRIC, MODE, SweepSpec, param_space  # noqa: E402

SPACE = """
mode: tfkd_reg
params:
  temperature: {distribution: loguniform, low: 1, high: 40}
  ce_weight: {distribution: uniform, low: 0.05, high: 0.95}
  kl_weight: {distribution: loguniform, low: 0.1, high: 100}
"""
PRESET = {"temperature": 20.0, "ce_weight": 0.5, "kl_weight": 1.0}


def sweep_spec(trials: int) -> SweepSpec:
    base = {"mode": "tfkd_reg", "dataset": "fake", "model": "resnet8", "epochs": 1, "seed": 0}
    space = loads(SPACE, mode="tfkd_reg")
    return SweepSpec(
        name="gp",
        base_config=base,
        space=space,
        search_alg="gp",
        num_samples=trials,
        first_point=PRESET,
    )


def score(config: dict[str, Any], rng: random.Random) -> float:
    """A smooth optimum inside the space, with noise like a small validation split's."""
    return (
        50
        - 100 * (config["ce_weight"] - 0.3) ** 2
        - (config["temperature"] - 8) ** 2 / 40
        + rng.random()
    )


def proposal_seconds(
    searcher: Any, spec: SweepSpec, running: int
) -> tuple[list[float], list[float]]:
    """Seconds and CPU seconds (the process' threads together) per suggest, `running` trials
    open at a time, the oldest ending after each."""
    searcher.set_search_properties(METRIC, MODE, param_space(spec))
    rng, seconds, cpu_seconds, open_trials = random.Random(0), [], [], []
    for number in range(spec.num_samples):
        started, cpu_started = time.perf_counter(), time.process_time()
        config = searcher.suggest(f"t{number}")
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        open_trials.append((f"t{number}", config))
        if len(open_trials) >= running:
            trial_id, ended = open_trials.pop(0)
            result = {METRIC: score(ended, rng), "epoch": spec.epochs, "training_iteration": 1}
            searcher.on_trial_result(trial_id, result)
            searcher.on_trial_complete(trial_id, result)
    return seconds, cpu_seconds


def summary(timed: tuple[list[float], list[float]]) -> dict[str, float]:
    seconds, cpu_seconds = timed
    late = seconds[len(seconds) // 2 :]
    return {
        "p50_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "total_s": round(sum(seconds), 1),
        "cpu_total_s": round(sum(cpu_seconds), 1),
        "last_half_p50_s": round(statistics.median(late), 3),
        "last_half_max_s": round(max(late), 3),
    }


SEARCHERS: dict[str, Callable[[SweepSpec], Any]] = {
    "tfkd --search-alg gp": tuner.searcher,
    "Optuna GPSampler() via OptunaSearch": lambda spec: OptunaSearch(
        sampler=optuna.samplers.GPSampler(seed=spec.search_seed)
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--running", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    opts = parser.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = sweep_spec(opts.trials)
    rows = []
    for name, make in SEARCHERS.items():
        rows.append({"searcher": name, **summary(proposal_seconds(make(spec), spec, opts.running))})
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "optuna": optuna.__version__,
        },
        "command": "python benchmarks/gp_proposals.py " + " ".join(sys.argv[1:]),
        "trials": opts.trials,
        "running": opts.running,
        "rows": rows,
    }
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gp_proposals.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
