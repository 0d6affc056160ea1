"""`python -m tfkd.tracking replay FOLDER...`: send the MLflow writes a sweep could not deliver.

A sweep whose tracking server was down when it ended leaves its unsent writes in outboxes under
its experiment folder; this sends them once the server answers again.
"""

from __future__ import annotations

import argparse

from tfkd.tracking.outbox import pending_outboxes, send_outbox

PROG = "python -m tfkd.tracking"
REPLAY_COMMAND = f"{PROG} replay"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send MLflow writes that a sweep could not deliver (tracking server down).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    replay_parser = commands.add_parser(
        "replay", help="send the unsent writes of every outbox under the given folders"
    )
    replay_parser.add_argument("folders", nargs="+", help="experiment (or results) folders")
    replay_parser.add_argument("--mlflow-uri", default=None, help="default: where each was bound")
    replay_parser.add_argument("--timeout", type=float, default=300.0, help="seconds per outbox")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Send what outboxes under the given folders still hold; 1 when some are still unsent."""
    args = build_parser().parse_args(argv)
    found = [box for folder in args.folders for box in pending_outboxes(folder)]
    left = sum(not send_outbox(box, args.mlflow_uri, args.timeout) for box in found)
    print(f"[tfkd] replayed {len(found) - left} of {len(found)} outbox(es)")
    if left:
        print(f"{REPLAY_COMMAND}: {left} outbox(es) still unsent (server unreachable?)")
        return 1
    return 0
