"""ASHA whose rungs and stop decisions survive --resume.

Ray's `Tuner.restore` brings back the trials, the searcher's state and the callbacks' states,
but rebuilds the scheduler as it was created: an ASHA with empty rungs, which judges the trials
of a resumed sweep against nothing, and lets a trial it had stopped (when the interrupt came
before Tune recorded the stop) train to the end. Here the scheduler's state travels as the state
of a Tune callback (`SchedulerState`), which Tune saves with the experiment and restores before
it re-adds the trials.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class ResumableASHA(ASHAScheduler):
    """ASHAScheduler plus `state()` / `load(state)`, and stop decisions that stay made."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._stopped: set[str] = set()  # trials stopped before their last epoch

    def on_trial_add(self, tune_controller, trial) -> None:
        """A restored trial keeps the bracket it had."""
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self._stopped.add(trial.trial_id)
        return action

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def state(self) -> dict[str, Any]:
        """The rungs (every recorded score per milestone), each trial's bracket, the stops."""
        return {
            "rungs": [[(m, dict(r)) for m, r in b._rungs] for b in self._brackets],
            "brackets": {t: self._brackets.index(b) for t, b in self._trial_info.items()},
            "stopped": sorted(self._stopped),
            "num_stopped": self._num_stopped,
        }

    def load(self, state: dict[str, Any]) -> None:
        for bracket, rungs in zip(self._brackets, state["rungs"], strict=True):
            bracket._rungs = [(m, dict(r)) for m, r in rungs]
        self._trial_info = {t: self._brackets[i] for t, i in state["brackets"].items()}
        self._stopped = set(state["stopped"])
        self._num_stopped = state["num_stopped"]


class ScheduleASHA(ResumableASHA):
    """ASHA whose rungs are given epochs (points of the schedule) instead of grace x 2^k."""

    def __init__(self, rungs: tuple[int, ...], **options: Any) -> None:
        super().__init__(grace_period=rungs[0], brackets=1, **options)
        for bracket in self._brackets:
            bracket._rungs = [(epoch, {}) for epoch in sorted(rungs, reverse=True)]


class SchedulerState(tune.Callback):
    """Carries a `ResumableASHA`'s state in the experiment's saved callback states."""

    def __init__(self, scheduler: ResumableASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return {"asha": self.scheduler.state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load(state["asha"])
