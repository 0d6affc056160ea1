"""Where a sweep's results live: the results folder (local or a pyarrow URI), its checks, the
lock that keeps two sweeps of one name apart, and the names of what it holds.

Nothing here imports Ray, so the command line checks storage before a cluster starts.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tfkd.core.errors import UserError

DEFAULT_STORAGE = "./ray_results"
# tfkd.sweep.tuner.run_configs nests each config it is given (reproductions, --fixed) under this
# key of a Ray trial's config, and so of its params.json; analysis reads it back from there.
GIVEN_CONFIG_KEY = "grid_config"
# what tfkd writes in a sweep's folder before its first trial: the lock, the saved flags
# (tfkd.cli.saved_flags) and the sweep run's outbox (tfkd.tracking's OUTBOX_DIR: not imported,
# it would import torch before the command line's checks). A folder holding nothing
# else never started: a failure before the first trial leaves it, and it blocks no retry.
LOCK_FILE, FLAGS_FILE, SWEEP_OUTBOX_DIR = ".tfkd-sweep.lock", "tfkd_flags.json", "mlflow_outbox"
BEFORE_THE_FIRST_TRIAL = frozenset({LOCK_FILE, FLAGS_FILE, SWEEP_OUTBOX_DIR})


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


def sweep_started(storage: str, name: str) -> bool:
    """Whether `<storage>/<name>` holds more than tfkd writes before a sweep's first trial
    (BEFORE_THE_FIRST_TRIAL): Tune's state, trials' folders, results."""
    if "://" not in storage:
        folder = Path(storage).expanduser() / name
        return folder.is_dir() and any(
            entry.name not in BEFORE_THE_FIRST_TRIAL for entry in folder.iterdir()
        )
    if not sweep_folder_exists(storage, name):
        return False
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(join(storage, name))
    entries = fs.get_file_info(pyarrow.fs.FileSelector(path))
    return any(Path(entry.path).name not in BEFORE_THE_FIRST_TRIAL for entry in entries)


def check_storage(storage: str, name: str, resume: bool, *, reuse: bool = False) -> None:
    """A URI must name a filesystem pyarrow knows; --resume needs the experiment's folder, and
    a new sweep must not reuse the folder of another (unless `reuse`: reproduce's reruns); a
    folder left by a start that failed before its first trial is no other sweep's."""
    exists = sweep_folder_exists(storage, name)
    if resume and not exists:
        raise UserError(
            f"--resume: no experiment {name!r} under {storage}; run it without "
            "--resume first (or fix --name / --storage)"
        )
    if not resume and exists and not reuse and sweep_started(storage, name):
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

    FILE = LOCK_FILE

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


def join(storage: str, *parts: str) -> str:
    """A path under a local folder or a URI."""
    if "://" in storage:
        return "/".join([storage.rstrip("/"), *parts])
    return str(Path(storage).expanduser().joinpath(*parts))
