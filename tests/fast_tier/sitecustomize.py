"""The fast tier's guard: a test not marked slow starts no Ray cluster and no MLflow server,
neither in its own process nor in a command it runs (`pytest -m "not slow"` needs neither).

tests/conftest.py installs `refuse_servers` as an audit hook in the test process and turns it on
for each test not marked slow. For the commands such a test runs, it puts this folder first on
PYTHONPATH with TFKD_FAST_TIER=1: Python imports this file at start-up as `sitecustomize`, and
the hook is on there too. A refused start raises RuntimeError naming the fix (mark the test slow).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

ENV = "TFKD_FAST_TIER"
on = os.environ.get(ENV) == "1"


def server_started(argv: str | bytes | Sequence[object]) -> str | None:
    """What the command line `argv` starts, when it is a Ray cluster or an MLflow server."""
    if isinstance(argv, (str, bytes)):
        argv = shlex.split(os.fsdecode(argv))
    words = [os.path.basename(os.fsdecode(str(word))) for word in argv]
    if {"gcs_server", "raylet"} & set(words):
        return "a Ray cluster (ray.init)"
    if words[:2] == ["ray", "start"]:
        return "a Ray node (ray start)"
    if "mlflow" in words and {"server", "ui"} & set(words[words.index("mlflow") :]):
        return "an MLflow server"
    return None


def refuse_servers(event: str, args: tuple) -> None:
    """Audit hook: while the guard is on, starting a Ray cluster or MLflow server raises."""
    if event != "subprocess.Popen" or not on:
        return
    started = server_started(args[1])
    if started:
        raise RuntimeError(
            f"a test not marked slow started {started}: mark it @pytest.mark.slow "
            '(the fast tier, pytest -m "not slow", starts no cluster and no server)'
        )


if on:
    sys.addaudithook(refuse_servers)
