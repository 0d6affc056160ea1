"""The flags a sweep was started with, saved beside its results so that `--resume` can refuse
changed ones: the restored trials would otherwise train on a dataset built from the new flags,
and Tune silently ignores a changed number of trials, epochs or search space."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfkd.core import atomic
from tfkd.core.errors import UserError
from tfkd.sweep import storage
from tfkd.sweep.request import SweepRequest

FLAGS_FILE = storage.FLAGS_FILE
# what a resumed sweep must share with its start, as the user spells it
FLAG_NAMES = {
    "mode": "--mode",
    "dataset": "--dataset",
    "model": "--model",
    "data_dir": "--data-dir",
    "fake_size": "--set fake_size",
    "val_fraction": "--set val_fraction",
    "split_seed": "--set split_seed",
    "epochs": "--epochs",
    "num_samples": "--num-samples",
    "search_alg": "--search-alg",
    "search_space": "--search-space",
    "protocol": "--protocol",
    "metric": "--metric",
}
CONFIG_FLAGS = (
    "mode",
    "dataset",
    "model",
    "data_dir",
    "fake_size",
    "val_fraction",
    "split_seed",
    "protocol",
)


def sweep_flags(args: SweepRequest, config: Mapping[str, Any], space_text: str) -> dict:
    """The values of FLAG_NAMES this invocation asks for (the effective ones: defaults filled)."""
    flags = {key: config.get(key) for key in CONFIG_FLAGS}
    flags["epochs"] = config.get("epochs", args.epochs)
    flags["num_samples"] = args.num_samples
    flags["search_alg"] = args.search_alg
    flags["metric"] = getattr(args, "metric", None)
    flags["search_space"] = hashlib.sha256(space_text.encode()).hexdigest()[:16]
    return flags


def check_or_save(experiment_dir: str, resume: bool, flags: Mapping[str, Any]) -> None:
    """A new sweep saves its flags; a resumed one must ask for the same (UserError naming the
    changed ones otherwise). Results on a URI storage ('' folder) are not checked."""
    if not experiment_dir:
        return
    path = Path(experiment_dir) / FLAGS_FILE
    if not resume:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(dict(flags), indent=1, sort_keys=True))
        return
    if not path.is_file():
        return  # started by a tfkd that did not save its flags
    saved = json.loads(path.read_text())
    changed = [key for key in FLAG_NAMES if key in saved and saved[key] != flags.get(key)]
    if changed:
        said = ", ".join(_difference(key, saved[key], flags.get(key)) for key in changed)
        raise UserError(
            f"--resume: the sweep was started with other flags ({said}); resume it with the "
            "flags it started with, or start a new sweep under another --name"
        )


def _difference(key: str, saved: Any, now: Any) -> str:
    if key == "search_space":
        return f"{FLAG_NAMES[key]} (another file content)"
    return f"{FLAG_NAMES[key]} was {saved}, now {now}"
