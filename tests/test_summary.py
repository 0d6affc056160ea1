"""The summary a finished sweep prints: its counts in words, its best trial, and a tie for the
best (no Ray cluster: Tune's results as the summary reads them)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import yaml

from tfkd.cli import outcome
from tfkd.cli.parser import parse_args
from tfkd.sweep import summary
from tfkd.sweep.plan import make_plan

EPOCHS = 2


class Grid(list):
    """Tune's ResultGrid, as summarise reads it: results, and the experiment's folder."""

    def __init__(self, results: list, experiment_path: str) -> None:
        super().__init__(results)
        self.experiment_path = experiment_path


def result(trial_id: str, val_accuracy: float, epoch: int = EPOCHS, lr_factor: float = 1.0):
    config = {"lr_factor": lr_factor, "mode": "lsr"}
    metrics = {"trial_id": trial_id, "epoch": epoch, "val_accuracy": val_accuracy}
    return SimpleNamespace(error=None, metrics=metrics, config=config, path=f"/x/trial_{trial_id}")


def printed_summary(results: list, tmp_path, capsys) -> list[str]:
    args = parse_args(["--mode", "lsr", "--dataset", "digits", "--epochs", "2"])
    args.set = ["warmup_epochs=0"]
    plan = make_plan(args)
    spec = SimpleNamespace(metric=plan.metric, epochs=EPOCHS)
    result_ = summary.summarise(Grid(results, str(tmp_path)), spec, interrupted=False)
    capsys.readouterr()
    assert outcome.print_outcome(result_, plan, argparse.Namespace()) == 0
    return capsys.readouterr().out.splitlines()


def test_a_tie_for_the_best_trial_is_said_and_the_first_is_written(tmp_path, capsys):
    lines = printed_summary(
        [result("a", 80.0), result("b", 91.5, lr_factor=2.0), result("c", 91.5, lr_factor=3.0)]
        + [result("d", 95.0, epoch=1)],  # stopped early: not ranked with the full-length ones
        tmp_path,
        capsys,
    )
    assert lines[0] == "[tfkd] 4 trials: 0 failed, 1 stopped early by ASHA"
    assert lines[1].startswith("[tfkd] best trial b: epoch 2, val_accuracy 91.50%")
    assert lines[2] == (
        "[tfkd] a tie: 1 other trial (c) reached the same val_accuracy 91.50%; "
        "best_config.yaml holds trial b's, the first of them"
    )
    written = yaml.safe_load((tmp_path / "best_config.yaml").read_text())
    assert written["trial_id"] == "b" and written["config"]["lr_factor"] == 2.0


def test_one_trial_is_one_trial_and_a_clear_best_mentions_no_tie(tmp_path, capsys):
    lines = printed_summary([result("a", 80.0)], tmp_path, capsys)
    assert lines[0] == "[tfkd] 1 trial: 0 failed, 0 stopped early by ASHA"
    assert not [line for line in lines if "tie" in line]
