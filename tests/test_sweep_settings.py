"""What a sweep does to its process and its trials' devices: no environment changes at import,
Tune's settings only while a sweep runs, CPU trials on a GPU node when asked for no GPU, and a
guard for the private Ray API the clean stop uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import ray
import torch
from packaging.requirements import Requirement

from tfkd.core.train import resolve_device
from tfkd.sweep import trainable, tuner
from tfkd.sweep.spec import SweepSpec

from conftest import clean_env

CHECKOUT = Path(__file__).resolve().parents[1]


def test_importing_tfkd_changes_no_environment_variable():
    script = """
import json, os
import mlflow, optuna, ray, torch
from ray import tune
before = dict(os.environ)
import tfkd.cli.tune, tfkd.sweep.tuner, tfkd.sweep.trainable, tfkd.tracking
import tfkd.analysis.reproduce, tfkd.cli.main
changed = {k: v for k, v in os.environ.items() if before.get(k) != v}
changed.update({k: None for k in before if k not in os.environ})
print(json.dumps(changed))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {}


@pytest.mark.parametrize(
    ("storage", "trials", "period"),
    [
        ("./ray_results", 8, "1"),
        ("s3://bucket/x", 8, "30"),
        ("./ray_results", 256, "8"),  # a save pickles every trial: 256 / 32 trials per second
        ("s3://bucket/x", 256, "30"),
    ],
)
def test_tunes_settings_hold_while_a_sweep_runs_and_are_put_back(
    monkeypatch, storage, trials, period
):
    for name in [*tuner.SWEEP_ENVIRONMENT, "TUNE_GLOBAL_CHECKPOINT_S"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's own choice
    before = dict(os.environ)
    spec = SweepSpec(name="s", base_config={}, space=None, storage=storage, num_samples=trials)
    with tuner.sweep_environment(spec):
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == period  # an upload per save on a URI
        assert os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert dict(os.environ) == before


def test_a_trial_given_no_gpu_trains_on_the_cpu_of_a_gpu_node(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a node with GPUs
    config = {"device": "auto"}
    assert resolve_device(trainable.device_for(config, 0.0)).type == "cpu"
    assert resolve_device(trainable.device_for(config, 0.25)).type == "cuda"
    assert trainable.device_for({"device": "cuda:1"}, 0.0) == "cuda:1"  # the user's word


def test_the_private_ray_api_is_guarded_and_bounded(monkeypatch):
    (wanted,) = [
        Requirement(r)
        for r in tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["dependencies"]
        if r.startswith("ray")
    ]
    assert any(s.operator == "<" for s in wanted.specifier), "ray has no upper bound"
    assert wanted.specifier.contains(ray.__version__), "the installed Ray is outside the bound"
    # a Ray without the private session API: the stop falls back to Ray's own, with a warning
    monkeypatch.setitem(sys.modules, "ray.train._internal.session", types.ModuleType("session"))
    with pytest.warns(RuntimeWarning, match="get_session"):
        assert trainable.training_thread() is None
