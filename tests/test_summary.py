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


def test_a_tie_of_many_trials_names_the_first_few_and_counts_the_others(tmp_path, capsys):
    tied = [f"t{n:03d}" for n in range(40)]  # a sweep of hundreds on a coarse validation split
    results = [result(t, 91.5, lr_factor=1.0 + n) for n, t in enumerate(tied)]
    lines = printed_summary([result("a", 80.0), *results], tmp_path, capsys)
    (tie,) = [line for line in lines if line.startswith("[tfkd] a tie: ")]
    others = tied[1:]
    named = ", ".join(others[: outcome.TIED_IDS_SHOWN])
    assert tie.startswith(
        f"[tfkd] a tie: {len(others)} other trials ({named} and "
        f"{len(others) - outcome.TIED_IDS_SHOWN} more) reached the same val_accuracy 91.50%; "
    )
    assert len(tie) < 200


def test_many_failed_trials_are_named_a_few_with_their_reasons_then_counted(tmp_path, capsys):
    """A diverging corner of the space fails 30 trials of a large sweep: the end of the sweep
    names the first few with their reasons and counts the others, not 30 lines."""
    failed = [
        SimpleNamespace(
            error=RuntimeError("diverged"),
            metrics={summary.FAILED_BY_HYPERPARAMETERS: f"diverged at epoch 1 (loss 1e{n + 9})"},
            config={"lr_factor": 8.0, "mode": "lsr"},
            path=f"/x/trial_f{n:02d}",
        )
        for n in range(30)
    ]
    lines = printed_summary([result("a", 80.0), *failed], tmp_path, capsys)
    assert lines[0] == "[tfkd] 31 trials: 30 failed, 0 stopped early by ASHA"
    named = [line for line in lines if " failed: " in line]
    assert named == [
        f"[tfkd] trial f{n:02d} failed: diverged at epoch 1 (loss 1e{n + 9})"
        for n in range(outcome.FAILURES_SHOWN)
    ]
    (rest,) = [line for line in lines if "more trial" in line]
    assert rest.startswith(f"[tfkd] {30 - outcome.FAILURES_SHOWN} more trials failed; ")
    assert str(tmp_path) in rest and len(lines) < 12


# ---------------------------------------------------------------- the registered teachers' line

TEACHER_RUN = "baseline-x"
REGISTERED = "tfkd-digits-resnet8"


def registered(version: int, run_id: str, epoch: int | None = None):
    from tfkd.tracking.teachers import RegisteredTeacher

    kind, at = ("snapshot", str(epoch)) if epoch else ("final", "4")
    location = f"runs:/{run_id}/teacher"
    return RegisteredTeacher(REGISTERED, str(version), kind, at, run_id, TEACHER_RUN, location)


def registered_line(monkeypatch, capsys, found: list, picked=None) -> str:
    """What print_registered says of a teacher run that registered `found`; `picked`: the
    version `--teacher resnet8:RUN` resolves to (None: the registry cannot say)."""
    from tfkd import tracking
    from tfkd.cli import tune as cli
    from tfkd.core.errors import UserError

    def resolve(uri, dataset, teacher, command):
        assert (dataset, teacher) == ("digits", f"resnet8:{TEACHER_RUN}")
        if picked is None:
            raise UserError("no final version")
        return picked

    monkeypatch.setattr(tracking, "registered_by", lambda uri, dataset, model, run: found)
    monkeypatch.setattr(tracking, "registered_teacher", resolve)
    plan = SimpleNamespace(config={"model": "resnet8", "dataset": "digits"}, name=TEACHER_RUN)
    capsys.readouterr()
    cli.print_registered(plan, "sqlite:///unused.db")
    (line,) = capsys.readouterr().out.splitlines()
    return line


def test_a_teacher_run_of_one_trial_lists_each_version_and_its_run(monkeypatch, capsys):
    found = [registered(1, "r1", epoch=1), registered(2, "r1")]
    assert registered_line(monkeypatch, capsys, found) == (
        f"[tfkd] registered teacher {REGISTERED}: version 1 (epoch-1), version 2 (final) of "
        f"teacher run {TEACHER_RUN} (MLflow run r1); use it with --teacher "
        f"resnet8@epoch-1:{TEACHER_RUN}"
    )


def test_a_large_sweeps_teachers_are_one_short_line_naming_the_version_the_hint_picks(
    monkeypatch, capsys
):
    """256 trials side by side each register an epoch-50 snapshot, then their final weights."""
    import random

    rng = random.Random(0)
    order = [f"run{n:03d}" for n in range(256) for _ in range(2)]
    rng.shuffle(order)  # which trial registers next
    found, snapshotted = [], set()
    for version, run_id in enumerate(order, start=1):
        epoch = None if run_id in snapshotted else 50
        snapshotted.add(run_id)
        found.append(registered(version, run_id, epoch))
    finals = [int(v.version) for v in found if v.kind == "final"]
    snapshots = [int(v.version) for v in found if v.kind == "snapshot"]
    best = found[finals[17] - 1]
    line = registered_line(monkeypatch, capsys, found, picked=best)
    assert len(line) < 400
    assert line == (
        f"[tfkd] registered teacher {REGISTERED}: 512 versions of teacher run {TEACHER_RUN} "
        f"from 256 MLflow runs: final weights as 256 versions between {min(finals)} and "
        f"{max(finals)}, epoch-50 snapshots as 256 versions between {min(snapshots)} and "
        f"{max(snapshots)}; use it with --teacher resnet8:{TEACHER_RUN} (version {best.version}, "
        f"MLflow run {best.run_id}) or --teacher resnet8@epoch-50:{TEACHER_RUN}"
    )


def test_consecutive_final_versions_are_a_range_and_an_unranked_run_still_has_its_hint(
    monkeypatch, capsys
):
    found = [registered(n, f"run{n}") for n in range(5, 21)]
    assert registered_line(monkeypatch, capsys, found) == (
        f"[tfkd] registered teacher {REGISTERED}: 16 versions of teacher run {TEACHER_RUN} "
        f"from 16 MLflow runs: final weights as versions 5-20; use it with --teacher "
        f"resnet8:{TEACHER_RUN}"
    )
