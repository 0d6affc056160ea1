"""`tfkd best-configs`: the best K configs of a sweep as YAML (tfkd.analysis.best_configs)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from tfkd.analysis import best_configs
from tfkd.cli.commands import describe
from tfkd.cli.flags import EXIT_OK, Parser, add_sweeps_store_args, positive_int, run_command

NAME = "best-configs"


def add_sweep_arg(parser: Any) -> None:
    """--sweep: which of the experiment's sweeps (best-configs and reproduce)."""
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="NAME",
        help="the sweep's name, as tfkd tune printed it (default: the experiment's newest "
        "finished sweep)",
    )


def build_parser(prog: str = f"tfkd {NAME}") -> Parser:
    parser = Parser(prog=prog, description=describe(NAME))
    parser.add_argument(
        "--experiment",
        required=True,
        metavar="NAME",
        help="the sweep's MLflow experiment (tfkd tune's --experiment, else mode-dataset-model)",
    )
    add_sweep_arg(parser)
    parser.add_argument(
        "--top", type=positive_int, default=1, metavar="K", help="how many configs (default 1)"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help=f"output YAML (default <storage>/<SWEEP>/{best_configs.FILE_NAME})",
    )
    add_sweeps_store_args(parser)
    return parser


def write(args: argparse.Namespace) -> int:
    best_configs.write(args)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = f"tfkd {NAME}") -> int:
    return run_command(build_parser(prog), write, argv)
