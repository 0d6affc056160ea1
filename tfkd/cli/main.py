"""`tfkd`: one command whose subcommands are tfkd.cli.commands.COMMANDS.

    tfkd tune --mode tfkd_reg --dataset cifar100
    tfkd best-configs --experiment tfkd_reg-cifar100-resnet18
    tfkd --help;  tfkd --version;  tfkd COMMAND --help

A command line that starts with a flag (other than --help and --version) is a `tfkd tune` command
line, as `python -m tfkd --mode ...` has always been. `python -m tfkd` is this command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfkd import __version__
from tfkd.cli.commands import COMMANDS, run
from tfkd.cli.flags import Parser

PROG = "tfkd"
DEFAULT_COMMAND = "tune"  # what a command line that starts with a flag runs
OWN_FLAGS = ("-h", "--help", "--version")


def _commands_epilog(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines) + f"\n\nsee `{prog} COMMAND --help` for its flags"


def build_parser(prog: str = PROG) -> Parser:
    parser = Parser(
        prog=prog,
        usage=f"{prog} [-h] [--version] COMMAND [FLAGS...]",
        description="Teacher-free Knowledge Distillation and its comparison modes as\n"
        "hyper-parameter searches (Ray Tune + Optuna), tracked in MLflow.",
        epilog=_commands_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tfkd {__version__}")
    parser.add_argument(
        "command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below"
    )
    parser.add_argument(
        "flags", nargs=argparse.REMAINDER, metavar="FLAGS", help="the command's flags"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run `tfkd` on `argv` (default: sys.argv[1:]); `prog` is how the user ran it ("tfkd",
    "python -m tfkd"): each command's messages and the commands it prints start with it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in OWN_FLAGS:
        return run(DEFAULT_COMMAND, argv, f"{prog} {DEFAULT_COMMAND}")
    parser = build_parser(prog)
    if not argv:
        parser.error(f"name a COMMAND: {', '.join(COMMANDS)}")
    args = parser.parse_args(argv)
    return run(args.command, args.flags, f"{prog} {args.command}")
