"""benchmarks/search_efficiency.py: the accounting, the resumable units, the control and the
choice of the default sampler on hand-made numbers; one tiny real run (fake data, 2 epochs, a
2-point grid, 2 trials, 2 search seeds, 2 fresh seeds) through every stage, then resumed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, clean_env

SCRIPT = REPO / "benchmarks" / "search_efficiency.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("search_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_benchmark()
R = bench.Report


# Trials a, b, c with a 3-epoch schedule; c is stopped after its first epoch. Reports arrive
# interleaved, as from two concurrent trials.
REPORTS = [
    R("a", 1, 50.0),
    R("b", 1, 60.0),
    R("a", 2, 70.0),
    R("a", 3, 80.0, 79.0),
    R("b", 2, 95.0),  # better than anything, but not at the end of the schedule
    R("b", 3, 85.0, 84.0),
    R("c", 1, 99.0),
]


def test_best_so_far_counts_every_report_and_only_full_schedule_accuracies():
    curve = bench.best_so_far(REPORTS, epochs=3)
    assert [spent for spent, _ in curve] == [1, 2, 3, 4, 5, 6, 7]
    assert all(math.isnan(best) for _, best in curve[:3])
    assert [best for _, best in curve[3:]] == [80.0, 80.0, 85.0, 85.0]


def test_compute_to_reach_is_the_first_crossing_or_none():
    curve = bench.best_so_far(REPORTS, epochs=3)
    assert bench.compute_to_reach(curve, 80.0) == 4
    assert bench.compute_to_reach(curve, 84.7) == 6
    assert bench.compute_to_reach(curve, 95.0) is None


def test_best_trial_takes_the_first_of_ties_at_full_length():
    assert bench.best_trial(REPORTS, epochs=3) == R("b", 3, 85.0, 84.0)
    tie = [R("x", 2, 90.0, 1.0), R("y", 2, 90.0, 2.0)]
    assert bench.best_trial(tie, epochs=2).trial == "x"
    assert bench.best_trial(REPORTS[:3], epochs=3) is None


def test_trial_scores_are_each_trials_last_validation():
    assert bench.trial_scores(REPORTS) == [80.0, 85.0, 99.0]


def test_sweep_summary_takes_the_best_full_trials_config():
    unit = {
        "seed": 3,
        "reports": [r.__dict__ for r in REPORTS],
        "configs": {"a": {"temperature": 1}, "b": {"temperature": 2}, "c": {"temperature": 3}},
        "wall_seconds": 1.0,
    }
    summary = bench.sweep_summary(unit, epochs=3, target=84.7)
    assert (summary["trials"], summary["trial_epochs"], summary["to_grid_best"]) == (3, 7, 6)
    assert (summary["best_val"], summary["best_test"]) == (85.0, 84.0)
    assert summary["best_config"] == {"temperature": 2}


def test_cached_computes_a_unit_once_and_stores_nothing_when_it_fails(tmp_path):
    units = bench.Units(tmp_path, "lsr")
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert bench.cached(units, "search", "random-000", compute) == {"value": 1}
    assert bench.cached(units, "search", "random-000", compute) == {"value": 1}
    assert len(calls) == 1
    fresh = bench.Units(tmp_path, "lsr")  # a later process reads what an earlier one stored
    assert fresh.get("search", "random-000") == {"value": 1}

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench.cached(units, "search", "random-001", interrupted)
    assert not units.path("search", "random-001").exists()
    assert [p.name for p in units.path("search", "x").parent.iterdir()] == ["random-000.json"]


def test_config_key_changes_with_the_configuration_only():
    a = {"temperature": 2.0, "alpha": 0.5}
    assert bench.config_key(a) == bench.config_key(dict(reversed(list(a.items()))))
    assert bench.config_key(a) != bench.config_key({**a, "alpha": 0.6})


def _point(val: float, i: int) -> dict:
    return {"val": val, "test": val - 1, "val_curve": [val] * 3, "config": {"i": i}}


def test_control_draws_grid_points_without_replacement_by_the_search_seed():
    points = [_point(70.0 + i, i) for i in range(27)]
    draws = bench.control_draws(points, 8, seeds=[0, 1])
    for draw in draws:
        picked = np.random.default_rng(draw["seed"]).choice(27, size=8, replace=False)
        assert draw["points"] == picked.tolist()
        assert len(set(draw["points"])) == 8
        assert draw["best_val"] == 70.0 + max(picked)
        assert draw["best_config"] == {"i": int(max(picked))}
        assert draw["trial_epochs"] == 8 * 3
    assert draws[0]["points"] != draws[1]["points"]
    (small,) = bench.control_draws(points[:1], 8, seeds=[4])
    assert small["points"] == [0]


def test_median_choice_is_the_lower_median_seed():
    runs = [{"seed": s, "best_val": v} for s, v in enumerate([80.0, None, 90.0, 85.0, 70.0])]
    assert bench.median_choice(runs)["seed"] == 0  # of 70, 80, 85, 90: the lower median 80


def test_methods_and_seed_counts_come_from_tune_mains_parser():
    algs = bench.search_algs()
    assert "random" in algs and "grid" not in algs
    assert bench.default_alg() in algs
    opts = bench.resolve(bench.build_parser().parse_args([]))
    assert set(opts.methods) == set(algs)
    assert opts.seeds_per_method[bench.default_alg()] >= 10
    assert opts.seeds_per_method["random"] >= 10
    assert all(n >= 5 for n in opts.seeds_per_method.values())
    opts = bench.resolve(bench.build_parser().parse_args(["--search-seeds", "random=3"]))
    assert opts.seeds_per_method["random"] == 3


def test_the_hand_grid_is_low_mid_high_of_every_axis_of_the_shipped_space():
    import yaml

    for mode in bench.MODES:
        grid = bench.hand_grid(mode)
        bench.check_grid(mode, grid)
        shipped = yaml.safe_load((REPO / "search_spaces" / f"{mode}.yaml").read_text())["params"]
        assert set(grid) == set(shipped)
        for name, spec in shipped.items():
            low, high = spec["low"], spec["high"]
            mid = (
                math.sqrt(low * high) if spec["distribution"] == "loguniform" else (low + high) / 2
            )
            assert grid[name] == pytest.approx([low, mid, high])
        assert len(bench.grid_points(grid)) == 3 ** len(shipped)


@pytest.mark.parametrize(
    "argv",
    [["--methods", "nonsense"], ["--search-seeds", "random=0"], ["--fresh-seeds", "1"]],
)
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main([*argv, "--workdir", str(tmp_path / "w")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("search_efficiency.py: error:")
    assert not (tmp_path / "w").exists()


def _diff(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "low": low, "high": high, "inconclusive": low <= 0 <= high}


def _result(mode: str, diffs: dict) -> dict:
    return {
        "mode": mode,
        "evidence": {
            "optuna": {},
            **{m: {"vs_default_test": d, "vs_default_best_val": d} for m, d in diffs.items()},
            "control": {},
            "grid": {},
        },
    }


def test_choose_default_keeps_it_unless_another_is_better_beyond_noise():
    spans = _diff(1.0, -0.5, 2.5)
    kept = bench.choose_default(
        [_result("lsr", {"gp": spans}), _result("tfkd_reg", {"gp": spans})], "optuna"
    )
    assert kept["choice"] == "optuna"
    better = _diff(1.0, 0.2, 1.8)
    chosen = bench.choose_default(
        [_result("lsr", {"gp": better}), _result("tfkd_reg", {"gp": spans})], "optuna"
    )
    assert chosen["choice"] == "gp"
    worse = _diff(-1.0, -1.8, -0.2)
    mixed = bench.choose_default(
        [_result("lsr", {"gp": better}), _result("tfkd_reg", {"gp": worse})], "optuna"
    )
    assert mixed["choice"] == "optuna"


# ---------------------------------------------------------------- one tiny real run


def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


DEFAULT = bench.default_alg()
SMOKE = ["--smoke-test", "--modes", "tfkd_reg", "--methods", DEFAULT]  # 2 sweeps: 2 seeds


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("search_efficiency") / "work"
    done = _run([*SMOKE, "--workdir", str(work)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads((work / "out" / "search_efficiency_tfkd_reg.json").read_text())
    return {"work": work, "document": document, "stdout": done.stdout}


def unit_files(work: Path) -> dict[str, float]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.glob("units/**/*.json")}


def ray_recorded_epochs(experiment: Path) -> int:
    """Epochs Tune itself wrote to the trials' result.json files."""
    return sum(
        len(path.read_text().splitlines()) for path in experiment.glob("trial_*/result.json")
    )


