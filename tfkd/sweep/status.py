"""What a person at the terminal sees of a sweep: one compact, periodically refreshed status table.

Architecture: this module knows nothing of Ray. tfkd.sweep.callbacks feeds a `SweepStatus`
from a Tune callback (trial started, reported an epoch, completed, failed) and asks it to print,
at most every `refresh_s` seconds and once more at the end; tfkd.cli.tune prints the final
summary after it. Trials are named by what differs between them (`short_name`:
`T7.5 a.89 p.98 m7.6 sref`), here and in MLflow's runs table.

`configure_driver(verbose)` runs before Ray is imported: without --verbose the trials' own output
is not forwarded to the driver (their per-epoch lines are in each trial's log and MLflow);
with --verbose it is forwarded without Ray's de-duplication.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, TypeGuard, TypeVar

# Short names of the keys a search varies (anything else keeps its full name).
ABBREVIATIONS = {
    "temperature": "T",
    "alpha": "a",
    "correct_prob": "p",
    "multiplier": "m",
    "semantics": "s",
    "epsilon": "e",
    "kd_share": "k",
    "smoothing": "sm",
    "lr_factor": "lrx",
    "lr": "lr",
    "weight_decay": "wd",
    "batch_size": "b",
    "momentum": "mom",
    "seed": "seed",
}
REFRESH_S = 15.0
# The table lists every trial of a sweep of up to FULL_TABLE_TRIALS trials. A larger sweep
# (`--num-samples 256`) would print hundreds of rows every REFRESH_S, so its table lists: the
# TOP_ROWS best trials (the summary's best first), the RUNNING_ROWS running trials furthest
# along, and FAILED_ROWS failed ones, each followed by how many more there are, and then the
# count of the trials left out: at most 21 lines, one 24-line terminal screen.
FULL_TABLE_TRIALS = 20
TOP_ROWS = 5
RUNNING_ROWS = 8  # a cluster of 8 GPUs at 4 trials each runs 32: the 8 nearest their end
FAILED_ROWS = 3  # a failure the user must act on; the summary at the end names every one
RAY_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
T = TypeVar("T")
STATES = ("PENDING", "RUNNING", "DONE", "STOPPED", "FAILED")

_forward_trial_output = True


# ---------------------------------------------------------------- the driver's output


def configure_driver(verbose: bool) -> None:
    """Before Ray starts: which output reaches the terminal (see the module docstring)."""
    global _forward_trial_output
    _forward_trial_output = verbose
    if verbose:
        os.environ["RAY_DEDUP_LOGS"] = "0"  # read when Ray is imported
    else:
        # A failed trial: tfkd prints its name, its reason and its error.txt, which holds the
        # traceback Ray would print too (--verbose shows it).
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # A local Ray enables token authentication by default and says so on every start.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    # MLflow draws a progress bar on the terminal when it downloads a teacher's weights.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # tfkd prints the command that resumes an interrupted sweep; Ray's Python advice would
    # contradict it.
    logging.getLogger("ray.tune.tune").addFilter(_not_rays_resume_advice)
    # A sweep stopped by Ctrl-C (and one resumed) has trials that never reported an epoch: Ray's
    # analysis of the results warns that it found no metrics files for them. tfkd reads none.
    logging.getLogger(RAY_ANALYSIS_LOGGER).addFilter(_not_rays_missing_metrics_files)
    if not verbose:  # the summary names each failed trial and why
        logging.getLogger("ray.tune.tune").addFilter(_not_rays_unfinished_list)


def _not_rays_resume_advice(record: logging.LogRecord) -> bool:
    return "Tuner.restore(" not in record.getMessage()


def _not_rays_unfinished_list(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Trials did not complete")


def _not_rays_missing_metrics_files(record: logging.LogRecord) -> bool:
    """Ray's "Failed to fetch metrics for N trial(s)" when each of them has no metrics file yet
    (another failure to read them still shows)."""
    heading, *trials = record.getMessage().splitlines()
    missing = [line for line in trials if "were not found at" in line]
    return not (heading.startswith("Failed to fetch metrics for") and missing == trials)


def forward_trial_output() -> bool:
    """Whether a local Ray forwards the trials' stdout and stderr to the driver (--verbose)."""
    return _forward_trial_output


# ---------------------------------------------------------------- short names


