"""`tfkd reproduce`: retrain a sweep's best configs with fresh seeds (tfkd.analysis.reproduce)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tfkd.analysis import reproduce
from tfkd.cli import flags
from tfkd.cli.commands import describe
from tfkd.cli.commands.best_configs import add_sweep_arg
from tfkd.cli.flags import EXIT_FAILED, EXIT_OK, Parser, positive_int, run_command

NAME = "reproduce"


def seed_value(text: str) -> int:
    """--first-seed: a seed is an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser(prog: str = f"tfkd {NAME}") -> Parser:
    parser = Parser(prog=prog, description=describe(NAME))
    what = parser.add_argument_group("what to reproduce")
    what.add_argument(
        "--seeds",
        type=positive_int,
        default=reproduce.DEFAULT_SEEDS,
        metavar="N",
        help="train every config with N seeds (default %(default)s)",
    )
    what.add_argument(
        "--first-seed",
        type=seed_value,
        default=reproduce.FIRST_SEED,
        metavar="S",
        help="the seeds are S..S+N-1 (default %(default)s: far from the seeds sweeps train; "
        "keep it the same for every mode of a report so that they pair by seed)",
    )
    what.add_argument(
        "--top",
        type=positive_int,
        default=1,
        metavar="K",
        help="the sweep's best K configs (default 1)",
    )
    what.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="schedule length (default: the sweep's full schedule)",
    )
    what.add_argument(
        "--data-dir", default=None, help="dataset root on this cluster (default: the sweep's)"
    )
    what.add_argument(
        "--resume", action="store_true", help="continue the interrupted reproduction of this sweep"
    )
    flags.add_protocol_arg(what)
    add_sweep_arg(what)
    flags.add_resource_args(  # --experiment, --storage, --mlflow-uri, ...
        parser, experiment_help="the sweep's MLflow experiment", experiment_required=True
    )
    return parser


def run(args: argparse.Namespace) -> int:
    return EXIT_FAILED if reproduce.reproduce(args) else EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = f"tfkd {NAME}") -> int:
    return run_command(build_parser(prog), run, argv)
