"""`tfkd paper-suite`: the sweeps and reproductions behind one of the paper's tables, in order,
skipping what is done (tfkd.analysis.paper_suite)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfkd.analysis import paper_suite
from tfkd.analysis.reproduce import DEFAULT_SEEDS
from tfkd.cli.commands import describe
from tfkd.cli.flags import EXIT_OK, Parser, add_resource_args, positive_int, run_command

NAME = "paper-suite"


def build_parser(prog: str = f"tfkd {NAME}") -> Parser:
    parser = Parser(prog=prog, description=describe(NAME))
    what = parser.add_argument_group("which comparison")
    what.add_argument(
        "--dataset", required=True, choices=paper_suite.datasets(), help="the paper's dataset"
    )
    what.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="students to include (default: every model of the paper's rows)",
    )
    what.add_argument(
        "--modes",
        nargs="+",
        default=None,
        metavar="MODE",
        help="modes to include (default: every mode of the paper's rows)",
    )
    what.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="schedule length of every sweep (default: tfkd tune's, 200)",
    )
    what.add_argument(
        "--num-samples",
        type=positive_int,
        default=None,
        help="trials per sweep (default: tfkd tune's)",
    )
    what.add_argument(
        "--seeds",
        type=positive_int,
        default=DEFAULT_SEEDS,
        help="fresh reproduction seeds per config (default %(default)s)",
    )
    what.add_argument("--top", type=positive_int, default=1, help="configs reproduced per sweep")
    what.add_argument("--data-dir", default=None, help="dataset root (default: tfkd tune's)")
    what.add_argument("--download", action="store_true", help="download the dataset if missing")
    what.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (the exact commands, in order) and run nothing",
    )
    add_resource_args(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = f"tfkd {NAME}") -> int:
    parser = build_parser(prog)

    def run(args: argparse.Namespace) -> int:
        failed = paper_suite.suite(args, parser)
        if failed is None:
            return EXIT_OK
        step, code = failed
        print(
            f"{prog}: error: step {step.experiment} ({step.stage}) failed with exit status "
            f"{code}; fix it and rerun: finished steps are skipped",
            file=sys.stderr,
        )
        return code

    return run_command(parser, run, argv)
