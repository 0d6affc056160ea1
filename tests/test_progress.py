"""The sweep status table, trial names, the sweep run comparison files (no Ray, no MLflow)."""

from __future__ import annotations

import csv
import io
import pickle
import random
import sys
import time
from collections import Counter
from dataclasses import replace

import pytest

from tfkd.sweep import status as progress
from tfkd.sweep import sweep_files
from tfkd.sweep.search_space import Param

TFKD_REG = ["temperature", "alpha", "correct_prob", "multiplier", "semantics"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.891, ".89"), (7.55, "7.5"), (2e-4, "2e-4"), (120.4, "120"), (3, "3"), (50.0, "50")]
    + [(0.05, ".05"), ("reference", "ref"), (True, "on")],
)
def test_short_numbers(value, shown):
    assert progress.short_number(value) == shown


def test_a_trial_is_named_by_its_searched_values():
    config = {"temperature": 7.5, "alpha": 0.891, "correct_prob": 0.98, "multiplier": 7.6}
    config |= {"semantics": "reference", "lr": 0.1, "seed": 0}
    assert progress.short_name(config, TFKD_REG) == "T7.5 a.89 p.98 m7.6 sref"
    assert progress.short_name(config, []) == ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_status_table_counts_states_best_and_time_left():
    clock, out = Clock(), io.StringIO()
    status = progress.SweepStatus("s", total=4, epochs=4, out=out, refresh_s=10, clock=clock)
    status.maybe_print()
    assert out.getvalue() == ""  # nothing to show before a trial starts
    status.on_start("a", "T1 a.5", 4)
    status.on_start("b", "T2 a.9", 4)
    for epoch, (acc_a, acc_b) in enumerate([(10.0, 30.0), (20.0, 31.0)], start=1):
        clock.now += 10
        status.on_result("a", "T1 a.5", {"epoch": epoch, "val_accuracy": acc_a})
        status.on_result("b", "T2 a.9", {"epoch": epoch, "val_accuracy": acc_b})
    status.on_complete("a", "T1 a.5")  # stopped by ASHA at epoch 2 of 4
    status.maybe_print()
    text = out.getvalue()
    first, header, row_a, row_b = text.strip().splitlines()
    assert "0 done, 1 running, 1 stopped, 0 failed, 2 pending of 4" in first
    assert "best 31.00% (T2 a.9)" in first and "20s elapsed" in first
    # 4 epochs done in 20 s; left: 2 of b and 2 pending x 4 = 10 epochs -> 50 s
    assert "at most ~50s left" in first
    assert header.split() == ["trial", "epoch", "val", "acc", "state"]
    assert row_a.split() == ["T1", "a.5", "2/4", "20.00%", "STOPPED"]
    assert row_b.split() == ["T2", "a.9", "2/4", "31.00%", "RUNNING"]
    clock.now += 5
    status.maybe_print()  # throttled: less than refresh_s since the last table
    assert out.getvalue() == text
    status.on_result("b", "T2 a.9", {"epoch": 4, "val_accuracy": 33.0})
    status.on_complete("b", "T2 a.9")
    status.on_error("c", "T3 a.1")
    status.finish()
    last = out.getvalue()[len(text) :].splitlines()[0]
    assert "1 done, 0 running, 1 stopped, 1 failed, 1 pending of 4" in last


def large_sweep(total: int = 256, epochs: int = 10) -> tuple[progress.SweepStatus, dict]:
    """A sweep of `total` trials part-way: done, stopped at epoch 7, running and failed trials
    with distinct scores, the rest not started. Returns the status and each trial's
    (state, epoch, score) as fed to it."""
    rng = random.Random(0)
    scores = rng.sample(range(1000, 9000), total)
    fed: dict[str, tuple[str, int, float]] = {}
    status = progress.SweepStatus("s", total=total, epochs=epochs, out=io.StringIO())
    states = ["DONE"] * 90 + ["STOPPED"] * 100 + ["RUNNING"] * 40 + ["FAILED"] * 6
    rng.shuffle(states)
    for n, state in enumerate(states[:total]):
        name, score = f"t{n}", scores[n] / 100
        epoch = {"DONE": epochs, "STOPPED": 7, "FAILED": 3}.get(state, rng.randrange(1, epochs))
        status.on_start(name, name, epochs)
        status.on_result(name, name, {"epoch": epoch, "val_accuracy": score})
        if state in ("DONE", "STOPPED"):
            status.on_complete(name, name)
        elif state == "FAILED":
            status.on_error(name, name)
        fed[name] = (state, epoch, score)
    return status, fed


