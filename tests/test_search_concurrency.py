"""A search that models when trials run side by side (issue "verdicts", item 4).

Ray proposes a trial before it starts, so trials running at once are proposed before any result:
a model-based sweep runs at most a third of its budget at once, its first wave is scrambled Sobol
points (not random draws), TPE's good set holds more than one trial at small budgets, and the
sweep says how many trials it proposed before its first result.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import pytest

from tfkd.sweep import tuner
from tfkd.sweep.search_space import loads
from tfkd.sweep.spec import METRIC, MODE, SweepSpec, param_space

from conftest import assert_ok, ray_cluster, runs_of_kind, sqlite_uri, tune_main

SPACE = loads(
    """
mode: tfkd_reg
params:
  temperature: {distribution: loguniform, low: 1, high: 40}
  ce_weight: {distribution: uniform, low: 0.05, high: 0.95}
  kl_weight: {distribution: loguniform, low: 0.1, high: 100}
""",
    mode="tfkd_reg",
)
PRESET = {"temperature": 20.0, "ce_weight": 0.5, "kl_weight": 1.0}


def sweep_spec(**fields) -> SweepSpec:
    base = {"mode": "tfkd_reg", "dataset": "fake", "model": "resnet8", "epochs": 4, "seed": 0}
    return SweepSpec(
        name="concurrency", base_config=base, space=SPACE, first_point=PRESET, **fields
    )


def proposals(spec: SweepSpec, count: int, results_after: int | None = None) -> list[dict]:
    """`count` configs from the sweep's searcher, proposed as Tune proposes trials running at
    once: none ends, except the first, which ends after the `results_after`-th proposal."""
    searcher = tuner.searcher(spec)
    searcher.set_search_properties(METRIC, MODE, param_space(spec))
    configs = []
    for number in range(count):
        config = searcher.suggest(f"t{number}")
        configs.append({k: config[k] for k in SPACE.params})
        if number + 1 == results_after:
            searcher.on_trial_complete("t0", {METRIC: 50.0, "epoch": spec.epochs})
    return configs


def sobol_points(count: int, seed: int) -> list[dict[str, float]]:
    """scipy's scrambled Sobol points mapped through SPACE's distributions (log-uniform keys on
    the log scale), in the order the space declares its keys."""
    from scipy.stats import qmc

    points = qmc.Sobol(len(SPACE.params), scramble=True, seed=seed).random(count)
    mapped = []
    for point in points:
        config = {}
        for u, (name, param) in zip(point, SPACE.params.items(), strict=True):
            if param.distribution == "loguniform":
                low, high = math.log(param.low), math.log(param.high)
                config[name] = math.exp(low + u * (high - low))
            else:
                config[name] = param.low + u * (param.high - param.low)
        mapped.append(config)
    return mapped


# ---------------------------------------------------------------- the first wave


@pytest.mark.parametrize("search_alg", ["optuna", "gp"])
def test_the_first_wave_is_the_preset_then_scrambled_sobol_points_seeded(search_alg):
    spec = sweep_spec(search_alg=search_alg, num_samples=16, search_seed=7)
    configs = proposals(spec, 5)
    assert configs[0] == PRESET
    for got, want in zip(configs[1:], sobol_points(4, seed=7), strict=True):
        assert got == pytest.approx(want, rel=1e-9)


def test_after_the_first_result_the_model_proposes():
    spec = sweep_spec(num_samples=8, search_seed=7)
    configs = proposals(spec, 5, results_after=3)
    sobol = sobol_points(4, seed=7)
    assert configs[1:3] == pytest.approx(sobol[:2], rel=1e-9)  # proposed before the result
    for got, point in zip(configs[3:], sobol[2:], strict=True):  # TPE's, not the sequence's
        assert got != pytest.approx(point, rel=1e-6)
    assert all(
        SPACE.params[k].low <= v <= SPACE.params[k].high for c in configs for k, v in c.items()
    )


# ---------------------------------------------------------------- TPE's good set


# Optuna's default good set is ceil(10%) of the finished trials (capped at 25): one trial up to 10
# finished. tfkd keeps at least 2 once 4 have finished, never more than half.
GOOD_SET = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 8: 2, 10: 2, 15: 2, 20: 2, 21: 3, 40: 4, 41: 5, 250: 25}


def test_tpe_good_set_holds_two_trials_from_four_results_and_optunas_share_later():
    sampler = tuner.searcher(sweep_spec(num_samples=8))._sampler.model
    assert {n: sampler._gamma(n) for n in GOOD_SET} == GOOD_SET


# ---------------------------------------------------------------- how many run at once


@pytest.mark.parametrize(
    ("num_samples", "max_concurrent", "expected"),
    [(8, None, 2), (12, None, 4), (4, None, 2), (30, None, 10), (8, 4, 4)],
)
def test_a_model_based_sweep_runs_a_third_of_its_budget_at_once(
    num_samples, max_concurrent, expected
):
    spec = sweep_spec(num_samples=num_samples, max_concurrent=max_concurrent)
    assert tuner.concurrency(spec) == expected  # no cluster connected: no slot count
    assert tuner.concurrency(sweep_spec(num_samples=num_samples, search_alg="random")) is None


# ---------------------------------------------------------------- a real sweep on one GPU


def searcher_study(experiment: Path):
    """The Optuna study in the searcher state Tune saved for the experiment."""
    (state_file,) = experiment.glob("searcher-state-*.pkl")
    state = pickle.loads(state_file.read_bytes())
    while "_ot_study" not in state:  # a wrapping searcher saves the inner one's state
        state = state.get("searcher", state).__dict__
    return state["_ot_study"]


def proposed_before_any_result(study) -> int:
    """Trials the study created before it was told any trial's end (Optuna's own timestamps)."""
    from optuna.trial import TrialState

    ended = [t.datetime_complete for t in study.trials if t.state != TrialState.RUNNING]
    first_result = min(ended)
    return sum(1 for t in study.trials if t.datetime_start < first_result)


def one_gpu_sweep(workdir: Path, name: str, *words: str):
    """A one-epoch tfkd_reg sweep on digits on a Ray head declaring one GPU (4 CPUs), tracked in
    the folder's SQLite store; it must succeed."""
    with ray_cluster(num_cpus=4, num_gpus=1) as address:
        done = tune_main(
            f"--mode tfkd_reg --dataset digits --model resnet8 --epochs 1 --name {name}",
            *words,
            set="warmup_epochs=0",
            address=address,
            storage=workdir / "ray_results",
            mlflow_uri=sqlite_uri(workdir),
            cwd=workdir,
        )
    assert_ok(done)
    return done


