"""The results of reproductions: their MLflow tags, one row per reproduced config with its seeds'
statistics, the comparison with the baseline of the same dataset and model, and the markdown table.

analysis.reproduce writes runs with these tags and prints their table; analysis.report reads them
back and adds the paper's numbers and plots. Both import this module; neither imports the other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis import paper
from analysis.common import config_hash, typed_config

RANK_TAG, HASH_TAG, SWEEP_RUN_TAG = "config_rank", "config_hash", "sweep_run_id"
SWEEP_TAG, TEACHER_TAG = "sweep", "sweep_teacher"
COLUMNS = [
    "dataset",
    "model",
    "mode",
    "teacher",
    "rank",
    "epochs",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "test_ece_mean",
    "paper_acc",
    "paper_std",
    "paper_table",
    "diff_vs_paper",
    "diff_vs_baseline",
    "diff_spread",
    "p_vs_baseline",
    "vs_baseline",
    "sweep",
    "experiment",
    "config_hash",
]


@dataclass(frozen=True)
class Reproduction:
    """One finished, tested reproduction run."""

    experiment: str
    sweep: str
    config_hash: str
    rank: str
    dataset: str
    model: str
    mode: str
    teacher: str  # the sweep's teacher, e.g. resnet18@epoch-1 ('' without one)
    epochs: int
    seed: int
    test_accuracy: float
    test_ece: float


def reproduction_from_run(run: Any, experiment: str) -> Reproduction:
    tags, metrics = run.data.tags, run.data.metrics
    config = typed_config(run.data.params, f"MLflow run {run.info.run_id}")
    return Reproduction(
        experiment=experiment,
        sweep=tags.get(SWEEP_TAG, experiment),
        config_hash=config_hash(config),
        rank=tags.get(RANK_TAG, ""),
        dataset=config["dataset"],
        model=config["model"],
        mode=config["mode"],
        teacher=tags.get(TEACHER_TAG, tags.get("teacher", "")),
        epochs=int(config["epochs"]),
        seed=int(config["seed"]),
        test_accuracy=float(metrics["test_accuracy"]),
        test_ece=float(metrics.get("test_ece", math.nan)),
    )


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def table_row(group: Sequence[Reproduction]) -> dict[str, Any]:
    """One config's seeds summarised, with the paper's number for the same row."""
    first = group[0]
    accuracies = [r.test_accuracy for r in group]
    mean = statistics.fmean(accuracies)
    found = paper.match(first.dataset, first.model, first.mode, first.teacher)
    return {
        "dataset": first.dataset,
        "model": first.model,
        "mode": first.mode,
        "teacher": first.teacher,
        "rank": first.rank,
        "epochs": first.epochs,
        "seeds": len({r.seed for r in group}),
        "test_acc_mean": mean,
        "test_acc_std": _std(accuracies),
        "test_ece_mean": statistics.fmean(r.test_ece for r in group),
        "paper_acc": found.accuracy if found else math.nan,
        "paper_std": found.std if found and found.std is not None else math.nan,
        "paper_table": found.table if found else "",
        "diff_vs_paper": mean - found.accuracy if found else math.nan,
        "diff_vs_baseline": math.nan,
        "diff_spread": math.nan,
        "p_vs_baseline": math.nan,
        "vs_baseline": "",
        "sweep": first.sweep,
        "experiment": first.experiment,
        "config_hash": first.config_hash,
    }


BASELINE_MODE = "baseline"
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample std and number of seeds of one row's test accuracy."""

    mean: float
    std: float
    n: int


def welch_p(a: SeedStats, b: SeedStats) -> float:
    """Two-sided p-value of Welch's t-test that the two rows' means are equal."""
    from scipy import stats

    if a.std == 0 and b.std == 0:
        return 1.0 if a.mean == b.mean else 0.0
    return float(
        stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False).pvalue
    )


