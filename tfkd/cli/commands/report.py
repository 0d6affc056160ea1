"""`tfkd report`: one results table over all reproductions, plus plots (tfkd.analysis.report)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tfkd.analysis import report
from tfkd.cli.commands import describe
from tfkd.cli.flags import EXIT_OK, Parser, add_sweeps_store_args, run_command

NAME = "report"


def build_parser(prog: str = f"tfkd {NAME}") -> Parser:
    parser = Parser(prog=prog, description=describe(NAME))
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="NAME",
        help="an MLflow experiment to include (repeatable; default: all)",
    )
    parser.add_argument(
        "--out",
        default=report.DEFAULT_OUT,
        metavar="DIR",
        help="output folder (default %(default)s)",
    )
    add_sweeps_store_args(parser)
    return parser


def write(args: argparse.Namespace) -> int:
    report.report(args)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = f"tfkd {NAME}") -> int:
    return run_command(build_parser(prog), write, argv)
