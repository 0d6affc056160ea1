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
the schedule").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tfkd.core.config import TrialConfig

DEFAULT_RUNGS = ("after2",)
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
