"""`tfkd replay FOLDER...`: send the MLflow writes a sweep could not deliver.

A sweep whose tracking server was down when it ended leaves its unsent writes in outboxes under
its experiment folder (tfkd.tracking.outbox); this sends them once the server answers again.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tfkd.cli.commands import describe
from tfkd.cli.flags import EXIT_FAILED, EXIT_OK, Parser, non_negative_float, run_command

NAME = "replay"
DEFAULT_TIMEOUT_S = 300.0


def build_parser(prog: str = f"tfkd {NAME}") -> Parser:
    parser = Parser(prog=prog, description=describe(NAME))
    parser.add_argument(
        "folders", nargs="+", metavar="FOLDER", help="experiment (or results) folders"
    )
    parser.add_argument(
        "--mlflow-uri", default=None, help="where to send (default: where each was bound)"
    )
    parser.add_argument(
        "--timeout",
        type=non_negative_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to try each outbox (default %(default)s)",
    )
    return parser


def replay(args: argparse.Namespace) -> int:
    """Send what the outboxes under the given folders still hold; 1 when some are still unsent."""
    from tfkd import tracking

    found = [box for folder in args.folders for box in tracking.pending_outboxes(folder)]
    left = sum(not tracking.send_outbox(box, args.mlflow_uri, args.timeout) for box in found)
    print(f"[tfkd] replayed {len(found) - left} of {len(found)} outbox(es)")
    if left:
        print(f"[tfkd] {left} outbox(es) still unsent (server unreachable?); run this again later")
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = f"tfkd {NAME}") -> int:
    return run_command(build_parser(prog), replay, argv)
