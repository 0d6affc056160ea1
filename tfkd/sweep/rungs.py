"""Where early stopping judges: rungs named by their place on the learning-rate schedule.

ASHA's geometric rungs (grace, 2 grace, 4 grace, ...) ignore the schedule: with the original's
recipe (200 epochs, warm-up 1, lr / 5 after 60, 120 and 160) a grace period of 1 decides every
stop before the first drop, where accuracy ranks how fast a configuration learns rather than
where it ends. A rung named here is a point of the schedule instead, so the same names stop
`--epochs 200` and `--epochs 30` at the same stage of training:

    warmup      the last epoch of the linear warm-up
    beforeN     the last epoch at the rate before drop N (the epoch the drop follows)
    afterN      the first epoch after drop N (one epoch at the lowered rate)

The default is chosen by benchmarks/rung_fidelity.py (docs/performance.md, "Early stopping on
the schedule"), and so is how many trials the default rung keeps (`reduction_factor`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tfkd.core.config import TrialConfig

DEFAULT_RUNGS = ("after2",)
# ASHA keeps the top 1/factor of the trials at each rung: the top half by default...
REDUCTION_FACTOR = 2
# ...and the top quarter at the default rung once a sweep has this many trials (see
# `reduction_factor`): from 32 on, the quarter kept is at least 8 full-length trials, as many as
# the default sweep runs in all, so the search still sees that many final results.
LARGE_SWEEP_TRIALS = 32
LARGE_SWEEP_REDUCTION_FACTOR = 4
_NAME = re.compile(r"^(warmup|before(\d+)|after(\d+))$")


class RungError(ValueError):
    """A rung name is unknown or lies outside the schedule; the message says which."""


def schedule_points(cfg: TrialConfig) -> dict[str, int]:
    """Every named point of `cfg`'s schedule -> the epoch (1-based) it falls on."""
    from tfkd.core import recipe  # torch, only once a schedule is read

    points = {"warmup": max(1, cfg.warmup_epochs)}
    for n, epoch in enumerate(recipe.milestone_epochs(cfg), start=1):
        points[f"before{n}"] = epoch
        points[f"after{n}"] = epoch + 1
    return points


def parse(text: str) -> tuple[str, ...]:
    """'after1,after2' -> ('after1', 'after2'); a malformed name raises RungError."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if not _NAME.match(n)]
    if bad or not names:
        raise RungError(
            f"--rungs {text!r}: expected names like warmup, before1, after1, before2, ... "
            "(comma-separated)"
        )
    return names


def epochs_of(names: Sequence[str], config: Mapping[str, Any]) -> tuple[int, ...]:
    """The rungs' epochs on the schedule of `config`, sorted; a drop it lacks raises RungError.

    A point at or past the last epoch judges nothing (the trial has finished there) and is left
    out, so a schedule too short for the rungs (a 2-epoch smoke test) runs without stopping.
    """
    cfg = TrialConfig.from_dict(config)
    points = schedule_points(cfg)
    missing = [n for n in names if n not in points]
    if missing:
        raise RungError(
            f"--rungs {missing[0]}: the schedule has only {', '.join(points)} "
            f"(lr_milestones {cfg.lr_milestones})"
        )
    return tuple(sorted({points[n] for n in names if points[n] < cfg.epochs}))


def reduction_factor(trials: int, judged_at: Sequence[int], config: Mapping[str, Any]) -> int:
    """ASHA's reduction factor for a sweep of `trials` trials judged at epochs `judged_at`:
    LARGE_SWEEP_REDUCTION_FACTOR (the top quarter continues) when there are LARGE_SWEEP_TRIALS
    or more and ASHA judges at the default rung alone, REDUCTION_FACTOR (the top half) otherwise.

    Why only there: in benchmarks/results/rung_fidelity.json (digits, ResNet-8, 10 epochs, one
    draw of 16 configurations per mode, so provisional) the accuracy at after2 ranks the final
    accuracy with Spearman's rho 0.94 (baseline), 0.87 (lsr), 0.96 (tfkd_reg) and 0.54
    (tfkd_self), and keeping the top quarter there instead of the top half loses nothing more
    in those runs: the best final accuracy among the kept is short of the best by 0, 0, 0 and
    0.69 points either way. Earlier rungs rank far worse (after1: rho 0.23 for lsr, 0.33 for
    tfkd_self), so other rungs, and several rungs (whose factors compound), keep the top half.
    """
    if trials < LARGE_SWEEP_TRIALS or not judged_at:
        return REDUCTION_FACTOR
    try:
        default = epochs_of(DEFAULT_RUNGS, config)
    except RungError:  # a schedule without the default rung's drop
        return REDUCTION_FACTOR
    return LARGE_SWEEP_REDUCTION_FACTOR if tuple(judged_at) == default else REDUCTION_FACTOR
