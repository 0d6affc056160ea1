"""What tfkd's commands share (tune_main.py and the analysis/ commands): the library under them.

Architecture: `tfkd/cli.py` (tune_main) and `analysis/*` only parse, prepare and report; the
pieces both need live here: exit codes, the parser whose usage errors are one line with exit
status 2, the store and resource flag groups, the results-folder defaults, the storage checks and
the dataset load that turns a bad dataset into a one-line `UserError`. Nothing here imports Ray
or MLflow.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfkd.errors import UserError

if TYPE_CHECKING:
    from tfkd import data

# 0: done; 1: the sweep ran but is incomplete (every trial failed, or a trial could not be
# completed for reasons other than its hyper-parameters); 2: bad input, nothing started;
# 130: interrupted (Ctrl-C), resumable with --resume.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_STORAGE = "./ray_results"
# tfkd.search.run_configs nests each given config under this key of a Ray trial's config (and so
# of its params.json); analysis reads it back from the results folder.
GRID_CONFIG_KEY = "grid_config"
MLFLOW_URI_HELP = (
    "MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
    "directory)"
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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
        "--max-concurrent",
        type=positive_int,
        default=None,
        help="at most this many trials at once (default: as resources allow)",
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
        "max_concurrent": args.max_concurrent,
        "storage": args.storage,
        "resume": args.resume,
        "max_failures": args.max_failures,
    }


def sweep_folder_exists(storage: str, name: str) -> bool:
    """Whether `<storage>/<name>` (a sweep's results folder) exists, locally or at a URI."""
    if "://" not in storage:
        return (Path(storage).expanduser() / name).is_dir()
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(join(storage, name))
        return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
    except Exception as exc:
        raise UserError(f"--storage {storage}: not usable ({exc})") from None


def check_storage(storage: str, name: str, resume: bool, *, reuse: bool = False) -> None:
    """A URI must name a filesystem pyarrow knows; --resume needs the experiment's folder, and
    a new sweep must not reuse the folder of another (unless `reuse`: reproduce's reruns)."""
    exists = sweep_folder_exists(storage, name)
    if resume and not exists:
        raise UserError(
            f"--resume: no experiment {name!r} under {storage}; run it without "
            "--resume first (or fix --name / --storage)"
        )
    if not resume and exists and not reuse:
        raise UserError(
            f"--name {name}: a sweep of that name exists under {storage}; continue it with "
            "--resume or choose another --name"
        )
    if "://" not in storage:
        _check_writable(Path(storage).expanduser().resolve(), storage)


def local_experiment_dir(storage: str, name: str) -> str:
    """The experiment's folder when results are stored locally ('' for URI storages)."""
    return "" if "://" in storage else str(Path(storage).expanduser().resolve() / name)


def _check_writable(folder: Path, flag_value: str) -> None:
    """The results folder (or the folder it would be created in) takes files."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"--storage {flag_value}: {existing} is a file, not a folder; choose another --storage"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(
            f"--storage {flag_value}: cannot write in {existing} ({exc.strerror or exc}); "
            "choose a writable --storage"
        ) from None


class SweepLock:
    """Held while a sweep runs: a second sweep under the same name is refused.

    An exclusive `flock` on `<storage>/<name>/.tfkd-sweep.lock`, which the kernel releases when
    the holder exits, however it ends: a crashed or killed driver never leaves it stuck. The
    file names the holder (pid, host) for the refusal message. URI storages are not locked.
    """

    FILE = ".tfkd-sweep.lock"

    def __init__(self, storage: str, name: str) -> None:
        self.handle = None
        if "://" in storage:
            return
        path = Path(storage).expanduser().resolve() / name / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"sweep {name!r} is already running ({holder}); wait for it to end, or choose "
                "another --name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock
            self.handle = None


def timestamped(base: str, taken: Callable[[str], bool]) -> str:
    """`base-YYYYMMDD-HHMMSS`, with a -2, -3... suffix while `taken` says the name is used."""
    name = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = name, 1
    while taken(candidate):
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def load_dataset(config: Mapping[str, Any]) -> data.Dataset:
    """The dataset of a trial config; unreadable or missing data is a one-line UserError."""
    from tfkd import train
    from tfkd.config import TrialConfig

    try:
        return train.load_dataset(TrialConfig.from_dict(config))
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None


def write_atomic(target: str | Path, content: bytes) -> str:
    """Write a whole file or nothing: a temp file beside the target, then os.replace.

    URIs (s3://, gs://) go through pyarrow's filesystems, whose objects appear whole on close.
    """
    if "://" in str(target):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(str(target))
        with fs.open_output_stream(path) as out:
            out.write(content)
        return str(target)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as out:  # permissions as the umask says (mkstemp's are 0600)
            out.write(content)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(target)


def join(storage: str, *parts: str) -> str:
    """A path under a local folder or a URI."""
    if "://" in storage:
        return "/".join([storage.rstrip("/"), *parts])
    return str(Path(storage).expanduser().joinpath(*parts))
