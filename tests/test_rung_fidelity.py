"""benchmarks/rung_fidelity.py: configurations drawn from the shipped spaces, rho against scipy,
and a tiny resumable run (lsr, 2 epochs, 2 draws of 4 configurations, no Ray)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from scipy import stats

from conftest import REPO, clean_env

SCRIPT = REPO / "benchmarks" / "rung_fidelity.py"


def _load():
    spec = importlib.util.spec_from_file_location("rung_fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rf = _load()


@pytest.mark.parametrize("mode", rf.MODES)
def test_configurations_are_points_of_the_shipped_space(mode):
    from tfkd.core.config import TrialConfig
    from tfkd.sweep import search_space

    space = search_space.load(search_space.default_path(mode), mode)
    first, second = rf.configurations(mode, 6, seed=0), rf.configurations(mode, 6, seed=1)
    assert {k: first[0][k] for k in space.params} == space.first_point("resnet8")
    for point in first + second:
        for name, param in space.params.items():
            assert param.contains(point[name]), (name, point[name])
        TrialConfig.from_dict({**rf.base_config(mode, 10, 64, "/tmp"), **point})
    if space.params:
        assert first[1:] != second[1:]  # draws differ by their seed
        assert first == rf.configurations(mode, 6, seed=0)


def test_fidelity_rho_is_scipys_spearman_with_an_interval_around_it():
    finals = [90.0, 80.0, 85.0, 70.0, 95.0, 60.0, 75.0]
    at_rung = [50.0, 52.0, 49.0, 30.0, 55.0, 31.0, 40.0]
    runs = [{"val": [r, f]} for r, f in zip(at_rung, finals, strict=True)]
    cell = rf.fidelity(runs, epoch=1)
    assert cell["rho"] == pytest.approx(stats.spearmanr(at_rung, finals).statistic, abs=1e-3)
    assert cell["low"] < cell["rho"] < cell["high"]
    assert cell["survives"]  # the final best (95) is the best at the rung too
    assert cell["regret"] == 0.0


@pytest.mark.slow
def test_a_tiny_run_stores_each_configuration_and_resumes(tmp_path):
    argv = [*"--modes lsr --epochs 2 --configs 4 --draws 2 --concurrency 2".split()]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]

    def run():
        return subprocess.run(
            [sys.executable, str(SCRIPT), *argv],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = run()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "rung_fidelity.json").read_text())
    stored = list((tmp_path / "work" / "units" / "lsr").glob("*.json"))
    assert len(stored) == 7  # the first point is shared by both draws: trained once
    for cell in result["fidelity"]["lsr"].values():
        assert len(cell["draws"]) == 2 and "rho" in cell["pooled"]
    second = run()
    assert second.returncode == 0, second.stderr[-2000:]
    assert "training 0 configurations (8 stored)" in second.stdout
