"""benchmarks/gpu_trials.py: its data writer, its arithmetic, and its CPU smoke mode end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tfkd.core import data

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_trials.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_trials"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_written_cifar100_files_load_as_cifar100(tmp_path):
    bench = load_script()
    root = bench.write_cifar100(tmp_path, train=300, test=100)
    ds = data.load("cifar100", root, val_fraction=0.1, seed=0)
    assert ds.num_classes == 100
    assert len(ds.train) + len(ds.val) == 300 and len(ds.test) == 100
    assert ds.train.images.shape[1:] == (3, 32, 32)


def fake_result(rates: list[float], spawned: float = 100.0) -> dict:
    epochs = [
        {"images_per_second": r, "epoch_seconds": 1.0, "reported_at": spawned + 5.0 * (i + 1)}
        for i, r in enumerate(rates)
    ]
    return {"epochs": epochs, "spawned_at": spawned, "step": "capture"}


def test_summary_uses_steady_epochs_and_adds_concurrent_trials():
    bench = load_script()
    run = bench.Run("resnet18-graphed-x2", "resnet18", "graphed", processes=2, mps=True)
    run.results = [fake_result([10.0, 40.0, 50.0]), fake_result([5.0, 30.0, 30.0], 101.0)]
    s = bench.summarise(run)
    assert s["img_per_s_per_trial"] == [45.0, 30.0] and s["img_per_s"] == 75.0
    assert s["startup_s"] == 5.0 and s["step"] == "capture"


def test_targets_are_judged_from_the_runs():
    bench = load_script()

    def run(name: str, rate: float, processes: int = 1, mps: bool = False):
        r = bench.Run(name, name.split("-")[0], "graphed", processes, mps)
        r.results = [fake_result([1.0, rate / processes]) for _ in range(processes)]
        r.summary = bench.summarise(r)
        return r

    runs = [
        run("resnet18-original", 15_000),
        run("resnet18-graphed", 47_000),
        run("mobilenet_v2-eager", 7_600),
        run("mobilenet_v2-graphed", 20_000),
        run("resnet18-graphed-x4", 78_000, 4, mps=True),
    ]
    verdict = bench.verdicts(runs)
    assert verdict["resnet18 graphed img/s"]["met"]
    assert verdict["resnet18 graphed / original"]["met"]
    assert not verdict["mobilenet_v2 graphed / eager"]["met"]  # 2.6x < 3x
    assert verdict["4 x resnet18 graphed under MPS, aggregate img/s"]["met"]


def test_smoke_run_on_cpu_end_to_end(tmp_path):
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--concurrency", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == ["resnet8-original", "resnet8-eager", "resnet8-graphed", "resnet8-graphed-x2"]
    for r in report["runs"]:
        assert len(r["results"]) == r["processes"], r["error"]
        assert r["summary"]["img_per_s"] > 0 and r["summary"]["startup_s"] > 0
        assert r["summary"]["step"] == "eager"  # a CPU never captures
    assert report["forbidden_imported"] == []  # no Ray, MLflow or Optuna in a trial process
    assert report["machine"]["device"]
    assert "img/s total" in done.stdout