@pytest.mark.slow
def test_a_default_sweep_on_one_gpu_proposes_at_most_a_third_before_any_result(workdir):
    """A head declaring one GPU fits 4 trials of 0.25 GPU (they train on the CPU without CUDA);
    the default sweep (8 trials) runs 2 at once and says how many came before its first result."""
    done = one_gpu_sweep(workdir, "one-gpu")
    study = searcher_study(workdir / "ray_results" / "one-gpu")
    assert len(study.trials) == 8
    blind = proposed_before_any_result(study)
    assert blind <= len(study.trials) / 3
    assert "2 trials at once (the cluster fits 4)" in done.stdout
    said = re.findall(r"first result: (\d+) of 8 trials were proposed before it", done.stdout)
    assert said == [str(blind)]
    (sweep,) = runs_of_kind(sqlite_uri(workdir), "tfkd_reg-digits-resnet8", "sweep")
    assert sweep.data.tags["trials_proposed_before_results"] == str(blind)


def most_at_once(runs) -> int:
    """The most MLflow runs open at one time (from their start and end times)."""
    events = sorted(
        [(run.info.start_time, 1) for run in runs] + [(run.info.end_time, -1) for run in runs]
    )
    open_now = most = 0
    for _, change in events:  # an end sorts before a start at the same millisecond
        open_now += change
        most = max(most, open_now)
    return most


@pytest.mark.slow
def test_a_sweep_that_fits_four_trials_runs_four_at_once(workdir):
    """Slots fill: 12 trials of 0.25 GPU on a head declaring one GPU run 4 at once (a third of
    the budget), counted from their MLflow runs' start and end times."""
    one_gpu_sweep(workdir, "fill", "--num-samples 12")
    trials = runs_of_kind(sqlite_uri(workdir), "tfkd_reg-digits-resnet8")
    assert len(trials) == 12 and all(run.info.end_time for run in trials)
    assert most_at_once(trials) == 4
