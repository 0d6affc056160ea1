"""The fast tier (`pytest -m "not slow"`) starts no Ray cluster and no MLflow server: the guard
of tests/fast_tier refuses them in a test not marked slow and in the commands it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FAST_TIER_GUARD, clean_env

REFUSED = "mark it @pytest.mark.slow"
MLFLOW_SERVER_HELP = [sys.executable, "-m", "mlflow", "server", "--help"]


@pytest.mark.parametrize(
    ("argv", "started"),
    [
        (["/x/site-packages/ray/core/src/ray/gcs/gcs_server", "--port=0"], "Ray cluster"),
        (["/x/ray/raylet", "--node-ip-address=1.2.3.4"], "Ray cluster"),
        (["ray", "start", "--head"], "Ray node"),
        ("/usr/bin/ray start --address=h:1", "Ray node"),
        (["/venv/bin/mlflow", "server", "--port", "5000"], "MLflow server"),
        ([sys.executable, "-m", "mlflow", "ui"], "MLflow server"),
    ],
)
def test_the_guard_knows_a_server_start(argv, started):
    assert started in FAST_TIER_GUARD.server_started(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "tune_main.py", "--mode", "baseline", "--dataset", "digits"],
        ["ray", "status"],
        ["mlflow", "runs", "list"],
        ["git", "log", "--format=%s server"],
    ],
)
def test_the_guard_lets_other_commands_run(argv):
    assert FAST_TIER_GUARD.server_started(argv) is None


def test_a_fast_test_cannot_start_an_mlflow_server():
    with pytest.raises(RuntimeError, match=REFUSED):
        subprocess.Popen(MLFLOW_SERVER_HELP)


def test_a_command_a_fast_test_runs_cannot_start_one_either(tmp_path):
    starts_a_server = f"import subprocess; subprocess.run({MLFLOW_SERVER_HELP!r})"
    done = subprocess.run(
        [sys.executable, "-c", starts_a_server],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert REFUSED in done.stderr


@pytest.mark.slow
def test_a_slow_test_may_start_servers(tmp_path):
    done = subprocess.run(
        MLFLOW_SERVER_HELP, cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "--backend-store-uri" in done.stdout
