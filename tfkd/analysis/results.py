"""The results of reproductions: their MLflow tags, one row per reproduced config and protocol with
its seeds' statistics (mean and 95% t interval of test accuracy, ECE and NLL), the paired
comparison with the baseline of the same dataset, model, schedule and protocol (analysis.stats),
checks that a row is what its mode says, its compute (analysis.compute), the paper's number
(paper-protocol rows only: like for like), the same config under the other protocol, and the
markdown table.

analysis.reproduce writes runs with these tags and prints their table; analysis.report reads them
back, adds what each row's sweep and teacher cost, and the plots. Both import this module;
neither imports the other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tfkd.analysis import compute, paper, stats
from tfkd.analysis.common import config_hash, typed_config
from tfkd.core import protocol as protocols

RANK_TAG, HASH_TAG, SWEEP_RUN_TAG = "config_rank", "config_hash", "sweep_run_id"
SWEEP_TAG, TEACHER_TAG = "sweep", "sweep_teacher"
BASELINE_MODE = "baseline"
COLUMNS = [
    "dataset",
    "model",
    "mode",
    "teacher",
    "rank",
    "epochs",
    "protocol",
    "seeds",
    "seed_list",
    "test_acc_mean",
    "test_acc_std",
    "ci_low",
    "ci_high",
    "ece",
    "ece_ci_low",
    "ece_ci_high",
    "nll",
    "nll_ci_low",
    "nll_ci_high",
    "final_test_acc_mean",
    "val_acc_mean",
    "vs_baseline",
    "vs_baseline_ci_low",
    "vs_baseline_ci_high",
    "paired_seeds",
    "p_value",
    "p_holm",
    "p_gain",
    "verdict",
    "sanity",
    *compute.COLUMNS,
    "paper_acc",
    "paper_std",
    "paper_table",
    "paper_baseline",
    "diff_vs_paper",
    "diff_vs_holdout",
    "sweep",
    "experiment",
    "config_hash",
]
PER_SEED = "_per_seed"  # a row's {seed: test accuracy}, for pairing; not a column


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
    test_nll: float = math.nan
    sweep_run_id: str = ""


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
        test_nll=float(metrics.get("test_nll", math.nan)),
        sweep_run_id=tags.get(SWEEP_RUN_TAG, ""),
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


def interval_columns(name: str, values: Sequence[float]) -> dict[str, float]:
    """`name`, `name_ci_low`, `name_ci_high`: the mean over seeds and its 95% t interval."""
    interval = stats.t_interval(values)
    return {name: interval.mean, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}


NO_COMPARISON = {
    "vs_baseline": math.nan,
    "vs_baseline_ci_low": math.nan,
    "vs_baseline_ci_high": math.nan,
    "paired_seeds": 0,
    "p_value": math.nan,
    "p_holm": math.nan,
    "p_gain": math.nan,
    "verdict": "",
}


def table_row(
    group: Sequence[Reproduction], facts: compute.SweepFacts | None = None
) -> dict[str, Any]:
    """One config's seeds under one protocol summarised, with its sweep's facts (compute,
    teacher) and the paper's number for the row."""
    first = group[0]
    accuracies = [r.test_accuracy for r in group]
    accuracy = stats.t_interval(accuracies)
    return {
        "dataset": first.dataset,
        "model": first.model,
        "mode": first.mode,
        "teacher": first.teacher,
        "rank": first.rank,
        "epochs": first.epochs,
        "protocol": first.protocol,
        "seeds": len({r.seed for r in group}),
        "seed_list": ",".join(str(s) for s in sorted({r.seed for r in group})),
        "test_acc_mean": accuracy.mean,
        "test_acc_std": _std(accuracies),
        "ci_low": accuracy.low,
        "ci_high": accuracy.high,
        **interval_columns("ece", [r.test_ece for r in group]),
        **interval_columns("nll", [r.test_nll for r in group]),
        "final_test_acc_mean": _mean([r.final_test_accuracy for r in group]),
        "val_acc_mean": _mean([r.val_accuracy for r in group if not math.isnan(r.val_accuracy)]),
        **NO_COMPARISON,
        "sanity": "",
        **(facts.columns() if facts else compute.NO_FACTS),
        **paper_columns(first, accuracy.mean),
        "diff_vs_holdout": math.nan,
        "sweep": first.sweep,
        "experiment": first.experiment,
        "config_hash": first.config_hash,
        PER_SEED: {r.seed: r.test_accuracy for r in group},
    }


