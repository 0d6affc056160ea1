"""Evaluation protocols: which epoch's model a trial reports, and which split chooses it.

    holdout  (tfkd's, the default) a validation split carved from the training set chooses the
             epoch; the test accuracy of that epoch's weights is reported once, at the end.
    paper    (the original implementation's) train on the full training set, evaluate the test
             split after every epoch and report the maximum over epochs: the test set chooses.

A protocol is a registered object; the trial config's `protocol` key names one. Imports nothing
heavy: the command line checks protocol names before torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tfkd.core.errors import UserError
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
DEFAULT_SWEEP_METRIC = "val_accuracy"  # what a sweep ranks on unless told (holdout's choice)


def trial_config(name: str) -> dict[str, Any]:
    """The trial config keys protocol `name` sets: its name, and no validation split when it
    trains on the full training set (a --set val_fraction beside it is refused by the config)."""
    return {
        "protocol": name,
        **({"val_fraction": 0.0} if get(name).full_training_set else {}),
    }


def sweep_metric(name: str, asked: str | None, fixed: bool) -> tuple[str, tuple[str, ...]]:
    """What a sweep ranks its trials on under protocol `name`, and the warning it prints.

    holdout ranks on the validation accuracy. The paper's protocol has no split but the test
    set: a search ranks on the test set's maximum only when --metric asks for exactly that,
    and then says it selects on the test set; one --fixed trial ranks nothing.
    """
    rule = get(name)
    if asked is None and rule.sweep_metrics:
        return rule.sweep_metrics[0], ()
    if asked is None and fixed:
        return PAPER_SWEEP_METRIC, ()
    if asked is None:
        raise UserError(
            f"--protocol {name}: a search ranks its trials on a metric and this protocol has "
            f"no validation split; add --metric {PAPER_SWEEP_METRIC} to rank on the "
            "test set's maximum over epochs (it selects on the test set), run one configuration "
            "with --fixed, or search under --protocol holdout"
        )
    allowed = rule.sweep_metrics or (PAPER_SWEEP_METRIC,)
    if asked not in allowed:
        raise UserError(
            f"--metric {asked}: protocol {name!r} ranks on {' or '.join(allowed)}; choose "
            f"--metric {allowed[0]} or another --protocol"
        )
    if asked == PAPER_SWEEP_METRIC and not fixed:
        return asked, (
            f"warning: --metric {asked} selects configurations on the test set (the paper's "
            "protocol): the best trial's test accuracy is optimistic, not an estimate for new data",
        )
    return asked, ()


class Selection:
    """The epoch a trial reports so far, by its protocol's rule, and its test metrics.

    The epoch with the highest `chooses_by` metric wins (the earlier one on a tie); an epoch
    without that metric (holdout without a validation split) takes over from every earlier one,
    so the final epoch is reported. A protocol that does not test every epoch (holdout) tests
    the chosen epoch's weights when it is chosen and reports those metrics at the end
    (`chosen_test`): the same number as testing its weights at the end, without keeping a
    second copy of the weights in memory or in every checkpoint.
    """

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.epoch = 0
        self.score = float("-inf")
        self.chosen_test: dict[str, float] | None = None

    def update(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Take the epoch if it is the best so far; returns whether it was."""
        score = metrics.get(self.protocol.chooses_by)
        if score is not None and float(score) <= self.score:
            return False
        self.epoch, self.score = epoch, float("-inf") if score is None else float(score)
        self.chosen_test = None
        return True

    def metrics(self) -> dict[str, float]:
        """What an epoch's report says about the selection: the chosen epoch, and under the
        paper protocol the maximum test accuracy so far."""
        out: dict[str, float] = {REPORTED_EPOCH: self.epoch}
        if self.protocol.reported_metric == PAPER_TEST_ACCURACY:
            out[PAPER_TEST_ACCURACY] = self.score
        return out

    def state(self) -> dict[str, Any]:
        """For a checkpoint: the chosen epoch, its score and its test metrics (a few numbers)."""
        return {"epoch": self.epoch, "score": self.score, "chosen_test": self.chosen_test}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """The selection a checkpoint carried."""
        self.epoch, self.score = int(saved["epoch"]), float(saved["score"])
        chosen = saved.get("chosen_test")
        self.chosen_test = None if chosen is None else {k: float(v) for k, v in chosen.items()}
