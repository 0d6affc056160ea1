"""The command line's shared pieces: exit codes, a parser whose usage errors are one line with
exit status 2, argument types, and the flag groups tune_main and analysis.reproduce both take.

Nothing here imports torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfkd.core import protocol
from tfkd.core.errors import UserError
from tfkd.sweep.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    from tfkd.core import data

# 0: done; 1: the sweep ran but is incomplete (every trial failed, or a trial could not be
# completed for reasons other than its hyper-parameters); 2: bad input, nothing started;
# 130: interrupted (Ctrl-C), resumable with --resume.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MLFLOW_URI_HELP = (
    "MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
    "directory)"
)


class LazyModule:
    """A module imported when one of its names is first used.

    tfkd.core's registries (modes, models, datasets) live in modules that import torch; the
    command line parses before touching them, so a mistyped flag is answered at once.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) with exit status 2, a flag is
    never abbreviated (`--epoch 3` is refused, not taken for --epochs), and an unknown flag is
    named, with the flag it may be a typo of, before any other error (`--datset digits` is
    not answered with "--dataset is required")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> None:  # type: ignore[override]
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
        required = [
            item for item in [*self._actions, *self._mutually_exclusive_groups] if item.required
        ]
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


def add_resource_args(
    parser: argparse.ArgumentParser,
    experiment_help: str = "MLflow experiment name (default: mode-dataset-model; the sweeps of "
    "one mode, dataset and model share it as separate sweep runs)",
    experiment_required: bool = False,
) -> None:
    """Cluster, resources, storage and tracking flags (tune_main and analysis.reproduce)."""
    group = parser.add_argument_group("cluster and resources")
    group.add_argument(
        "--gpus-per-trial",
        type=non_negative_float,
        default=None,
        help="GPUs per trial, fractions allowed (default 0.25 when the cluster has GPUs, else 0)",
    )
    group.add_argument(
        "--cpus-per-trial", type=non_negative_float, default=1.0, help="CPUs per trial (default 1)"
    )
    group.add_argument(
        "--workers-per-trial",
        type=positive_int,
        default=1,
        metavar="N",
        help="train each trial data-parallel on N Ray Train workers (DDP), each with "
        "--cpus-per-trial CPUs and --gpus-per-trial GPUs (default 1 GPU with GPUs), the batch "
        "split between them (default 1: the trial's own process, fractional GPUs allowed)",
    )
    group.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=None,
        help="at most this many trials at once (default: as resources allow; for optuna and "
        "gp at most a third of --num-samples, at least 2)",
    )
    group.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster HOST:PORT (default: RAY_ADDRESS, else a "
        "local Ray); token authentication is handled (see README)",
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
        "leaving its writes for `python -m tfkd.tracking replay` (default 60; each trial's end "
        "and the sweep run's last writes wait half of it)",
    )
    group.add_argument(
        "--max-failures",
        type=retries,
        default=2,
        help="retries, from its last checkpoint, of a trial that failed for reasons other than "
        "its hyper-parameters (a lost node, a killed worker); -1: retry those forever "
        "(default 2). A non-finite or diverged loss fails its trial once, never retried",
    )


def check_system_metrics(enabled: bool) -> None:
    """--system-metrics needs psutil (MLflow's CPU and memory monitor) on every node."""
    import importlib.util

    if enabled and importlib.util.find_spec("psutil") is None:
        raise UserError(
            "--system-metrics needs psutil (and nvidia-ml-py for GPUs): "
            "pip install psutil nvidia-ml-py, or drop the flag"
        )


def resource_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SweepSpec fields that add_resource_args' flags set (tune_main and analysis.reproduce)."""
    return {
        "gpus_per_trial": args.gpus_per_trial,
        "cpus_per_trial": args.cpus_per_trial,
        "workers_per_trial": args.workers_per_trial,
        "max_concurrent": args.max_concurrent,
        "storage": args.storage,
        "resume": args.resume,
        "max_failures": args.max_failures,
    }


def load_dataset(config: Mapping[str, Any]) -> data.Dataset:
    """The dataset of a trial config; unreadable or missing data is a one-line UserError."""
    from tfkd.core import train
    from tfkd.core.config import TrialConfig

    try:
        return train.load_dataset(TrialConfig.from_dict(config))
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None


def add_protocol_arg(group: argparse._ArgumentGroup) -> None:
    """--protocol, shared by tune_main and analysis.reproduce."""
    lines = "; ".join(f"{n}: {protocol.get(n).description}" for n in protocol.names())
    group.add_argument(
        "--protocol",
        choices=protocol.names(),
        default="holdout",
        help=f"which epoch's model is reported and what chooses it ({lines}); default holdout",
    )
