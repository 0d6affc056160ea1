"""The trial record: what every checkpoint of a sweep's trial carries besides the training state.

A restart concept (Ray restores a trial from a checkpoint folder), so it lives with the trainable,
not in the training core, which only saves and loads checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfkd.core import atomic
from tfkd.core.checkpoint import export_weights, load
from tfkd.core.protocol import PAPER_TEST_ACCURACY, REPORTED_EPOCH

RECORD_FILE = "trial_record.json"
BEST_FILE = "best_model.pt"  # the best weights, when a checkpoint carries them
BEST_PREFIX = "best-epoch-"  # the best weights in the trial's home: best-epoch-<N>.pt


class TrialRecord:
    """What every checkpoint of a trial carries besides the training state.

    Every finished epoch's metrics (so a restored trial can complete its tracking history), the
    best epoch with its accuracy, and the nodes that ran the trial. The best epoch is the one the
    trial reports (`reported_epoch`, chosen by its protocol: validation accuracy under holdout,
    the final epoch without a validation split, test accuracy under the paper's protocol), so
    its weights are the model whose accuracy is logged. A trial restarted or resumed from any of its
    checkpoints therefore loses neither its history nor its best weights; the checkpoints
    themselves may be pruned to the latest few.

    The best weights are written once per improvement, into the trial's home folder (`home`,
    on the sweep's storage), as `best-epoch-<N>.pt`: the newest and the one before it are kept,
    so a trial restored from the checkpoint before an improvement still finds the weights its
    record names. When the home folder is not shared by every node (results on a URI storage),
    `carry_best` also puts the best weights in every checkpoint, the one thing that travels.
    """

    def __init__(self, home: str | os.PathLike, carry_best: bool = False) -> None:
        self.home = Path(home)
        self.carry_best = carry_best
        self.history: list[dict[str, Any]] = []
        self.best_accuracy = float("-inf")
        self.best_metric = "val_accuracy"  # what best_accuracy is (the protocol's choosing metric)
        self.best_epoch = 0
        self.nodes: list[str] = []

    @property
    def best_weights(self) -> Path:
        return self.home / f"{BEST_PREFIX}{self.best_epoch}.pt"

    @classmethod
    def restore(
        cls, home: str | os.PathLike, folder: str | os.PathLike | None, carry_best: bool = False
    ) -> TrialRecord:
        """The record a checkpoint folder carries (an empty one without a folder)."""
        record = cls(home, carry_best)
        record.home.mkdir(parents=True, exist_ok=True)
        if folder is None or not (Path(folder) / RECORD_FILE).is_file():
            return record
        saved = json.loads((Path(folder) / RECORD_FILE).read_text())
        record.history = list(saved["history"])
        record.best_accuracy = float(saved["best_accuracy"])
        record.best_epoch = int(saved["best_epoch"])
        record.best_metric = str(saved.get("best_metric", record.best_metric))
        record.nodes = list(saved["nodes"])
        carried = Path(folder) / BEST_FILE
        if carried.is_file() and not record.best_weights.is_file():
            shutil.copyfile(carried, record.best_weights)
        return record

    def ran_on(self, node: str) -> None:
        if node and (not self.nodes or self.nodes[-1] != node):
            self.nodes.append(node)

    def add_epoch(self, metrics: dict[str, Any], checkpoint_dir: str | os.PathLike) -> bool:
        """Record a finished epoch and write the record into its checkpoint folder.

        Returns True when the epoch is the best so far (its weights become the best weights).
        """
        self.history.append({k: v for k, v in metrics.items() if _is_number(v)})
        epoch = int(metrics["epoch"])
        self.best_metric = _choosing_metric(metrics)
        improved = _is_reported(metrics, self.best_metric, self.best_accuracy)
        if improved:
            previous = self.best_epoch
            self.best_epoch = epoch
            self.best_accuracy = float(metrics.get(self.best_metric, float("nan")))
            export_weights(checkpoint_dir, self.best_weights)
            self._forget_best_before(previous)
        if self.carry_best and self.best_weights.is_file():
            atomic.link_or_copy(self.best_weights, Path(checkpoint_dir) / BEST_FILE)
        document = {
            "history": self.history,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "nodes": self.nodes,
        }
        atomic.write_text(Path(checkpoint_dir) / RECORD_FILE, json.dumps(document))
        return improved

    def _forget_best_before(self, previous: int) -> None:
        """Delete best weights older than the previous best (no checkpoint can name them)."""
        for old in self.home.glob(f"{BEST_PREFIX}*.pt"):
            epoch = old.name[len(BEST_PREFIX) : -len(".pt")]
            if epoch.isdigit() and int(epoch) not in (previous, self.best_epoch):
                old.unlink(missing_ok=True)


def _choosing_metric(metrics: dict[str, Any]) -> str:
    """The metric that chose the reported epoch: the validation accuracy, the test accuracy
    under the paper's protocol, or none (no validation split: the final epoch is reported)."""
    if "val_accuracy" in metrics:
        return "val_accuracy"
    return "test_accuracy" if PAPER_TEST_ACCURACY in metrics else ""


def _is_reported(metrics: dict[str, Any], metric: str, best: float) -> bool:
    """Whether this epoch is the one the trial reports: the trainer says so (reported_epoch);
    metrics without it (hand-made, or an older trainer's) improve on the best so far."""
    if REPORTED_EPOCH in metrics:
        return int(metrics[REPORTED_EPOCH]) == int(metrics["epoch"])
    return bool(metric) and float(metrics.get(metric, float("-inf"))) > best


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
