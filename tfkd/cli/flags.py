"""The command line's shared pieces: exit codes, a parser whose usage errors are one line with
exit status 2, running a command with one-line errors, argument types, and the flag groups that
`tfkd tune`, `tfkd reproduce` and `tfkd paper-suite` share (their defaults: SweepRequest's).

Nothing here imports torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tfkd.core import protocol
from tfkd.core.errors import UserError
from tfkd.sweep.request import SweepRequest
from tfkd.sweep.storage import DEFAULT_STORAGE

# 0: done; 1: the sweep ran but is incomplete (every trial failed, or a trial could not be
# completed for reasons other than its hyper-parameters); 2: bad input, nothing started;
# 130: interrupted (Ctrl-C), resumable with --resume.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MLFLOW_URI_HELP = (
    "MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
    "directory)"
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) with exit status 2, a flag is
    never abbreviated (`--epoch 3` is refused, not taken for --epochs), and an unknown flag is
    named, with the flag it may be a typo of, before any other error (`--datset digits` is
    not answered with "--dataset is required")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = sys.argv[1:] if args is None else list(args)
        unknown = self._unknown_flag(args)
        if unknown:
            self.error(unknown)
        return super().parse_known_args(args, namespace)

    def _unknown_flag(self, args: list[str]) -> str | None:
        """'unknown flag --x; did you mean --y?' for the first word of `args` that looks like a
        flag and is none of this parser's, else None. Parses with every argument optional, so
        that a missing required one cannot be reported first."""
        items: list[Any] = [*self._actions, *self._mutually_exclusive_groups]
        required = [item for item in items if item.required]
        for item in required:
            item.required = False
        try:
            _, extras = super().parse_known_args(list(args), argparse.Namespace())
        finally:
            for item in required:
                item.required = True
        flags = [word.split("=", 1)[0] for word in extras if word[:1] in self.prefix_chars]
        unknown = [flag for flag in flags if not self._negative_number_matcher.match(flag)]
        if not unknown:
            return None
        known = [option for action in self._actions for option in action.option_strings]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        return f"unknown flag {unknown[0]}" + (f"; did you mean {close[0]}?" if close else "")

    def given(self, args: Sequence[str]) -> set[str]:
        """The destinations of the flags that `args` gives (flags are never abbreviated)."""
        words = {word.split("=", 1)[0] for word in args}
        return {action.dest for action in self._actions if words & set(action.option_strings)}


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse `argv` and run a command on it; bad input (a UserError) becomes one line on stderr
    naming the command, with exit status 2."""
    args = parser.parse_args(argv)
    try:
        return body(args)
    except UserError as exc:
        said = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        print(f"{parser.prog}: error: {said}", file=sys.stderr)
        return EXIT_USAGE


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def retries(text: str) -> int:
    """--max-failures: a count, or Ray's -1 for 'forever'."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(
            f"must be >= 0, or -1 to retry infrastructure failures forever; got {text}"
        )
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_store_args(group: argparse._ArgumentGroup, storage_help: str) -> None:
    """--mlflow-uri and --storage: where runs and results go (or are read from)."""
    group.add_argument("--mlflow-uri", default=None, help=MLFLOW_URI_HELP)
    group.add_argument("--storage", default=DEFAULT_STORAGE, help=storage_help)


def add_sweeps_store_args(parser: argparse.ArgumentParser) -> None:
    """Where `tfkd tune` wrote: the MLflow tracking URI and the Ray results folder (the analysis
    commands read both)."""
    group = parser.add_argument_group("where the sweeps are")
    add_store_args(
        group,
        "Ray results folder or URI, read when MLflow has no such "
        f"experiment (default {DEFAULT_STORAGE})",
    )


def add_resource_args(
    parser: argparse.ArgumentParser,
    experiment_help: str = "MLflow experiment name (default: mode-dataset-model; the sweeps of "
    "one mode, dataset and model share it as separate sweep runs)",
    experiment_required: bool = False,
) -> None:
    """Cluster, resources, storage and tracking flags (tune, reproduce, paper-suite)."""
    group = parser.add_argument_group("cluster and resources")
    group.add_argument(
        "--gpus-per-trial",
        type=non_negative_float,
        default=SweepRequest.gpus_per_trial,
        help="GPUs per trial, fractions allowed (default 0.25 when the cluster has GPUs, else 0)",
    )
    group.add_argument(
        "--cpus-per-trial",
        type=non_negative_float,
        default=SweepRequest.cpus_per_trial,
        help="CPUs per trial (default 1)",
    )
    group.add_argument(
        "--workers-per-trial",
        type=positive_int,
        default=SweepRequest.workers_per_trial,
        metavar="N",
        help="train each trial data-parallel on N Ray Train workers (DDP), each with "
        "--cpus-per-trial CPUs and --gpus-per-trial GPUs (default 1 GPU with GPUs), the batch "
        "split between them (default 1: the trial's own process, fractional GPUs allowed)",
    )
    group.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=SweepRequest.max_concurrent,
        help="at most this many trials at once (default: as resources allow; for optuna and "
        "gp at most a third of --num-samples, at least 2)",
    )
    group.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster HOST:PORT (default: RAY_ADDRESS, else a "
        "local Ray); token authentication is handled (see docs/clusters.md)",
    )
    add_store_args(group, f"results folder or URI (s3://, gs://) (default {DEFAULT_STORAGE})")
    group.add_argument(
        "--experiment", required=experiment_required, metavar="NAME", help=experiment_help
    )
    group.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    group.add_argument(
        "--system-metrics",
        action="store_true",
        help="each trial's MLflow run also logs CPU, memory and, on GPUs, utilisation and "
        "memory (MLflow's system metrics; needs psutil, and nvidia-ml-py for GPUs)",
    )
    group.add_argument(
        "--tracking-grace",
        type=non_negative_float,
        default=None,
        metavar="SECONDS",
        help="how long the end of the sweep waits for an unreachable MLflow server before "
        "leaving its writes for `tfkd replay` (default 60; each trial's end "
        "and the sweep run's last writes wait half of it)",
    )
    group.add_argument(
        "--max-failures",
        type=retries,
        default=SweepRequest.max_failures,
        help="retries, from its last checkpoint, of a trial that failed for reasons other than "
        "its hyper-parameters (a lost node, a killed worker); -1: retry those forever "
        "(default 2). A non-finite or diverged loss fails its trial once, never retried",
    )


def add_protocol_arg(group: argparse._ArgumentGroup) -> None:
    """--protocol, shared by tune and reproduce."""
    lines = "; ".join(f"{n}: {protocol.get(n).description}" for n in protocol.names())
    group.add_argument(
        "--protocol",
        choices=protocol.names(),
        default=SweepRequest.protocol,
        help=f"which epoch's model is reported and what chooses it ({lines}); default %(default)s",
    )