def short_number(value: Any) -> str:
    """Two significant digits, no leading zero: 0.891 -> '.89', 7.55 -> '7.5', 2e-4 -> '2e-4'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, (int, float)):
        return str(value)[:3]
    if isinstance(value, int) or abs(value) >= 100 or float(value).is_integer() and value:
        return str(int(round(value)))
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    text = f"{value:.2g}"
    return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text


def short_name(config: Mapping[str, Any], keys: Iterable[str]) -> str:
    """The searched values of a trial, short enough for a table: 'T7.5 a.89 p.98 m7.6 sref'."""
    parts = [
        f"{ABBREVIATIONS.get(key, key)}{short_number(config[key])}" for key in keys if key in config
    ]
    return " ".join(parts)


# the status table's column for the sweep's metric
COLUMN_LABELS = {"val_accuracy": "val acc", "paper_test_accuracy": "max test"}


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------- the sweep's best


def best_of(candidates: Iterable[tuple[T, float | None, bool]]) -> T | None:
    """The sweep's best of (item, score, full length) triples; None when none has a score.

    A trial's score is the sweep's metric (its validation accuracy; under the paper's protocol,
    when asked, its test set's maximum so far) at the last epoch it reported: what ASHA and the
    searcher judged it by, what MLflow shows under that name. Full-length trials come
    first (an early-stopped trial's score is from fewer epochs). The status table, the summary,
    best_config.yaml and the sweep run's best_* metrics all take their best from here.
    """
    tied = best_ties(candidates)
    return tied[0] if tied else None


def best_ties(candidates: Iterable[tuple[T, float | None, bool]]) -> list[T]:
    """Every item that has the best score (see best_of), in the order given: best_of's choice,
    the first of them, then the ones that tie with it."""
    scored = [(item, score, full) for item, score, full in candidates if _is_score(score)]
    pool = [c for c in scored if c[2]] or scored
    top = max((score for _, score, _ in pool), default=None)
    return [item for item, score, _ in pool if score == top]


def top_of(candidates: Iterable[tuple[T, float | None, bool]], n: int) -> list[T]:
    """The `n` best of (item, score, full length) triples, best first: best_of's choice, then
    the others as best_of ranks them (full-length first, then by score; ties in the order
    given). O(len log n): the status table asks for it at every refresh."""
    scored = (
        (not full, -score, index, item)
        for index, (item, score, full) in enumerate(candidates)
        if _is_score(score)
    )
    return [entry[-1] for entry in heapq.nsmallest(n, scored, key=lambda e: e[:3])]


def _is_score(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- the status table


@dataclass
class LiveTrial:
    """One trial as the live status table shows it."""

    name: str
    epochs: int
    epoch: int = 0
    score: float | None = None  # the sweep's metric at its last epoch (SweepStatus.metric)
    state: str = "PENDING"


class SweepStatus:
    """The state of a sweep's trials, rendered as a compact table.

    `total` is the number of trials the sweep will run; `epochs` the full schedule.
    """

    def __init__(
        self,
        sweep: str,
        total: int,
        epochs: int,
        *,
        out: TextIO | None = None,
        refresh_s: float = REFRESH_S,
        drain_s: float = 0.0,
        clock: Any = time.monotonic,
        metric: str = "val_accuracy",
    ) -> None:
        """`drain_s`: how long the final table waits for the trials' forwarded output (Ray
        forwards it asynchronously) so that it comes after their last epoch lines."""
        self.sweep, self.total, self.epochs = sweep, total, epochs
        self.metric = metric
        self.out = out or sys.stdout
        self.refresh_s = refresh_s
        self.drain_s = drain_s
        self.clock = clock
        self.started = clock()
        self.last_print = -math.inf
        self.rows: dict[str, LiveTrial] = {}
        self.epochs_run = 0  # epochs the trials reported since `started` (this session)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment (--resume restores them)."""
        return {k: v for k, v in self.__dict__.items() if k != "out"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A resumed sweep: this process' terminal and clock, and no epoch run yet."""
        self.__dict__.update(state)
        self.out = sys.stdout
        self.started, self.last_print, self.epochs_run = self.clock(), -math.inf, 0

    # -- events

    def _row(self, trial_id: str, name: str, epochs: int | None = None) -> LiveTrial:
        row = self.rows.get(trial_id)
        if row is None:
            row = self.rows[trial_id] = LiveTrial(name or trial_id, epochs or self.epochs)
        return row

    def on_start(self, trial_id: str, name: str, epochs: int | None = None) -> None:
        self._row(trial_id, name, epochs).state = "RUNNING"

    def on_result(self, trial_id: str, name: str, metrics: Mapping[str, Any]) -> None:
        """A trial reported an epoch it has just run."""
        row = self._row(trial_id, name)
        self._take(row, metrics)
        row.state = "RUNNING"
        self.epochs_run += 1

    def _take(self, row: LiveTrial, metrics: Mapping[str, Any]) -> None:
        row.epoch = int(metrics.get("epoch", row.epoch))
        accuracy = metrics.get(self.metric)
        if _is_score(accuracy):
            row.score = float(accuracy)

    def on_complete(self, trial_id: str, name: str) -> None:
        row = self._row(trial_id, name)
        row.state = "DONE" if row.epoch >= row.epochs else "STOPPED"

    def on_error(self, trial_id: str, name: str) -> None:
        self._row(trial_id, name).state = "FAILED"

    def on_restored(
        self, trial_id: str, name: str, epochs: int, metrics: Mapping[str, Any], ended: str
    ) -> None:
        """A trial that a resumed sweep brings back: its last metrics, and how it ended ('DONE'
        or 'FAILED'; '' while it is still to run). Tune starts only the unfinished ones."""
        row = self.rows.get(trial_id)
        if row is None:
            row = self._row(trial_id, name, epochs)
            self._take(row, metrics)  # run in an earlier session: not this session's pace
        elif not ended and row.state == "RUNNING":
            row.state = "PENDING"  # stopped with the sweep: waits to restart
        if ended and row.state in ("PENDING", "RUNNING"):
            (self.on_error if ended == "FAILED" else self.on_complete)(trial_id, name)

    def best(self) -> LiveTrial | None:
        """The best trial so far (best_of)."""
        return best_of((r, r.score, r.epoch >= r.epochs) for r in self.rows.values())

    # -- rendering

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for row in self.rows.values():
            counts[row.state] += 1
        counts["PENDING"] += max(0, self.total - len(self.rows))
        return counts

    def remaining_s(self, elapsed: float) -> float | None:
        """An upper bound (ASHA may stop trials sooner): epochs left / the epochs per second
        this session has run (a resumed sweep's earlier epochs took another session's time)."""
        done = self.epochs_run
        if done == 0 or elapsed <= 0:
            return None
        left = sum(row.epochs - row.epoch for row in self.rows.values() if row.state == "RUNNING")
        left += self.counts()["PENDING"] * self.epochs
        return left / (done / elapsed)

    def summary_line(self) -> str:
        counts = self.counts()
        elapsed = self.clock() - self.started
        remaining = self.remaining_s(elapsed)
        top = self.best()
        best = f"best {top.score:.2f}% ({top.name})" if top else "best -"
        left = f", at most ~{duration(remaining)} left" if remaining is not None else ""
        return (
            f"[tfkd] {self.sweep}: {counts['DONE']} done, {counts['RUNNING']} running, "
            f"{counts['STOPPED']} stopped, {counts['FAILED']} failed, {counts['PENDING']} pending "
            f"of {self.total} | {best} | {duration(elapsed)} elapsed{left}"
        )

    def render(self) -> str:
        """The summary line and the table: every trial of a sweep of up to FULL_TABLE_TRIALS,
        a bounded selection of a larger one (`_selection`)."""
        if max(self.total, len(self.rows)) <= FULL_TABLE_TRIALS:
            return self._table(list(self.rows.values()))
        return self._table(self._selection())

    def _table(self, entries: list[LiveTrial | str]) -> str:
        """The summary line, the header, then a row per trial and each note as its own line."""
        trials = [entry for entry in entries if isinstance(entry, LiveTrial)]
        width = max([5, *(len(row.name) for row in trials)])
        label = COLUMN_LABELS.get(self.metric, self.metric)
        lines = [self.summary_line(), f"  {'trial':<{width}}  {'epoch':>7}  {label:>7}  state"]
        for entry in entries:
            lines.append(f"  {entry}" if isinstance(entry, str) else _table_row(entry, width))
        return "\n".join(lines)

    def _selection(self) -> list[LiveTrial | str]:
        """A large sweep's rows: the TOP_ROWS best (the first is the summary's best), the
        RUNNING_ROWS running trials with the most epochs and FAILED_ROWS failed ones not among
        them, each with how many more there are, then how many trials of the other states
        are not shown. Linear in the trials, but for the bounded sorts."""
        rows = list(self.rows.values())
        top = top_of(((r, r.score, r.epoch >= r.epochs) for r in rows), TOP_ROWS)
        shown = {id(row) for row in top}
        running = [r for r in rows if r.state == "RUNNING" and id(r) not in shown]
        failed = [r for r in rows if r.state == "FAILED" and id(r) not in shown]
        furthest = heapq.nlargest(RUNNING_ROWS, running, key=lambda r: r.epoch)
        entries: list[LiveTrial | str] = [*top, *furthest, *_more(running, furthest, "running")]
        entries += [*failed[:FAILED_ROWS], *_more(failed, failed[:FAILED_ROWS], "failed")]
        shown |= {id(row) for row in (*furthest, *failed[:FAILED_ROWS])}
        hidden = {state: 0 for state in STATES if state not in ("RUNNING", "FAILED")}
        for row in rows:
            if id(row) not in shown and row.state in hidden:
                hidden[row.state] += 1
        left_out = ", ".join(f"{n} {state.lower()}" for state, n in hidden.items() if n)
        return [*entries, *([f"... not shown: {left_out}"] if left_out else [])]

    def maybe_print(self) -> None:
        """Print the table when `refresh_s` has passed since the last time."""
        if self.rows and self.clock() - self.last_print >= self.refresh_s:
            self.print()

    def finish(self) -> None:
        """The final table, after the trials' last forwarded lines."""
        if self.drain_s:
            time.sleep(self.drain_s)
        self.print()

    def print(self) -> None:
        self.last_print = self.clock()
        print(self.render(), file=self.out, flush=True)


def _table_row(row: LiveTrial, width: int) -> str:
    accuracy = f"{row.score:6.2f}%" if row.score is not None else "-"
    epoch = f"{row.epoch}/{row.epochs}"
    return f"  {row.name:<{width}}  {epoch:>7}  {accuracy:>7}  {row.state}"


def _more(every: list[LiveTrial], shown: list[LiveTrial], state: str) -> list[str]:
    """'... and 3 more running' when `shown` is not `every` trial of `state`; else nothing."""
    more = len(every) - len(shown)
    return [f"... and {more} more {state}"] if more > 0 else []
