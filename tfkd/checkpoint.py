"""Checkpoints: written atomically, read with weights_only=True (never unpickling objects)."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.pt"


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a folder holding checkpoint.pt or model.pt."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (CHECKPOINT_FILE, WEIGHTS_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} or {WEIGHTS_FILE} in folder {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (file or folder) with weights_only=True."""
    file = resolve_file(path)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # it holds Python objects: never unpickled here
        raise ValueError(
            f"{file} is not a weights-only checkpoint: it stores Python objects, and tfkd only "
            "loads tensors (weights_only=True) so that no file can run code; save the weights "
            "alone, e.g. torch.save({'model': model.state_dict()}, PATH), or use a tfkd run's "
            f"{WEIGHTS_FILE}"
        ) from None
    except Exception as exc:  # corrupt or not a tfkd checkpoint
        raise ValueError(
            f"cannot read checkpoint {file}: {exc.__class__.__name__}: {exc}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{file} is not a tfkd checkpoint (no 'model' weights)")
    return state


def export_weights(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write only the model weights and metadata (what a teacher needs), atomically."""
    state = load(path)
    return save_atomic({"model": state["model"], "meta": state.get("meta", {})}, out)


RECORD_FILE = "trial_record.json"
BEST_FILE = "best_model.pt"


class TrialRecord:
    """What every checkpoint of a trial carries besides the training state.

    Every finished epoch's metrics (so a restored trial can complete its tracking history) and
    the best weights so far by validation accuracy (training accuracy when there is no
    validation split) with that accuracy and epoch, and the nodes that ran the trial. A trial
    restarted or resumed from any of its checkpoints therefore loses neither its history nor
    its best checkpoint; the checkpoints themselves may be pruned to the latest few.
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir)  # private, local: holds the current best weights
        self.history: list[dict[str, Any]] = []
        self.best_accuracy = float("-inf")
        self.best_epoch = 0
        self.nodes: list[str] = []

    @property
    def best_weights(self) -> Path:
        return self.workdir / BEST_FILE

    @classmethod
    def restore(cls, workdir: str | os.PathLike, folder: str | os.PathLike | None) -> TrialRecord:
        """The record a checkpoint folder carries (an empty one without a folder)."""
        record = cls(workdir)
        record.workdir.mkdir(parents=True, exist_ok=True)
        if folder is None or not (Path(folder) / RECORD_FILE).is_file():
            return record
        saved = json.loads((Path(folder) / RECORD_FILE).read_text())
        record.history = list(saved["history"])
        record.best_accuracy = float(saved["best_accuracy"])
        record.best_epoch = int(saved["best_epoch"])
        record.nodes = list(saved["nodes"])
        if (Path(folder) / BEST_FILE).is_file():
            shutil.copyfile(Path(folder) / BEST_FILE, record.best_weights)
        return record

    def ran_on(self, node: str) -> None:
        if node and (not self.nodes or self.nodes[-1] != node):
            self.nodes.append(node)

    def add_epoch(self, metrics: dict[str, Any], checkpoint_dir: str | os.PathLike) -> bool:
        """Record a finished epoch and write the record into its checkpoint folder.

        Returns True when the epoch is the best so far (its weights become the best weights).
        """
        self.history.append({k: v for k, v in metrics.items() if _is_number(v)})
        accuracy = metrics.get("val_accuracy", metrics.get("train_accuracy", float("-inf")))
        improved = accuracy > self.best_accuracy
        if improved:
            self.best_accuracy, self.best_epoch = float(accuracy), int(metrics["epoch"])
            export_weights(checkpoint_dir, self.best_weights)
        if self.best_weights.is_file():
            shutil.copyfile(self.best_weights, Path(checkpoint_dir) / BEST_FILE)
        document = {
            "history": self.history,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "nodes": self.nodes,
        }
        (Path(checkpoint_dir) / RECORD_FILE).write_text(json.dumps(document))
        return improved


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def newest_complete(folders: Iterable[str | os.PathLike]) -> Path | None:
    """The whole checkpoint folder with the latest epoch; folders cut short are passed over.

    A trial restored after its driver was killed gets the checkpoint its experiment state
    names, which can be older than the latest one the trial wrote; starting from the latest
    means only the epoch that was in flight is trained again.
    """
    newest: tuple[int, Path] | None = None
    for folder in map(Path, folders):
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            epoch = int(record["history"][-1]["epoch"])
            load(folder)  # whole and readable
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if newest is None or epoch > newest[0]:
            newest = (epoch, folder)
    return newest[1] if newest else None
