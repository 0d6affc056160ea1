"""The `tfkd` command's subcommands: name -> the module whose `main(argv, prog)` runs it, and the
line `tfkd --help` shows for it (also its --help's description).

A command's module is imported only when it runs: `tfkd --help` imports none of them, and each
one's imports (torch, for most) are paid by that command alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # defines main(argv, prog) -> exit status
    summary: str  # one line


COMMANDS = {
    "tune": Command(
        "tfkd.cli.tune",
        "Search a mode's hyper-parameters (Ray Tune + Optuna + ASHA, tracked in MLflow).",
    ),
    "best-configs": Command(
        "tfkd.cli.commands.best_configs",
        "Write a sweep's best K configs (full schedule, ranked on its metric) as YAML.",
    ),
    "reproduce": Command(
        "tfkd.cli.commands.reproduce",
        "Retrain a sweep's best configs from scratch with fresh seeds, tested once.",
    ),
    "report": Command(
        "tfkd.cli.commands.report",
        "One results table over all reproductions, beside the paper's, with plots.",
    ),
    "paper-suite": Command(
        "tfkd.cli.commands.paper_suite",
        "Run the sweeps and reproductions behind one of the paper's tables.",
    ),
    "replay": Command(
        "tfkd.cli.commands.replay",
        "Send the MLflow writes a sweep could not deliver (the server was down).",
    ),
}


def describe(name: str) -> str:
    """The command's one line (its --help's description)."""
    return COMMANDS[name].summary


def run(name: str, argv: Sequence[str], prog: str) -> int:
    """Run command `name` on `argv`; `prog` is how the user ran it ("tfkd tune")."""
    module = importlib.import_module(COMMANDS[name].module)
    return module.main(argv, prog)
