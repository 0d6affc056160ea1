"""Evaluation protocols: which epoch's model a trial reports, and which split chooses it.

    holdout  (tfkd's, the default) a validation split carved from the training set chooses the
             epoch; the test split is evaluated once, at the end, on that epoch's weights.
    paper    (the original implementation's) train on the full training set, evaluate the test
             split after every epoch and report the maximum over epochs: the test set chooses.

A protocol is a registered object; the trial config's `protocol` key names one. Imports nothing
heavy: the command line checks protocol names before torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tfkd.core.registry import Registry

PAPER_TEST_ACCURACY = "paper_test_accuracy"  # the paper protocol's number: max test acc so far
REPORTED_EPOCH = "reported_epoch"  # the epoch whose weights are the reported model (so far)


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    chooses_by: str  # the per-epoch metric whose maximum chooses the reported epoch
    tests_every_epoch: bool
    reported_metric: str  # the test metric a results row reports for this protocol
    full_training_set: bool  # trains on the whole training split (val_fraction 0)
    sweep_metrics: tuple[str, ...]  # what a sweep may rank trials on (the first: the default)


PROTOCOLS: Registry[Protocol] = Registry("protocol")
get = PROTOCOLS.get
names = PROTOCOLS.names

PROTOCOLS.add(
    "holdout",
    Protocol(
        name="holdout",
        description="validation split chooses the epoch; test once, on its weights",
        chooses_by="val_accuracy",
        tests_every_epoch=False,
        reported_metric="test_accuracy",
        full_training_set=False,
        sweep_metrics=("val_accuracy",),
    ),
)
PROTOCOLS.add(
    "paper",
    Protocol(
        name="paper",
        description="full training set, test every epoch, report the maximum (the original's)",
        chooses_by="test_accuracy",
        tests_every_epoch=True,
        reported_metric=PAPER_TEST_ACCURACY,
        full_training_set=True,
        sweep_metrics=(),  # no split but the test set: a sweep ranks on it only when asked
    ),
)
# what a paper-protocol sweep may be asked to rank on, explicitly (it selects on the test set)
PAPER_SWEEP_METRIC = PAPER_TEST_ACCURACY


class Selection:
    """The epoch a trial reports so far, by its protocol's rule, and (when asked) its weights.

    The epoch with the highest `chooses_by` metric wins (the earlier one on a tie); an epoch
    without that metric (holdout without a validation split) takes over from every earlier one,
    so the final epoch is reported. `keep_weights` keeps a copy of the chosen epoch's weights,
    for a protocol that tests the chosen model once at the end.
    """

    def __init__(self, protocol: Protocol, keep_weights: bool) -> None:
        self.protocol = protocol
        self.keep_weights = keep_weights
        self.epoch = 0
        self.score = float("-inf")
        self.weights: dict[str, Any] | None = None

    def update(self, epoch: int, metrics: Mapping[str, Any], model: Any) -> bool:
        """Take the epoch if it is the best so far; returns whether it was."""
        score = metrics.get(self.protocol.chooses_by)
        if score is not None and float(score) <= self.score:
            return False
        self.epoch, self.score = epoch, float("-inf") if score is None else float(score)
        if self.keep_weights:
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def metrics(self) -> dict[str, float]:
        """What an epoch's report says about the selection: the chosen epoch, and under the
        paper protocol the maximum test accuracy so far."""
        out = {REPORTED_EPOCH: self.epoch}
        if self.protocol.reported_metric == PAPER_TEST_ACCURACY:
            out[PAPER_TEST_ACCURACY] = self.score
        return out

    def state(self, current_epoch: int) -> dict[str, Any]:
        """For a checkpoint: the chosen epoch and score, and its weights unless they are the
        checkpoint's own (the current epoch's)."""
        saved: dict[str, Any] = {"epoch": self.epoch, "score": self.score}
        if self.weights is not None and self.epoch != current_epoch:
            saved["weights"] = self.weights
        return saved

    def restore(self, saved: Mapping[str, Any], model: Any) -> None:
        """The selection a checkpoint carried; its weights are the model's when not saved."""
        self.epoch, self.score = int(saved["epoch"]), float(saved["score"])
        if self.keep_weights:
            weights = saved.get("weights")
            self.weights = dict(weights) if weights is not None else None
            if self.weights is None:
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