def table_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[2:]]


def test_a_large_sweeps_table_fits_a_screen_and_shows_the_best_running_and_failed():
    status, fed = large_sweep()
    text = status.render()
    assert len(text.splitlines()) <= 24  # one terminal screen, however many trials
    summary = text.splitlines()[0]
    assert "90 done, 40 running, 100 stopped, 6 failed, 20 pending of 256" in summary
    rows = [r for r in table_rows(text) if r[0] != "..."]
    notes = [" ".join(r) for r in table_rows(text) if r[0] == "..."]
    # the best: full-length trials by score (every done trial ran its 10 epochs)
    done = sorted((n for n, f in fed.items() if f[0] == "DONE"), key=lambda n: -fed[n][2])
    assert [r[0] for r in rows[: progress.TOP_ROWS]] == done[: progress.TOP_ROWS]
    assert f"| best {fed[done[0]][2]:.2f}% ({done[0]}) |" in summary
    running = [r for r in rows if r[-1] == "RUNNING"]
    furthest = sorted(fed[n][1] for n, f in fed.items() if f[0] == "RUNNING")[::-1]
    assert [int(r[1].split("/")[0]) for r in running] == furthest[: len(running)]
    assert 0 < len(running) < 40 and f"... and {40 - len(running)} more running" in notes
    failed = [r[0] for r in rows if r[-1] == "FAILED"]
    assert failed and set(failed) <= {n for n, f in fed.items() if f[0] == "FAILED"}
    assert f"... and {6 - len(failed)} more failed" in notes
    shown = {r[0] for r in rows}
    left = Counter(state for n, (state, _, _) in fed.items() if n not in shown)
    assert notes[-1] == f"... not shown: {left['DONE']} done, {left['STOPPED']} stopped"
    assert (left["RUNNING"], left["FAILED"]) == (40 - len(running), 6 - len(failed))


def test_a_large_sweeps_best_is_a_full_length_trial_even_when_a_stopped_one_scored_more():
    status, _ = large_sweep()
    status.on_result("t0", "t0", {"epoch": 7, "val_accuracy": 99.5})  # the highest score
    status.on_complete("t0", "t0")  # stopped at 7 of 10
    first = table_rows(status.render())[0]
    assert first[0] != "t0" and first[-1] == "DONE"


def test_sweeps_of_up_to_twenty_trials_list_every_trial_and_larger_ones_a_selection():
    status, fed = large_sweep(total=20)
    rows = table_rows(status.render())
    assert [r[0] for r in rows] == list(fed)  # every trial, in the order they started
    assert [r[-1] for r in rows] == [f[0] for f in fed.values()]
    status, _ = large_sweep(total=21)
    assert len(table_rows(status.render())) < 21


def test_durations():
    assert [progress.duration(s) for s in (5, 185, 7620)] == ["5s", "3m05s", "2h07m"]


SPACE = {
    "temperature": Param("temperature", "loguniform", 1.0, 100.0),
    "semantics": Param("semantics", "choice", values=("reference", "paper")),
}


def rows() -> list[sweep_files.TrialRow]:
    def row(name, state, epoch, val, test, t, s):
        values = {"temperature": t, "semantics": s}
        return sweep_files.TrialRow(name, name.lower(), state, epoch, val, test, values)

    return [
        row("A", "STOPPED", 1, 20.0, None, 2.0, "paper"),
        row("B", "DONE", 4, 60.0, 58.5, 20.0, "reference"),
        row("C", "FAILED", 0, None, None, 50.0, "paper"),
    ]


def test_the_trials_table_lists_searched_values_and_final_metrics_best_first():
    table = list(csv.reader(io.StringIO(sweep_files.table_csv(rows(), list(SPACE)).decode())))
    assert table[0] == ["trial", "trial_id", "state", "epoch", *SPACE, "val_accuracy"] + [
        "test_accuracy"
    ]
    assert [r[0] for r in table[1:]] == ["B", "A", "C"]
    assert table[1] == ["B", "b", "DONE", "4", "20.0", "reference", "60.0", "58.5"]
    page = sweep_files.table_html("sweep-x", rows(), list(SPACE)).decode()
    assert page.count("<tr>") == 4 and "sweep-x" in page and "<td>58.5</td>" in page


