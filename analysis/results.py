"""The results of reproductions: their MLflow tags, one row per reproduced config and protocol with
its seeds' statistics, the comparison with the baseline of the same dataset, model, schedule and
protocol, with the paper (paper-protocol rows only: like for like), with the same config under the
other protocol, and the markdown table.

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
from tfkd.core import protocol as protocols

RANK_TAG, HASH_TAG, SWEEP_RUN_TAG = "config_rank", "config_hash", "sweep_run_id"
SWEEP_TAG, TEACHER_TAG = "sweep", "sweep_teacher"
COLUMNS = [
    "dataset",
    "model",
    "mode",
    "teacher",
    "rank",
    "epochs",
    "protocol",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "final_test_acc_mean",
    "val_acc_mean",
    "test_ece_mean",
    "paper_acc",
    "paper_std",
    "paper_table",
    "paper_baseline",
    "diff_vs_paper",
    "diff_vs_holdout",
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
    test_accuracy: float  # what its protocol reports (tfkd.core.protocol: reported_metric)
    test_ece: float
    protocol: str = "holdout"
    final_test_accuracy: float = math.nan  # its test_accuracy metric: the last epoch's (paper)
    val_accuracy: float = math.nan  # the reported epoch's (holdout), nan without a split


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
        test_accuracy=float(metrics[protocols.get(config["protocol"]).reported_metric]),
        test_ece=float(metrics.get("test_ece", math.nan)),
        protocol=config["protocol"],
        final_test_accuracy=float(metrics["test_accuracy"]),
        val_accuracy=float(metrics.get("best_epoch_val_accuracy", math.nan)),
    )


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def paper_columns(first: Reproduction, mean: float) -> dict[str, Any]:
    """The paper's number for the row, its baseline in the same table, and the difference: for
    paper-protocol rows only (like for like). A combination the paper gives in several tables
    has no single number: its tables are named instead."""
    empty = {"paper_acc": math.nan, "paper_std": math.nan, "paper_table": "",
             "paper_baseline": math.nan, "diff_vs_paper": math.nan}  # fmt: skip
    try:
        found = paper.match(first.dataset, first.model, first.mode, first.teacher)
    except paper.AmbiguousRow as exc:
        return {**empty, "paper_table": "/".join(exc.tables)}
    if found is None:
        return empty
    base = paper.match(first.dataset, first.model, BASELINE_MODE, "", table=found.table)
    return {
        "paper_acc": found.accuracy,
        "paper_std": math.nan if found.std is None else found.std,
        "paper_table": found.table,
        "paper_baseline": base.accuracy if base and first.mode != BASELINE_MODE else math.nan,
        "diff_vs_paper": mean - found.accuracy if first.protocol == "paper" else math.nan,
    }


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def table_row(group: Sequence[Reproduction]) -> dict[str, Any]:
    """One config's seeds under one protocol summarised, with the paper's number for the row."""
    first = group[0]
    accuracies = [r.test_accuracy for r in group]
    mean = statistics.fmean(accuracies)
    return {
        "dataset": first.dataset,
        "model": first.model,
        "mode": first.mode,
        "teacher": first.teacher,
        "rank": first.rank,
        "epochs": first.epochs,
        "protocol": first.protocol,
        "seeds": len({r.seed for r in group}),
        "test_acc_mean": mean,
        "test_acc_std": _std(accuracies),
        "final_test_acc_mean": _mean([r.final_test_accuracy for r in group]),
        "val_acc_mean": _mean([r.val_accuracy for r in group if not math.isnan(r.val_accuracy)]),
        "test_ece_mean": statistics.fmean(r.test_ece for r in group),
        **paper_columns(first, mean),
        "diff_vs_holdout": math.nan,
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


def comparable(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a row and its baseline share: dataset, model, schedule (epochs) and protocol."""
    return (row["dataset"], row["model"], row["epochs"], row["protocol"])


