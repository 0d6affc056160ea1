"""Optuna samplers for searches whose trials run side by side.

Ray proposes a trial before it starts, so a sweep running N trials at once proposes its first N
before any trial has finished: no model-based sampler can model them. `FirstWaveSampler` makes
those proposals space-filling (scrambled Sobol points, seeded) instead of independent random
draws, and hands over to the model-based sampler (TPE or GP) once results exist.
`small_budget_gamma` is TPE's split into "good" and "bad" trials for budgets of a few dozen.
`CappedGPSampler` keeps a Gaussian-process proposal under a second in sweeps of hundreds of
trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler, QMCSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from tfkd.sweep.spec import GP_HISTORY

# Optuna's cap on TPE's good set (optuna.samplers._tpe.sampler.default_gamma)
GOOD_SET_CAP = 25
# the fewest trials TPE's good set holds once there are enough finished trials to split
GOOD_SET_FLOOR = 2
# a result the model-based sampler can learn from: a trial run to its end or stopped by ASHA
RESULT_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def small_budget_gamma(finished: int) -> int:
    """How many of `finished` trials form TPE's "good" set l(x): Optuna's 10% (capped at 25),
    but at least two once four trials have finished, and never more than half of them.

    With Optuna's default every budget under 11 finished trials has a good set of one trial, so
    l(x) is one kernel around the best trial so far (at first the preset) and TPE proposes
    perturbations of a single point. Two good trials give l(x) a spread along the direction in
    which good trials differ; at most half keeps the bad set g(x) at least as large as l(x), so
    the ratio l/g still separates. From 20 finished trials on this is Optuna's default.
    """
    return min(GOOD_SET_CAP, max(math.ceil(0.1 * finished), min(GOOD_SET_FLOOR, finished // 2)))


def capped_history(trials: Sequence[FrozenTrial], cap: int = GP_HISTORY) -> list[FrozenTrial]:
    """At most `cap` of the finished `trials`, in their order: the best half of the cap (where
    the optimum is) and the most recent others (where the search is now); all when they fit.

    A subset of the data is the standard way to keep a GP's cost bounded; keeping the best
    trials keeps the incumbent and its neighbourhood in the model, so expected improvement is
    still measured against the best result so far.
    """
    if len(trials) <= cap:
        return list(trials)
    best = sorted(range(len(trials)), key=lambda i: trials[i].values[0], reverse=True)
    kept = set(best[: cap // 2])
    recent = [i for i in reversed(range(len(trials))) if i not in kept][: cap - len(kept)]
    return [trials[i] for i in sorted(kept.union(recent))]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch's intra-op work on one thread inside the block, as before after it.

    A GP over at most GP_HISTORY points works on matrices of a few dozen rows: a second thread
    adds only synchronisation, and in a sweep, whose trials keep the other cores busy, it waits
    for them. On the 2-core machine with trials running, 128 proposals of tfkd's GP took 54
    core-seconds with torch's default 2 threads and 21 with one (benchmarks/gp_proposals.py).
    """
    import torch  # the GP's dependency; TPE and random sweeps need not import it here

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CappedGPSampler(GPSampler):
    """Optuna's GP sampler modelling at most GP_HISTORY finished trials (`capped_history`), on
    one torch thread (`one_torch_thread`); for maximised single-objective studies (tfkd's
    sweeps)."""

    def _sample_relative_impl(
        self,
        study: Study,
        completed_trials: list[FrozenTrial],
        running_trials: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        with one_torch_thread():
            return super()._sample_relative_impl(
                study, capped_history(completed_trials), running_trials, search_space
            )


def first_wave_sampler(seed: int) -> QMCSampler:
    """Scrambled Sobol points seeded by --search-seed: a first wave that covers the space evenly
    (in each sampler coordinate: log scale for log-uniform keys)."""
    return QMCSampler(
        qmc_type="sobol",
        scramble=True,
        seed=seed,
        warn_asynchronous_seeding=False,
        warn_independent_sampling=False,
    )


class FirstWaveSampler(BaseSampler):
    """Space-filling points while the study has fewer than `results_needed` results (complete or
    pruned trials), the model-based sampler from then on.

    Each trial is sampled wholly by one of the two, chosen when it is created; the points given
    with points_to_evaluate (the preset) are fixed and take no point of the sequence.
    """

    def __init__(self, model: BaseSampler, seed: int, results_needed: int = 1) -> None:
        self.model = model
        self.first_wave = first_wave_sampler(seed)
        self.results_needed = max(1, results_needed)
        self._picked: dict[int, BaseSampler] = {}

    def sampler_of(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        """The sampler of `trial`, chosen at its first question and kept."""
        if trial.number not in self._picked:
            results = study.get_trials(deepcopy=False, states=RESULT_STATES)
            modelled = len(results) >= self.results_needed
            self._picked[trial.number] = self.model if modelled else self.first_wave
        return self._picked[trial.number]

    def reseed_rng(self) -> None:
        self.model.reseed_rng()
        self.first_wave.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.sampler_of(study, trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler_of(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler_of(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler = self.sampler_of(study, trial)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler_of(study, trial).after_trial(study, trial, state, values)
