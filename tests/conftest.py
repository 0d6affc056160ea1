"""Shared fixtures: real Ray clusters and a real MLflow server, all on 127.0.0.1.

Every process a test starts is stopped by that test through its own handle (the process and its
descendants, found from /proc), never by name.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tfkd.sweep.processes import descendants

REPO = Path(__file__).resolve().parent.parent
TUNE_MAIN = REPO / "tune_main.py"
ARTIFACTS = REPO / "test-artifacts"
FAST_TIER = Path(__file__).resolve().parent / "fast_tier"


def _load_fast_tier_guard() -> Any:
    """tests/fast_tier/sitecustomize.py as a module, its audit hook installed here (off)."""
    spec = importlib.util.spec_from_file_location("fast_tier_guard", FAST_TIER / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    sys.addaudithook(guard.refuse_servers)
    return guard


FAST_TIER_GUARD = _load_fast_tier_guard()
_PYTHONPATH = os.environ.get("PYTHONPATH")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test not marked slow runs under the fast tier's guard (tests/fast_tier): it fails if
    it, its fixtures or a command it runs start a Ray cluster or an MLflow server."""
    fast = item.get_closest_marker("slow") is None
    FAST_TIER_GUARD.on = fast
    os.environ.pop(FAST_TIER_GUARD.ENV, None)
    os.environ.pop("PYTHONPATH", None)
    if _PYTHONPATH is not None:
        os.environ["PYTHONPATH"] = _PYTHONPATH
    if fast:
        os.environ[FAST_TIER_GUARD.ENV] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAST_TIER), _PYTHONPATH]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process_tree(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started and everything it started."""
    tree = descendants(proc.pid)
    for pid in [proc.pid, *tree]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *tree, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI"))
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "RAY_DEDUP_LOGS": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        }
    )
    env.update(extra)
    return env


def cli_args(*words: str, **options: Any) -> list[str]:
    """A command line from a scenario: words are split on spaces, then each keyword is a flag.

    cli_args("--mode lsr --fixed", num_samples=4, set=["a=1", "b=2"], resume=True) ->
    ["--mode", "lsr", "--fixed", "--num-samples", "4", "--set", "a=1", "--set", "b=2", "--resume"].
    True is a bare flag; False and None leave the flag out; a list or tuple repeats it.
    """
    args = [part for word in words for part in word.split()]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is True:
                args.append(flag)
            elif item is not None and item is not False:
                args += [flag, str(item)]
    return args


def tune_main(
    *words: str,
    cwd: Path,
    timeout: float = 600,
    env: dict | None = None,
    **options: Any,
) -> subprocess.CompletedProcess:
    """Run tune_main.py as a user would; arguments as `cli_args` takes them."""
    return subprocess.run(
        [sys.executable, str(TUNE_MAIN), *cli_args(*words, **options)],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RayNode:
    """`ray start --block` in its own process; stop() ends it and its descendants."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths
        self.log_path = Path(self.temp_dir) / "ray_start.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        command = [
            "ray",
            "start",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            start_new_session=True,
        )

    def wait_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log_path.read_text()[-2000:])
            time.sleep(0.3)

    def stop(self) -> None:
        stop_process_tree(self.proc)
        self.log.close()

    def kill(self) -> None:
        """The node dies at once: SIGKILL to `ray start` and every process below it."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


@contextmanager
def ray_cluster(
    num_cpus: int, num_gpus: int = 0, workers: tuple[int, ...] = (), keep_handles: bool = False
) -> Iterator[Any]:
    """A head node (and worker nodes with the given CPU counts) on 127.0.0.1; yields HOST:PORT.

    With keep_handles, yields (HOST:PORT, [head, *workers]) so a test can kill a node.
    """
    port = free_port()
    head = RayNode(
        "--head",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        "--include-dashboard=false",
    )
    nodes = [head]
    try:
        wait_for_port(port)
        address = f"127.0.0.1:{port}"
        for cpus in workers:
            # a node joining a token-authenticated cluster needs RAY_AUTH_MODE=token, like a driver
            nodes.append(
                RayNode(
                    f"--address={address}",
                    f"--num-cpus={cpus}",
                    env=clean_env(RAY_AUTH_MODE="token"),
                )
            )
        for node in nodes:
            node.wait_started()
        yield (address, nodes) if keep_handles else address
    finally:
        for node in reversed(nodes):
            node.stop()


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, local artifacts) on 127.0.0.1."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "mlflow_server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "mlflow_server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield uri
    finally:
        stop_process_tree(proc)
        log.close()


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def runs_of_kind(uri: str, experiment: str, kind: str = "trial") -> list:
    """The MLflow runs of one tfkd kind (trial, sweep, reproduction...) in an experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [r for r in runs if r.data.tags.get("tfkd.kind") == kind]


def assert_ok(done: subprocess.CompletedProcess) -> None:
    """The command exited 0; otherwise show the end of what it said."""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def assert_one_line(err: str, *needles: str) -> None:
    """A user error: exactly one line, no traceback, naming every needle."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_accuracy_of_weights(weights_file: str | Path, config: dict) -> float:
    """The test accuracy (%) of a checkpoint's weights on `config`'s test split, read back from
    the file: an independent reading of which model a run's number belongs to."""
    import torch

    from tfkd.core import checkpoint, data, models
    from tfkd.core.config import TrialConfig
    from tfkd.core.evaluate import eval_loader, predict

    cfg = TrialConfig.from_dict(config)
    test = data.load(cfg.dataset, cfg.data_dir, fake_size=cfg.fake_size).test
    model = models.build(cfg.model, int(test.labels.max()) + 1)
    model.load_state_dict(checkpoint.load(weights_file)["model"])
    cpu = torch.device("cpu")
    logits = predict(model, eval_loader(test, cfg.replace(device="cpu"), cpu), cfg, cpu)
    return 100.0 * (logits.argmax(1) == test.labels).double().mean().item()


test_accuracy_of_weights.__test__ = False  # a helper, not a test


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