def baseline_rows(rows: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per (dataset, model, epochs, protocol), the baseline row to compare with: rank 1 first,
    then most seeds."""
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    ordered = sorted(
        (r for r in rows if r["mode"] == BASELINE_MODE),
        key=lambda r: (str(r["rank"]) != "1", -r["seeds"]),
    )
    for row in ordered:
        chosen.setdefault(comparable(row), row)
    return chosen


def same_config(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A reproduced config whatever its protocol: its sweep, rank and schedule."""
    keys = ("experiment", "sweep", "rank", "dataset", "model", "mode", "teacher", "epochs")
    return tuple(row[k] for k in keys)


def with_protocol_difference(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each paper-protocol row with its mean minus the same config's holdout mean, where the
    same sweep's config was reproduced under both protocols."""
    holdout = {same_config(r): r for r in rows if r["protocol"] == "holdout"}
    out = []
    for row in rows:
        other = holdout.get(same_config(row)) if row["protocol"] == "paper" else None
        diff = row["test_acc_mean"] - other["test_acc_mean"] if other else math.nan
        out.append({**row, "diff_vs_holdout": diff})
    return out


def with_baseline_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-baseline row with its difference to the baseline row of the same dataset,
    model, schedule and protocol (none where there is no such baseline)."""
    baselines = baseline_rows(rows)
    out = []
    for row in rows:
        base = baselines.get(comparable(row))
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
    rows = with_protocol_difference(with_baseline_comparison(rows))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(
        ["dataset", "model", "mode", "teacher", "rank", "sweep", "epochs", "protocol"],
        ignore_index=True,
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


def _paper(row: pd.Series) -> str:
    """The paper's number with its table, and its own gain over its baseline in that table."""
    if pd.isna(row["paper_acc"]):
        return f"several: {row['paper_table']}" if row["paper_table"] else ""
    gain = row["paper_acc"] - row["paper_baseline"]
    vs = "" if pd.isna(gain) else f", {gain:+.2f} vs {row['paper_baseline']:.2f}"
    return f"{row['paper_acc']:.2f} ({row['paper_table']}{vs})"


MARKDOWN_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("dataset", lambda r: r["dataset"]),
    ("model", lambda r: r["model"]),
    ("mode", lambda r: r["mode"]),
    ("teacher", lambda r: r["teacher"]),
    ("config", lambda r: f"#{r['rank']}" if r["rank"] else r["config_hash"]),
    ("epochs", lambda r: str(r["epochs"])),
    ("protocol", lambda r: r["protocol"]),
    ("seeds", lambda r: str(r["seeds"])),
    ("test acc (%)", _accuracy),
    ("val acc (%)", lambda r: _number(r["val_acc_mean"])),
    ("ECE (%)", lambda r: _number(r["test_ece_mean"])),
    ("vs baseline", _vs_baseline),
    ("vs holdout", lambda r: _number(r["diff_vs_holdout"], sign=True)),
    ("paper (%)", _paper),
    ("diff vs paper", lambda r: _number(r["diff_vs_paper"], sign=True)),
]


def markdown(frame: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The table as GitHub Markdown, with notes (plots that could not be drawn) below it."""
    header = [name for name, _ in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(row) for _, cell in MARKDOWN_COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    text += (
        "\nTest accuracy: mean ± sample std over seeds, as the row's protocol reports it: "
        "holdout, the weights of the epoch the validation split chose (val acc: its accuracy "
        "there), tested once; paper, trained on the full training set and tested every epoch, "
        "the maximum over epochs (it selects on the test set, as the original did). vs "
        "baseline: the difference of means to the baseline row of the same dataset, model, "
        "epochs and protocol; 'within the seeds' spread' when it is no larger than "
        "sqrt(std^2 + std_baseline^2), else with Welch's t-test p-value (with 2-3 seeds only a "
        "gap of several spreads is significant). vs holdout: a paper row minus the same "
        "config's holdout row, the difference the protocol makes. paper: the paper's number "
        "for the same (dataset, model, mode, teacher), its table and its gain over the "
        "baseline of that table; diff vs paper only for paper-protocol rows (like for "
        "like).\n"
    )
    return text + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
