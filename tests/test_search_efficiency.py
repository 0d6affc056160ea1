"""benchmarks/search_efficiency.py: the accounting of compute, and one tiny real run.

The accounting (best-so-far curve, trial-epochs until the grid's best is reached) is checked on
hand-made report sequences; the end-to-end run (fake data, 2 epochs, a 2-point grid, 2 trials per
search) checks that the trial-epochs it counts are the epochs Ray Tune recorded for its trials.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

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
    assert bench.compute_to_reach([], 0.0) is None


def test_best_trial_takes_the_first_of_ties_at_full_length():
    assert bench.best_trial(REPORTS, epochs=3) == R("b", 3, 85.0, 84.0)
    tie = [R("x", 2, 90.0, 1.0), R("y", 2, 90.0, 2.0)]
    assert bench.best_trial(tie, epochs=2).trial == "x"
    assert bench.best_trial(REPORTS[:3], epochs=3) is None


def test_summary_and_target():
    summary = bench.summarise("tfkd_reg", "tpe", 0, REPORTS, epochs=3, target=84.7)
    assert (summary.trials, summary.trial_epochs, summary.to_target) == (3, 7, 6)
    assert (summary.best_val, summary.best_test) == (85.0, 84.0)
    at = [bench.summarise("m", "tpe", s, REPORTS[:k], 3, 79.0) for s, k in ((0, 4), (1, 6))]
    reached = [s.to_target for s in at]
    assert reached == [4, 4]
    assert bench.target_met(reached, grid_compute=12)  # the median seed: 4 <= 12 / 3
    assert not bench.target_met(reached, grid_compute=11)
    never = bench.summarise("m", "tpe", 2, REPORTS[:3], 3, 79.0).to_target
    assert never is None
    # the median seed decides: one seed of three that never got there does not, two do
    assert bench.target_met([*reached, never], grid_compute=12)
    assert not bench.target_met([reached[0], never, never], grid_compute=100)
    assert bench.median_to_target([9, None, 3, 5]) == 9  # the upper median of an even count


def test_grid_space_file_is_a_valid_space_of_choices(tmp_path):
    from tfkd.sweep import search_space

    path = bench.grid_space_file("tfkd_reg", bench.GRIDS["tfkd_reg"], tmp_path)
    space = search_space.load(path, "tfkd_reg")
    assert space.params["multiplier"].grid() == [1, 50, 100]
    assert space.defaults == {"semantics": "reference", "correct_prob": 0.99}
    grid = bench.GRIDS["tfkd_self"]
    assert math.prod(len(v) for v in grid.values()) == 18


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("search_efficiency")
    argv = ["--smoke-test", "--modes", "tfkd_reg", "--methods", "random", "tpe", "gp"]
    argv += ["--out", str(tmp / "out")]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--workdir", str(tmp / "work")],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads((tmp / "out" / "search_efficiency.json").read_text())
    return {"tmp": tmp, "document": document, "stdout": done.stdout}


def ray_recorded_epochs(experiment: Path) -> int:
    """Epochs Tune itself wrote to the trials' result.json files."""
    return sum(
        len(path.read_text().splitlines()) for path in experiment.glob("trial_*/result.json")
    )


def test_smoke_run_counts_the_epochs_ray_recorded(smoke_run):
    (result,) = smoke_run["document"]["results"]
    runs = {(s["method"], s["seed"]): s for s in result["summaries"]}
    assert set(runs) == {("grid", None), ("random", 0), ("tpe", 0), ("gp", 0)}
    assert (runs["grid", None]["trials"], runs["grid", None]["trial_epochs"]) == (2, 4)
    assert result["grid_compute"] == 4
    for (method, seed), summary in runs.items():
        name = f"tfkd_reg-{method}-{seed or 0}"
        recorded = ray_recorded_epochs(smoke_run["tmp"] / "work" / "ray_results" / name)
        assert summary["trial_epochs"] == recorded, name
        curve = next(
            c["curve"] for c in result["curves"] if (c["method"], c["seed"]) == (method, seed)
        )
        assert len(curve) == recorded


def test_smoke_run_writes_table_json_and_plot(smoke_run):
    out = smoke_run["tmp"] / "out"
    table = (out / "search_efficiency.md").read_text()
    assert table.splitlines()[0].startswith("| mode | method |")
    assert "| tfkd_reg | grid | 1 | 2 | 4 |" in table
    assert (out / "search_efficiency.png").read_bytes().startswith(b"\x89PNG")
    assert smoke_run["document"]["wall_seconds"] > 0
    assert "wall time" in smoke_run["stdout"]


def test_render_merges_earlier_runs_into_one_table(smoke_run, tmp_path):
    """--render rewrites the outputs from runs' JSON (one per --modes run) without sweeping."""
    source = smoke_run["tmp"] / "out" / "search_efficiency.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--render", str(source), str(source), "--out", str(tmp_path)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = smoke_run["document"]["results"]
    rendered = json.loads((tmp_path / "search_efficiency.json").read_text())
    assert rendered["results"] == [result, result]
    assert rendered["wall_seconds"] == round(2 * smoke_run["document"]["wall_seconds"], 1)
    table = (tmp_path / "search_efficiency.md").read_text()
    assert table.count("| tfkd_reg | grid | 1 | 2 | 4 |") == 2
    assert table.count("by the median seed") == 2
    assert not list((tmp_path).glob("work*")), "it ran sweeps"
