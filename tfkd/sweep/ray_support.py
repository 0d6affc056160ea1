"""The Ray versions tfkd supports, and a check of the Ray internals it cannot do without.

tfkd uses Ray's public APIs where they exist. Three things have none: ASHA's rungs (saved and
restored across --resume, tfkd.sweep.asha), Optuna's study behind Ray's searcher (to tell it a
stopped trial was pruned, tfkd.sweep.tuner._OptunaSearch), and the thread of a function trainable
(to let a stopped trial end cleanly, tfkd.sweep.trainable). These are private to Ray and may
change in any release, so tfkd checks them before anything starts and names the range it is
tested with instead of failing in the middle of a sweep.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tfkd.core.errors import UserError

# pyproject.toml's bound; the suite runs on TESTED_RAY
SUPPORTED_RAY = ">=2.60,<3"
TESTED_RAY = "2.60"


def _asha_internals() -> bool:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1)
    fields = ("_trial_info", "_brackets", "_num_stopped", "_time_attr", "_max_t")
    return all(hasattr(asha, f) for f in fields) and all(
        hasattr(b, "_rungs") for b in asha._brackets
    )


def _optuna_internals() -> bool:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the sweep sets it: no chatter
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "x": optuna.distributions.FloatDistribution(0.0, 1.0)
    }
    search = OptunaSearch(space=space, metric="m", mode="max")
    return all(hasattr(search, f) for f in ("_ot_trials", "_completed_trials", "_ot_study"))


def _has(module: str, name: str) -> Callable[[], bool]:
    def present() -> bool:
        try:
            return hasattr(importlib.import_module(module), name)
        except ImportError:
            return False

    return present


# what tfkd relies on -> whether this Ray has it
PRIVATE_INTERNALS: dict[str, Callable[[], bool]] = {
    "ASHAScheduler's rungs": _asha_internals,
    "OptunaSearch's study": _optuna_internals,
    "ray.train._internal.session.get_session": _has("ray.train._internal.session", "get_session"),
    "ray.tune.trainable.function_trainable.wrap_function": _has(
        "ray.tune.trainable.function_trainable", "wrap_function"
    ),
}


def check_ray(workers_per_trial: int = 1) -> None:
    """UserError naming the supported range when this Ray lacks what tfkd needs."""
    import ray

    missing = [what for what, present in PRIVATE_INTERNALS.items() if not _safely(present)]
    if missing:
        raise UserError(
            f"Ray {ray.__version__} lacks {', '.join(missing)}, which tfkd needs; install "
            f"ray[tune]{SUPPORTED_RAY} (tested with {TESTED_RAY})"
        )
    if workers_per_trial > 1:
        from tfkd.sweep import distributed

        distributed.check_data_parallel()


def _safely(present: Callable[[], bool]) -> bool:
    try:
        return present()
    except Exception:  # a changed constructor is a missing internal too
        return False
