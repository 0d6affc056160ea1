"""What the driver does as trials start, report and end: retries, interruption, the MLflow runs
trials left open, the status table, and the trials' names.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import tune

from tfkd import tracking
from tfkd.sweep import status as progress
from tfkd.sweep.spec import FAILED_BY_HYPERPARAMETERS, SweepSpec
from tfkd.sweep.storage import GIVEN_CONFIG_KEY

# Set when Ctrl-C interrupted the sweep in this process. Module-level: a resumed Tuner brings
# back its own (unpickled) copy of the callback that sets it.
INTERRUPTED = threading.Event()
TUNE_LOGGER = "ray.tune.tune"  # says "... has been interrupted ..." when a Ctrl-C stopped a run


def _note_tunes_interrupt(record: logging.LogRecord) -> bool:
    if "has been interrupted" in record.getMessage():
        INTERRUPTED.set()
    return True


@contextmanager
def noticing_tunes_interrupt() -> Iterator[None]:
    """While a Tuner runs: a Ctrl-C that Tune's own handler took before SweepCallback.setup
    wrapped it (Tune installs it, then sets up the callbacks) still sets INTERRUPTED, from
    Tune's word that it was interrupted. First among the logger's filters: tfkd's output hides
    that message (tfkd.sweep.status)."""
    logger = logging.getLogger(TUNE_LOGGER)
    logger.filters.insert(0, _note_tunes_interrupt)
    try:
        yield
    finally:
        logger.removeFilter(_note_tunes_interrupt)


class SweepCallback(tune.Callback):
    """The driver's view of the trials: retries, interruption, and MLflow runs left open.

    * A trial whose failure came from its hyper-parameters is not retried.
    * Ctrl-C (SIGINT): Tune stops the sweep gracefully and saves its state; this notices it,
      so the sweep is reported as interrupted (never as a success).
    * Runs whose trial died or was stopped without closing them are closed here.
    """

    def __init__(self, context: tracking.TrackingContext | None) -> None:
        self.context = context

    def setup(
        self,
        stop: tune.Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler):  # Tune installs its own handler only on the main thread
            return

        def notice_interrupt(signum, frame) -> None:
            INTERRUPTED.set()
            tune_handler(signum, frame)

        signal.signal(signal.SIGINT, notice_interrupt)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if FAILED_BY_HYPERPARAMETERS in result:
            trial.max_failures = 0  # retrying the same hyper-parameters fails the same way

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        tracking.close_trial_run(self.context, trial.trial_id, "FAILED")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Tune may end a stopped trial's process before the trial could close its run."""
        if INTERRUPTED.is_set():
            return  # not finished: the sweep marks its run KILLED
        epochs = trial.config.get(GIVEN_CONFIG_KEY, trial.config).get("epochs", 0)
        last = (trial.last_result or {}).get("epoch", 0)
        tracking.close_trial_run(
            self.context, trial.trial_id, "FINISHED", stopped_early=last < epochs
        )


# the sweep run's tag saying how many trials were proposed before the first result
PROPOSED_BEFORE_RESULTS_TAG = "trials_proposed_before_results"


class FirstResultNotice(tune.Callback):
    """Says once, when the first trial ends (run to its end or stopped by ASHA), how many trials
    had been proposed by then: none of them could be proposed from results. The sweep's run
    gets it as a tag. A resumed sweep, whose first result came before, says nothing again.

    Tune proposes trials at the start of a step, before it handles that step's events, so the
    trials it knows when the first one ends are exactly those proposed before any result.
    """

    def __init__(self, spec: SweepSpec, total: int) -> None:
        self.context = spec.tracking
        self.total = total
        self.said = False

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.said:
            return
        self.said = True
        if any(t is not trial and t.status == "TERMINATED" for t in trials):
            return  # results before this one: a resumed sweep said it in its first session
        proposed = len(trials)
        print(
            f"[tfkd] first result: {proposed} of {self.total} trials were proposed before it "
            f"(the preset and space-filling points); the other {max(0, self.total - proposed)} "
            "are proposed from results",
            flush=True,
        )
        tracking.tag_sweep(self.context, {PROPOSED_BEFORE_RESULTS_TAG: proposed})


def trial_dirname(trial) -> str:
    """Short folders (Ray's default folder name lists the whole config)."""
    return f"trial_{trial.trial_id}"


def trial_namer(spec: SweepSpec, configs: list[dict[str, Any]] | None = None):
    """Trials named by what differs between them ('T7.5 a.89 p.98 m7.6 sref'), in the status
    table and in MLflow; given configs by `spec.trial_names`."""
    keys = list(spec.space.params)
    seen: dict[str, int] = {}

    def name(trial) -> str:
        config = trial.config.get(GIVEN_CONFIG_KEY, trial.config)
        if configs and spec.trial_names and config in configs:
            return spec.trial_names[configs.index(config)]
        short = progress.short_name(config, keys) or "trial"
        seen[short] = seen.get(short, 0) + 1
        return short if seen[short] == 1 else f"{short} #{seen[short]}"

    return name


def _epochs_of(trial) -> int:
    return int(trial.config.get(GIVEN_CONFIG_KEY, trial.config).get("epochs", 0))


# Tune's end states of a trial, as the status table names them.
_ENDED = {"TERMINATED": "DONE", "ERROR": "FAILED"}


class ProgressCallback(tune.Callback):
    """Feeds the sweep's status table (tfkd.sweep.status) and prints it, throttled."""

    def __init__(self, status: progress.SweepStatus) -> None:
        self.status = status
        self.stepped = False  # Tune pickles this callback before its first step

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.status.on_start(trial.trial_id, str(trial), _epochs_of(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.status.on_result(trial.trial_id, str(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.status.on_complete(trial.trial_id, str(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.status.on_error(trial.trial_id, str(trial))
        print(f"[tfkd] trial {trial} failed; its error is in {trial.path}/error.txt", flush=True)

    def on_step_begin(self, iteration, trials, **info) -> None:
        """Trials a resumed sweep brought back: Tune starts only the unfinished ones. Before
        the first step of a session every trial is one (the searcher adds new ones after it):
        those that were running when the sweep stopped are shown too, waiting to restart."""
        restored, self.stepped = not self.stepped, True
        for trial in trials:
            ended = _ENDED.get(trial.status, "")
            known = trial.trial_id in self.status.rows
            reported = bool((trial.last_result or {}).get("epoch"))
            if restored or (ended or not known) and (reported or ended):
                self.status.on_restored(
                    trial.trial_id, str(trial), _epochs_of(trial), trial.last_result or {}, ended
                )

    def on_step_end(self, iteration, trials, **info) -> None:
        self.status.maybe_print()

    def on_experiment_end(self, trials, **info) -> None:
        self.status.finish()


def progress_callback(spec: SweepSpec, total: int | None) -> ProgressCallback:
    """The status table of `spec`'s sweep of `total` trials, as a Tune callback."""
    status = progress.SweepStatus(
        spec.name, total or 0, spec.epochs, drain_s=spec.verbose * 2.0, metric=spec.metric
    )
    return ProgressCallback(status)