@pytest.mark.slow
def test_smoke_run_stores_one_unit_per_sweep_grid_point_and_retraining(smoke_run):
    units = smoke_run["work"] / "units" / "tfkd_reg"
    searches = sorted(p.stem for p in (units / "search").glob("*.json"))
    assert searches == [f"{DEFAULT}-000", f"{DEFAULT}-001"]
    assert len(list((units / "grid").glob("*.json"))) == 2
    (result,) = smoke_run["document"]["results"]
    assert set(result["evidence"]) == {DEFAULT, "control", "grid"}
    assert "vs_default_test" in result["evidence"]["control"]
    for method, evidence in result["evidence"].items():
        assert len(evidence["fresh_test"]) == 2, method
        assert len(evidence["expected_best"]["curve"]) == 2  # budgets 1..2 trials
    for name in searches:  # the compute counted is what Ray recorded
        unit = json.loads((units / "search" / f"{name}.json").read_text())
        method, seed = name.rsplit("-", 1)
        experiment = (
            smoke_run["work"] / "tfkd_reg" / "ray_results" / f"tfkd_reg-{method}-{int(seed)}"
        )
        assert len(unit["reports"]) == ray_recorded_epochs(experiment), name


@pytest.mark.slow
def test_smoke_run_retrains_on_seeds_no_trial_trained(smoke_run):
    units = smoke_run["work"] / "units" / "tfkd_reg"
    trained = {
        int(config.get("seed", 0))
        for path in (units / "search").glob("*.json")
        for config in json.loads(path.read_text())["configs"].values()
    } | {json.loads(p.read_text())["config"]["seed"] for p in (units / "grid").glob("*.json")}
    retrained = {
        json.loads(p.read_text())["config"]["seed"] for p in (units / "retrain").glob("*.json")
    }
    assert trained and retrained and not trained & retrained
    (result,) = smoke_run["document"]["results"]
    assert set(result["fresh_seeds"]) == retrained


