"""The paper's published accuracies (analysis/paper_results.csv) and how to find a row's number.

Rows are matched by (dataset, model, mode, teacher). Teachers are written differently on the two
sides, so both go through `teacher_key`:

    paper                       tfkd tag               key
    ""  (baseline, tfkd_reg)    ""                     ""
    self (tfkd_self)            resnet18@best          self
    resnet18 (kd, rekd)         resnet18@best          resnet18
    resnet18@epoch1(15.48%)     resnet18@epoch-1       resnet18@epoch-1
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from tfkd.core import modes

PAPER_CSV = Path(__file__).resolve().with_name("paper_results.csv")
SELF = "self"
DEFAULT_ALIASES = ("", "best")  # a bare model name means its best (final) weights
SNAPSHOT = re.compile(r"^epoch-?(\d+)$")


@dataclass(frozen=True)
class PaperRow:
    dataset: str
    model: str
    mode: str
    teacher: str  # as the paper writes it
    accuracy: float
    std: float | None
    table: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return row_key(self.dataset, self.model, self.mode, self.teacher)


def normalise_alias(alias: str) -> str:
    """'epoch1(15.48%)' / 'epoch-1' -> 'epoch-1'; 'best' / '' -> ''; others unchanged."""
    alias = alias.split("(", 1)[0].strip()
    if alias in DEFAULT_ALIASES:
        return ""
    snapshot = SNAPSHOT.match(alias)
    return f"epoch-{int(snapshot.group(1))}" if snapshot else alias


def _mode(name: str) -> modes.Mode | None:
    try:
        return modes.get(name)
    except ValueError:
        return None


def teacher_key(mode: str, teacher: str) -> str:
    """The comparable form of a teacher: 'self', '' (no teacher), 'model' or 'model@epoch-N'."""
    spec = _mode(mode)
    if spec is not None and spec.teacher_is_student:
        return SELF
    if spec is not None and not spec.needs_teacher:
        return ""
    teacher = (teacher or "").strip()
    if teacher == SELF:
        return SELF
    model, _, alias = teacher.partition("@")
    alias = normalise_alias(alias)
    return f"{model}@{alias}" if alias else model


def row_key(dataset: str, model: str, mode: str, teacher: str) -> tuple[str, str, str, str]:
    return (dataset, model, mode, teacher_key(mode, teacher))


def _float_or_none(text: str) -> float | None:
    return float(text) if text.strip() else None


@functools.lru_cache(maxsize=4)
def load(path: Path = PAPER_CSV) -> tuple[PaperRow, ...]:
    """The table's rows in file order ('#' lines are comments)."""
    with open(path, newline="") as handle:
        lines = [line for line in handle if not line.lstrip().startswith("#")]
    return tuple(
        PaperRow(
            dataset=r["dataset"],
            model=r["model"],
            mode=r["mode"],
            teacher=r["teacher"],
            accuracy=float(r["accuracy"]),
            std=_float_or_none(r["std"]),
            table=r["table"],
        )
        for r in csv.DictReader(lines)
    )


def match(
    dataset: str, model: str, mode: str, teacher: str, rows: tuple[PaperRow, ...] | None = None
) -> PaperRow | None:
    """The paper's row for this combination (its first, where the paper repeats one), or None."""
    wanted = row_key(dataset, model, mode, teacher)
    return next((row for row in (rows or load()) if row.key == wanted), None)


def rows_for(dataset: str, rows: tuple[PaperRow, ...] | None = None) -> list[PaperRow]:
    """One row per distinct (model, mode, teacher) of a dataset, in file order."""
    seen: set[tuple[str, str, str, str]] = set()
    out = []
    for row in rows or load():
        if row.dataset == dataset and row.key not in seen:
            seen.add(row.key)
            out.append(row)
    return out
