"""The paper's published accuracies (analysis/paper_results.csv) and how to find a row's number.

Rows are matched by (dataset, model, mode, teacher), exactly: where the paper gives one
combination in several tables (the GoogLeNet baseline: 78.72 in T5, 78.15 in T9) the caller names
the table, or gets `AmbiguousRow`, never the first row. Teachers are written differently on the
two sides, so both go through `teacher_key`:

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


def _mode(name: str) -> type[modes.Mode] | None:
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


class AmbiguousRow(LookupError):
    """The paper gives this combination in several tables; `tables` says which."""

    def __init__(self, key: tuple[str, ...], tables: tuple[str, ...]) -> None:
        super().__init__(f"the paper gives {'/'.join(key)} in tables {', '.join(tables)}")
        self.tables = tables


def matches(
    dataset: str, model: str, mode: str, teacher: str, rows: tuple[PaperRow, ...] | None = None
) -> list[PaperRow]:
    """Every row of the paper for this combination, in file order (one table each)."""
    wanted = row_key(dataset, model, mode, teacher)
    return [row for row in (rows or load()) if row.key == wanted]


def match(
    dataset: str,
    model: str,
    mode: str,
    teacher: str,
    table: str | None = None,
    rows: tuple[PaperRow, ...] | None = None,
) -> PaperRow | None:
    """The paper's row for this combination (in `table`, when named), or None.

    Raises AmbiguousRow when the paper gives the combination in several tables and `table`
    does not say which.
    """
    found = [
        row
        for row in matches(dataset, model, mode, teacher, rows)
        if table is None or row.table == table
    ]
    if len(found) > 1:
        raise AmbiguousRow(found[0].key, tuple(row.table for row in found))
    return found[0] if found else None


def rows_for(dataset: str, rows: tuple[PaperRow, ...] | None = None) -> list[PaperRow]:
    """One row per distinct (model, mode, teacher) of a dataset, in file order."""
    seen: set[tuple[str, str, str, str]] = set()
    out = []
    for row in rows or load():
        if row.dataset == dataset and row.key not in seen:
            seen.add(row.key)
            out.append(row)
    return out