def test_a_paper_sweeps_trials_table_ranks_on_its_metric_and_shows_it():
    maxima = {"A": 70.0, "B": 55.0, "C": None}  # paper_test_accuracy; no val_accuracy (no split)
    paper_rows = [replace(r, val_accuracy=None, paper_test_accuracy=maxima[r.name]) for r in rows()]
    text = sweep_files.table_csv(paper_rows, list(SPACE), "paper_test_accuracy").decode()
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][-3:] == ["val_accuracy", "test_accuracy", "paper_test_accuracy"]
    by_max = sorted(maxima, key=lambda n: (maxima[n] is None, -(maxima[n] or 0)))
    assert [r[0] for r in table[1:]] == by_max
    assert table[1][-1] == "70.0"
    files = sweep_files.files("paper", paper_rows, SPACE, 4, "paper_test_accuracy")
    assert files["parallel_coordinates.png"].startswith(b"\x89PNG\r\n\x1a\n")  # scored: 2 rows


def test_the_sweep_files_and_counts():
    files = sweep_files.files("sweep-x", rows(), SPACE, epochs=4)
    assert set(files) == {"trials.csv", "trials.html", "parallel_coordinates.png"}
    assert files["parallel_coordinates.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert len(files["parallel_coordinates.png"]) > 5000
    assert "parallel_coordinates.png" not in sweep_files.files("fixed", rows(), {}, epochs=4)
    counts = sweep_files.sweep_metrics(rows())
    assert counts == {"trials": 3.0, "failed": 1.0, "stopped_early": 1.0}


def test_the_status_table_survives_pickling_for_resume():
    status = progress.SweepStatus("s", total=2, epochs=4, out=io.StringIO())
    status.on_start("a", "T1", 4)
    restored = pickle.loads(pickle.dumps(status))
    assert restored.out is sys.stdout and restored.rows["a"].name == "T1"
    assert restored.started <= time.monotonic()


def test_the_status_tables_best_is_a_full_length_trials_last_epoch():
    """Trial a peaked at 40% but ended at 30%; b ended at 35%; c, stopped early, at 50%: the
    sweep's best is b (the summary and best_config.yaml choose the same way)."""
    out = io.StringIO()
    status = progress.SweepStatus("s", total=3, epochs=2, out=out)
    for trial, curve in {"a": [40.0, 30.0], "b": [20.0, 35.0], "c": [50.0]}.items():
        status.on_start(trial, trial, 2)
        for epoch, accuracy in enumerate(curve, start=1):
            status.on_result(trial, trial, {"epoch": epoch, "val_accuracy": accuracy})
        status.on_complete(trial, trial)
    status.print()
    assert "| best 35.00% (b) |" in out.getvalue()
    full = [("a", 30.0, True), ("b", 35.0, True), ("c", 50.0, False)]
    assert progress.best_of(full) == "b"
    assert progress.best_of([("c", 50.0, False), ("d", float("nan"), False)]) == "c"
    assert progress.best_of([("d", None, True)]) is None


def test_a_resumed_sweep_shows_the_trials_that_had_ended():
    """Tune restores ended trials without starting them: the table still shows them."""
    out = io.StringIO()
    status = progress.SweepStatus("s", total=3, epochs=4, out=out)
    status.on_restored("a", "lr.1", 4, {"epoch": 1, "val_accuracy": 4.83}, "DONE")  # ASHA stop
    status.on_restored("b", "lr.2", 4, {"epoch": 4, "val_accuracy": 30.0}, "DONE")
    status.on_restored("c", "lr.3", 4, {"epoch": 2, "val_accuracy": 20.0}, "")  # to resume
    status.print()
    header, _, *rows = out.getvalue().strip().splitlines()
    assert "1 done, 0 running, 1 stopped, 0 failed, 1 pending of 3" in header
    assert [row.split()[-3:] for row in rows] == [
        ["1/4", "4.83%", "STOPPED"],
        ["4/4", "30.00%", "DONE"],
        ["2/4", "20.00%", "PENDING"],
    ]


class FakeTrial:
    """What the status table's Tune callback reads of a trial."""

    def __init__(self, trial_id: str, status: str, last_result: dict, epochs: int = 4) -> None:
        self.trial_id, self.status, self.last_result = trial_id, status, last_result
        self.config = {"epochs": epochs}

    def __str__(self) -> str:
        return f"lr{self.trial_id}"


def test_a_resumed_sweep_shows_the_trials_that_were_running_and_times_this_sessions_pace():
    """Interrupted with a trial done, one 2 epochs in and one not yet reporting: after --resume
    all three are in the table, and the time left is this session's pace (1 epoch in 10 s),
    not the earlier sessions' epochs over this session's seconds."""
    from tfkd.sweep.callbacks import ProgressCallback

    out = io.StringIO()
    status = progress.SweepStatus("s", total=3, epochs=4, out=out, clock=Clock())
    resumed = pickle.loads(pickle.dumps(ProgressCallback(status)))  # as Tuner.restore does
    resumed.status.out = out
    trials = [
        FakeTrial("a", "TERMINATED", {"epoch": 4, "val_accuracy": 30.0}),
        FakeTrial("b", "PENDING", {"epoch": 2, "val_accuracy": 20.0}),  # was running
        FakeTrial("c", "PENDING", {}),  # was running, had not reported yet
    ]
    resumed.on_step_begin(0, trials)
    resumed.status.print()
    header, _, *rows = out.getvalue().strip().splitlines()
    assert "1 done, 0 running, 0 stopped, 0 failed, 2 pending of 3" in header
    assert [row.split() for row in rows] == [
        ["lra", "4/4", "30.00%", "DONE"],
        ["lrb", "2/4", "20.00%", "PENDING"],
        ["lrc", "0/4", "-", "PENDING"],
    ]
    assert "left" not in header  # no epoch run in this session yet: no pace to go by
    for trial in trials[1:]:
        resumed.on_trial_start(0, trials, trial)
    resumed.status.clock.now += 10
    resumed.on_trial_result(0, trials, trials[1], {"epoch": 3, "val_accuracy": 25.0})
    # left: b's last epoch and c's four, at this session's 1 epoch per 10 s
    assert "at most ~50s left" in resumed.status.summary_line()


@pytest.fixture
def driver_logging(monkeypatch):
    """configure_driver's settings for the length of a test (its logging filters removed)."""
    import logging
    import os

    for name in ("TUNE_PRINT_ALL_TRIAL_ERRORS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.setenv(name, os.environ.get(name, "unset"))
        monkeypatch.delenv(name)
    loggers = [logging.getLogger(n) for n in ("ray.tune.tune", progress.RAY_ANALYSIS_LOGGER)]
    kept = [logger.filters[:] for logger in loggers]
    progress.configure_driver(verbose=False)
    yield
    for logger, filters in zip(loggers, kept, strict=True):
        logger.filters[:] = filters


def fetch_metrics_of(trials: list) -> None:
    """Ray's own reading of the trials' metrics files, as its ResultGrid does at a sweep's end."""
    from types import SimpleNamespace

    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    analysis = SimpleNamespace(trials=trials)
    analysis._fetch_trial_dataframe = lambda t: ExperimentAnalysis._fetch_trial_dataframe(
        analysis, t
    )
    ExperimentAnalysis._fetch_trial_dataframes(analysis)


def ray_trial(folder):
    from types import SimpleNamespace

    import pyarrow.fs

    folder.mkdir(exist_ok=True)
    storage = SimpleNamespace(
        trial_fs_path=str(folder), storage_filesystem=pyarrow.fs.LocalFileSystem()
    )
    return SimpleNamespace(storage=storage, last_result={}, trial_id=folder.name)


def test_rays_warning_of_trials_that_never_reported_is_not_shown(tmp_path, driver_logging):
    """Stopped (Ctrl-C) or resumed with trials that had not reported: Ray's analysis finds no
    metrics files for them and would warn; a metrics file it cannot read is still shown."""
    import logging

    shown: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = shown.append  # type: ignore[method-assign]
    logger = logging.getLogger(progress.RAY_ANALYSIS_LOGGER)  # Ray's: it does not propagate
    logger.addHandler(handler)
    try:
        never_ran = [ray_trial(tmp_path / "a"), ray_trial(tmp_path / "b")]
        fetch_metrics_of(never_ran)
        assert shown == []
        corrupt = ray_trial(tmp_path / "c")
        (tmp_path / "c" / "result.json").write_text("{not json\n")
        fetch_metrics_of([*never_ran, corrupt])
    finally:
        logger.removeHandler(handler)
    (record,) = shown
    assert "Failed to fetch metrics for 3 trial(s)" in record.getMessage()