def compare_with_baseline(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The paired difference of test accuracy to the baseline over the seeds both rows have:
    its mean, 95% CI, the paired t-test's p-value and P(gain > 0) (analysis.stats). The
    verdict waits for Holm's correction across the report's rows (`with_verdicts`)."""
    difference = stats.paired_difference(row[PER_SEED], baseline[PER_SEED])
    return {
        "vs_baseline": difference.interval.mean,
        "vs_baseline_ci_low": difference.interval.low,
        "vs_baseline_ci_high": difference.interval.high,
        "paired_seeds": difference.interval.n,
        "p_value": difference.p_value,
        "p_gain": difference.p_gain,
        "_difference": difference,
    }


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
    """Each non-baseline row paired with the baseline row of the same dataset, model, schedule
    and protocol (none where there is no such baseline), and checked against it (`sanity`)."""
    baselines = baseline_rows(rows)
    out = []
    for row in rows:
        base = baselines.get(comparable(row))
        if base is None or row["mode"] == BASELINE_MODE:
            out.append(dict(row))
            continue
        compared = {**row, **compare_with_baseline(row, base)}
        out.append({**compared, "sanity": "; ".join(sanity_problems(compared, base))})
    return out


def with_verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm's correction over the p-values of all compared rows, then each row's verdict."""
    adjusted = stats.holm([row["p_value"] for row in rows])
    out = []
    for row, p_holm in zip(rows, adjusted, strict=True):
        difference = row.get("_difference")
        if difference is None:
            out.append(dict(row))
            continue
        out.append({**row, "p_holm": p_holm, "verdict": stats.verdict(difference, p_holm)})
    return out


# ---------------------------------------------------------------- is a row what its mode says?

CHANCE_MARGIN = 5.0  # points above 100/K within which a teacher is at chance


def _student_accuracy(baseline: Mapping[str, Any]) -> float:
    """The baseline's accuracy on the split a teacher is measured on (validation, else test)."""
    val = baseline["val_acc_mean"]
    return baseline["test_acc_mean"] if pd.isna(val) else val


def weaker_teacher(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> str | None:
    """rekd (reversed KD) needs a teacher weaker than its student."""
    teacher, student = row["teacher_acc"], _student_accuracy(baseline)
    if pd.isna(teacher) or pd.isna(student) or teacher < student:
        return None
    return (
        f"not reversed KD: its teacher ({teacher:.2f}% val) is not weaker than the student's "
        f"baseline ({student:.2f}%), so this row is ordinary KD"
    )


def teacher_above_chance(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> str | None:
    """dekd (defective KD) needs a poorly trained teacher, not a random one."""
    teacher, classes = row["teacher_acc"], row["num_classes"]
    if pd.isna(teacher) or pd.isna(classes):
        return None
    chance = 100.0 / classes
    if teacher > chance + CHANCE_MARGIN:
        return None
    return (
        f"teacher at chance: {teacher:.2f}% val with {int(classes)} classes (chance "
        f"{chance:.1f}%), a random teacher rather than a defective one"
    )


def equal_budget(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> str | None:
    """A row and its baseline are compared as tuned at the same budget of search trial-epochs."""
    mine, theirs = row["search_trial_epochs"], baseline["search_trial_epochs"]
    if pd.isna(mine) or pd.isna(theirs) or mine == theirs:
        return None
    return f"not an equal budget: searched with {mine:.0f} trial-epochs, its baseline {theirs:.0f}"


RowCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], "str | None"]
MODE_CHECKS: dict[str, tuple[RowCheck, ...]] = {
    "rekd": (weaker_teacher,),
    "dekd": (teacher_above_chance,),
}
EVERY_ROW_CHECKS: tuple[RowCheck, ...] = (equal_budget,)
NEEDS_CLASSES = {"dekd"}  # modes whose check reads the teacher's number of classes


def sanity_problems(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """What makes a row not what its mode says, or its comparison unequal."""
    checks = MODE_CHECKS.get(row["mode"], ()) + EVERY_ROW_CHECKS
    return [problem for check in checks if (problem := check(row, baseline))]


def results_table(
    runs: Sequence[Reproduction], facts: Mapping[str, compute.SweepFacts] | None = None
) -> pd.DataFrame:
    """A row per (experiment, sweep, config): its seeds' test accuracy, ECE and NLL, the paired
    difference to the baseline, the row's compute (with `facts`: {sweep run id: its facts}),
    and the paper's number."""
    facts = facts or {}
    groups: dict[tuple[str, str, str], list[Reproduction]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.sweep, run.config_hash), []).append(run)
    rows = [
        table_row(sorted(g, key=lambda r: r.seed), facts.get(g[0].sweep_run_id))
        for g in groups.values()
    ]
    rows = with_protocol_difference(with_verdicts(with_baseline_comparison(rows)))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(
        ["dataset", "model", "mode", "teacher", "rank", "sweep", "epochs", "protocol"],
        ignore_index=True,
    )


def _number(value: float, digits: int = 2, sign: bool = False) -> str:
    if pd.isna(value):
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _with_interval(row: pd.Series, mean: str, prefix: str, sign: bool = False) -> str:
    """'mean [low, high]' of column `mean` and its bounds `<prefix>ci_low`, `<prefix>ci_high`
    (just the mean where there are none)."""
    if pd.isna(row[mean]):
        return ""
    low, high = row[f"{prefix}ci_low"], row[f"{prefix}ci_high"]
    bounds = "" if pd.isna(low) else f" [{_number(low, sign=sign)}, {_number(high, sign=sign)}]"
    return _number(row[mean], sign=sign) + bounds


def _p_values(row: pd.Series) -> str:
    if pd.isna(row["p_value"]):
        return ""
    return f"{_p(row['p_value'])} ({_p(row['p_holm'])})"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _compute(row: pd.Series) -> str:
    """Trial-epochs (the teacher run's share), training PFLOP, run-hours."""
    if pd.isna(row["trial_epochs"]):
        return ""
    teacher = f" ({row['teacher_epochs']:.0f} teacher)" if row["teacher_epochs"] else ""
    return (
        f"{row['trial_epochs']:.0f}{teacher} ep, {_number(row['compute_pflop'], 3)} PFLOP, "
        f"{row['trial_hours']:.2f} h"
    )


def _paper(row: pd.Series) -> str:
    """The paper's number with its table, and its own gain over its baseline in that table."""
    if pd.isna(row["paper_acc"]):
        return f"several: {row['paper_table']}" if row["paper_table"] else ""
    gain = row["paper_acc"] - row["paper_baseline"]
    vs = "" if pd.isna(gain) else f", {gain:+.2f} vs {row['paper_baseline']:.2f}"
    return f"{row['paper_acc']:.2f} ({row['paper_table']}{vs})"


def _config(row: pd.Series) -> str:
    return f"#{row['rank']}" if row["rank"] else row["config_hash"]


def _teacher(row: pd.Series) -> str:
    """The teacher and, where its sweep measured it, its validation accuracy: what tells an
    rekd teacher (weaker than the student) and a dekd one (defective) from the name alone."""
    accuracy = row.get("teacher_acc", math.nan)
    if not row["teacher"] or pd.isna(accuracy):
        return row["teacher"]
    return f"{row['teacher']} ({accuracy:.2f}% val)"


MARKDOWN_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("dataset", lambda r: r["dataset"]),
    ("model", lambda r: r["model"]),
    ("mode", lambda r: r["mode"]),
    ("teacher", _teacher),
    ("config", _config),
    ("epochs", lambda r: str(r["epochs"])),
    ("protocol", lambda r: r["protocol"]),
    ("seeds", lambda r: str(r["seeds"])),
    ("test acc (%) [95% CI]", lambda r: _with_interval(r, "test_acc_mean", "")),
    ("val acc (%)", lambda r: _number(r["val_acc_mean"])),
    ("ECE (%) [95% CI]", lambda r: _with_interval(r, "ece", "ece_")),
    ("NLL [95% CI]", lambda r: _with_interval(r, "nll", "nll_")),
    ("vs baseline [95% CI]", lambda r: _with_interval(r, "vs_baseline", "vs_baseline_", sign=True)),
    ("P(gain > 0)", lambda r: _number(r["p_gain"], 3)),
    ("p (Holm)", _p_values),
    ("verdict", lambda r: r["verdict"]),
    ("check", lambda r: "flagged: see notes" if r["sanity"] else ""),
    ("compute", _compute),
    ("vs holdout", lambda r: _number(r["diff_vs_holdout"], sign=True)),
    ("paper (%)", _paper),
    ("diff vs paper", lambda r: _number(r["diff_vs_paper"], sign=True)),
]

EXPLANATION = (
    "\nTeacher: with its validation accuracy as its student's sweep measured it. "
    "Test accuracy: the mean over seeds with its 95% t interval, as the row's protocol reports "
    "it: holdout, the weights of the epoch the validation split chose (val acc: its accuracy "
    "there), tested once; paper, trained on the full training set and tested every epoch, the "
    "maximum over epochs (it selects on the test set, as the original did). ECE (15 bins, %) "
    "and NLL (nats) of the tested weights, mean [95% CI] (paper rows: the last epoch's). "
    "Reproductions train seeds no sweep trained, the same seeds for every mode, so a row pairs "
    "with its baseline (the baseline row of the same dataset, model, epochs and protocol) seed "
    "by seed. vs baseline: the mean paired difference over the seeds both have, with its 95% t "
    "interval (n-1 degrees of freedom). P(gain > 0): the posterior probability that the true "
    "mean difference is positive under the paired t model with a flat prior, "
    "1 - T(-mean/se; n-1). p (Holm): the paired t-test's two-sided p-value and, in brackets, "
    "Holm's adjustment across the rows of this report. verdict: 'gain' or 'loss' when the "
    "interval excludes 0 and the Holm-adjusted p is below 0.05 ('..., not after Holm' when only "
    "the unadjusted one is), 'inconclusive' when the interval spans 0. check: a row that is not "
    "what its mode says, or was searched with another budget than its baseline (see the notes). "
    "compute: what finding the row's config cost, its teacher's training included: "
    "trial-epochs of its sweep plus its teacher run's, training PFLOP (3 x forward FLOPs per "
    "32x32 image, plus the teacher's forward, x images x epochs) and the runs' summed hours. "
    "vs holdout: a paper row minus the same config's holdout row, the difference the protocol "
    "makes. paper: the paper's number for the same (dataset, model, mode, teacher), its table "
    "and its gain over the baseline of that table; diff vs paper only for paper-protocol rows "
    "(like for like).\n"
)


def sanity_notes(frame: pd.DataFrame) -> list[str]:
    """One note per flagged row, naming it."""
    return [
        f"{r['dataset']} {r['model']} {r['mode']} {r['teacher']} {_config(r)} {r['protocol']}: "
        f"{r['sanity']}".replace("  ", " ")
        for _, r in frame.iterrows()
        if r["sanity"]
    ]


def markdown(frame: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The table as GitHub Markdown, with the flagged rows and `notes` (plots that could not
    be drawn) below it."""
    header = [name for name, _ in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(row) for _, cell in MARKDOWN_COLUMNS) + " |")
    notes = [*sanity_notes(frame), *notes]
    text = "\n".join(lines) + "\n" + EXPLANATION
    return text + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")


def sweep_facts(
    uri: str, mlflow_client: Any, runs: Sequence[Reproduction]
) -> dict[str, compute.SweepFacts]:
    """{sweep run id: its compute and teacher} of every sweep the reproductions came from; the
    teacher's number of classes only for the modes whose check needs it (a weights download)."""
    needs_classes: dict[str, bool] = {}
    for run in runs:
        needs = needs_classes.get(run.sweep_run_id, False) or run.mode in NEEDS_CLASSES
        needs_classes[run.sweep_run_id] = needs
    return compute.facts_of(uri, mlflow_client, needs_classes)