def compare_with_baseline(row: SeedStats, baseline: SeedStats) -> dict[str, Any]:
    """The difference of means, the seeds' spread of a difference and a one-phrase verdict.

    The spread is sqrt(std_row^2 + std_baseline^2): how far apart one run of each typically
    lands by the seed alone. A difference within it is noise, whatever its sign; one beyond it
    is called significant only when Welch's t-test agrees (p < 0.05), which with 2-3 seeds
    needs a gap of several spreads.
    """
    diff = row.mean - baseline.mean
    if row.n < 2 or baseline.n < 2:
        return {"diff_vs_baseline": diff, "vs_baseline": "one seed: no spread"}
    spread = math.hypot(row.std, baseline.std)
    p = welch_p(row, baseline)
    if abs(diff) <= spread:
        verdict = "within the seeds' spread"
    elif p < SIGNIFICANCE:
        verdict = f"beyond the spread, p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}"
    else:
        verdict = f"beyond the spread, not significant (p = {p:.2f})"
    return {
        "diff_vs_baseline": diff,
        "diff_spread": spread,
        "p_vs_baseline": p,
        "vs_baseline": verdict,
    }


def _stats(row: Mapping[str, Any]) -> SeedStats:
    std = row["test_acc_std"]
    return SeedStats(row["test_acc_mean"], 0.0 if pd.isna(std) else std, int(row["seeds"]))


def baseline_rows(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (dataset, model), the baseline row to compare with: rank 1 first, then most seeds."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    ordered = sorted(
        (r for r in rows if r["mode"] == BASELINE_MODE),
        key=lambda r: (str(r["rank"]) != "1", -r["seeds"]),
    )
    for row in ordered:
        chosen.setdefault((row["dataset"], row["model"]), row)
    return chosen


def with_baseline_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-baseline row with its difference to its (dataset, model)'s baseline row."""
    baselines = baseline_rows(rows)
    out = []
    for row in rows:
        base = baselines.get((row["dataset"], row["model"]))
        if base is None or row["mode"] == BASELINE_MODE:
            out.append(dict(row))
            continue
        out.append({**row, **compare_with_baseline(_stats(row), _stats(base))})
    return out


def results_table(runs: Sequence[Reproduction]) -> pd.DataFrame:
    """A row per (experiment, sweep, config): its seeds' test accuracy next to the baseline's
    and the paper's."""
    groups: dict[tuple[str, str, str], list[Reproduction]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.sweep, run.config_hash), []).append(run)
    rows = [table_row(sorted(g, key=lambda r: r.seed)) for g in groups.values()]
    frame = pd.DataFrame(with_baseline_comparison(rows), columns=COLUMNS)
    return frame.sort_values(
        ["dataset", "model", "mode", "teacher", "rank", "sweep"], ignore_index=True
    )


def _number(value: float, digits: int = 2, sign: bool = False) -> str:
    if pd.isna(value):
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _accuracy(row: pd.Series) -> str:
    std = "" if pd.isna(row["test_acc_std"]) else f" ± {row['test_acc_std']:.2f}"
    return f"{row['test_acc_mean']:.2f}{std}"


def _vs_baseline(row: pd.Series) -> str:
    if pd.isna(row["diff_vs_baseline"]):
        return ""
    return f"{row['diff_vs_baseline']:+.2f} ({row['vs_baseline']})"


MARKDOWN_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("dataset", lambda r: r["dataset"]),
    ("model", lambda r: r["model"]),
    ("mode", lambda r: r["mode"]),
    ("teacher", lambda r: r["teacher"]),
    ("config", lambda r: f"#{r['rank']}" if r["rank"] else r["config_hash"]),
    ("epochs", lambda r: str(r["epochs"])),
    ("seeds", lambda r: str(r["seeds"])),
    ("test acc (%)", _accuracy),
    ("ECE (%)", lambda r: _number(r["test_ece_mean"])),
    ("vs baseline", _vs_baseline),
    ("paper (%)", lambda r: _number(r["paper_acc"])),
    ("diff", lambda r: _number(r["diff_vs_paper"], sign=True)),
]


def markdown(frame: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The table as GitHub Markdown, with notes (plots that could not be drawn) below it."""
    header = [name for name, _ in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(row) for _, cell in MARKDOWN_COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    text += (
        "\nTest accuracy: mean ± sample std over seeds, each trained on the full training "
        "set and tested once at the last epoch. vs baseline: the difference of means to the "
        "baseline row of the same dataset and model; 'within the seeds' spread' when it is no "
        "larger than sqrt(std^2 + std_baseline^2), else with Welch's t-test p-value (with 2-3 "
        "seeds only a gap of several spreads is significant). paper: the paper's number for "
        "the same (dataset, model, mode, teacher); empty where it has none.\n"
    )
    return text + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