@pytest.mark.slow
def test_smoke_run_writes_table_json_and_plot(smoke_run):
    out = smoke_run["work"] / "out"
    table = (out / "search_efficiency_tfkd_reg.md").read_text()
    assert table.splitlines()[0].startswith("| mode | method |")
    assert "| tfkd_reg | control |" in table and "Default sampler chosen" in table
    assert (out / "search_efficiency_tfkd_reg.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_rerun_continues_where_the_last_one_stopped(smoke_run):
    work = smoke_run["work"]
    before = unit_files(work)
    retrain = sorted(p for p in before if "/retrain/" in p)
    (work / retrain[0]).unlink()  # as if the run had been stopped before this unit ended
    done = _run([*SMOKE, "--workdir", str(work)])
    assert done.returncode == 0, done.stderr[-3000:]
    after = unit_files(work)
    assert set(after) == set(before)
    changed = [p for p in after if after[p] != before[p]]
    assert changed == [retrain[0]]  # nothing else was trained again
    assert "training 1 of" in done.stdout


@pytest.mark.slow
def test_render_merges_per_mode_files(smoke_run, tmp_path):
    source = smoke_run["work"] / "out" / "search_efficiency_tfkd_reg.json"
    done = _run(["--render", str(source), str(source), "--out", str(tmp_path)], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rendered = json.loads((tmp_path / "search_efficiency.json").read_text())
    assert [r["mode"] for r in rendered["results"]] == ["tfkd_reg", "tfkd_reg"]
    assert rendered["choice"]["choice"] in smoke_run["document"]["methods"]
    assert (tmp_path / "search_efficiency.png").read_bytes().startswith(b"\x89PNG")
