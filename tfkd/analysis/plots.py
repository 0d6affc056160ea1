"""The report's figures, each rendered to PNG bytes (matplotlib's Agg backend, no display).

Functions take plain data (a results table, sweeps, scored points) and know nothing of MLflow, so
the report writes them the same atomic way as its tables.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tfkd.analysis import sweeps  # noqa: E402
from tfkd.analysis.importance import SweepPoints  # noqa: E402
from tfkd.core.words import counted  # noqa: E402
from tfkd.sweep import sweep_files  # noqa: E402

DPI = 110
PANEL = (4.6, 3.4)  # inches per subplot


def png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open figure)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def panels(count: int, columns: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    """A grid of `count` subplots (the unused cells hidden)."""
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(PANEL[0] * cols, PANEL[1] * rows), squeeze=False)
    cells = [ax for row in grid for ax in row]
    for ax in cells[count:]:
        ax.set_visible(False)
    return fig, cells[:count]


def row_label(row: pd.Series) -> str:
    """mode, its teacher, and the config's rank when more than the best one was reproduced."""
    label = row["mode"] + (f"\n{row['teacher']}" if row["teacher"] else "")
    return label + (f" #{row['rank']}" if str(row["rank"]) not in ("", "1") else "")


# ---------------------------------------------------------------- learning curves


def _curve_trial(sweep: sweeps.Sweep) -> sweeps.Trial | None:
    """The trial whose curve stands for the sweep: its best full-schedule one (the one
    sweeps.ranked puts first), else its longest."""
    full = sweeps.full_schedule_trials(sweep)
    if full:
        return sweeps.ranked(sweep, 1)[0]
    ran = [t for t in sweep.trials if t.history]
    return max(ran, key=lambda t: (t.epoch, t.score or 0.0), default=None)


def learning_curves(table: pd.DataFrame, sweep_list: Sequence[sweeps.Sweep]) -> bytes:
    """Per mode: each sweep's best trial's ranking metric per epoch (lines: val_accuracy, or a
    paper sweep's paper_test_accuracy), and the reproductions' test accuracy at their last epoch
    (mean ± std over seeds, squares)."""
    by_mode = sorted(set(table["mode"]) | {s.tags.get("mode", "") for s in sweep_list} - {""})
    fig, axes = panels(len(by_mode))
    for ax, mode in zip(axes, by_mode, strict=True):
        colors: dict[str, Any] = {}
        for sweep in (s for s in sweep_list if s.tags.get("mode") == mode):
            trial = _curve_trial(sweep)
            if trial is not None:
                epochs = sorted(trial.history)
                (line,) = ax.plot(
                    epochs,
                    [trial.history[e] for e in epochs],
                    label=f"{sweep.name} ({sweep.metric})",
                )
                colors[sweep.name] = line.get_color()
        for _, row in table[table["mode"] == mode].iterrows():
            ax.errorbar(
                [row["epochs"]],
                [row["test_acc_mean"]],
                yerr=[0.0 if pd.isna(row["test_acc_std"]) else row["test_acc_std"]],
                fmt="s",
                capsize=3,
                color=colors.get(row["sweep"]),
                label=f"{row['sweep']} #{row['rank']} (test, {counted(row['seeds'], 'seed')})",
            )
        ax.set_title(mode)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: 1, 2, never 1.5
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Learning curves\nlines: each sweep's best trial's ranking metric "
        "(val_accuracy; paper_test_accuracy for a paper sweep)\n"
        "squares: the reproductions' test accuracy",
        fontsize=8,
        wrap=True,  # within the figure, one panel wide or more
    )
    return png(fig)


# ---------------------------------------------------------------- accuracy vs the paper


def accuracy_vs_paper(table: pd.DataFrame) -> bytes:
    """Per (dataset, model): our test accuracy (mean ± std) per mode, the paper's as a marker."""
    groups = list(table.groupby(["dataset", "model"], sort=True))
    fig, axes = panels(len(groups))
    for ax, ((dataset, model), rows) in zip(axes, groups, strict=True):
        xs = range(len(rows))
        stds = rows["test_acc_std"].fillna(0.0)
        bars = ax.bar(
            xs,
            rows["test_acc_mean"],
            yerr=stds,
            capsize=3,
            color="tab:blue",
            alpha=0.8,
            width=0.6,
            label="ours (test, mean ± std)",
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center", color="white")
        has_paper = rows["paper_acc"].notna()
        if has_paper.any():
            ax.scatter(
                [x for x, p in zip(xs, has_paper, strict=True) if p],
                rows.loc[has_paper, "paper_acc"],
                marker="D",
                color="tab:red",
                zorder=3,
                label="paper",
            )
        else:
            ax.set_xlabel("(the paper has no rows for this dataset / model)", fontsize=7)
        ax.set_xticks(list(xs), [row_label(r) for _, r in rows.iterrows()], fontsize=7)
        ax.set_title(f"{dataset} / {model}")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Reproduced test accuracy vs the paper", fontsize=8)
    return png(fig)


# ---------------------------------------------------------------- one sweep


def importance_bars(points: SweepPoints, scores: dict[str, float]) -> bytes:
    """Horizontal bars: Optuna's importance of each searched parameter."""
    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.6))
    ax.barh(names, [scores[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title(
        f"{points.sweep}: hyper-parameter importance\nobjective: {points.label}", fontsize=8
    )
    return png(fig)


def _log_scale(dist: BaseDistribution) -> bool:
    return bool(getattr(dist, "log", False))


def _range(dist: BaseDistribution) -> tuple[float, float]:
    """(low, high) of a searched range (every distribution but a categorical one)."""
    assert isinstance(dist, (FloatDistribution, IntDistribution)), dist
    return dist.low, dist.high


def _numeric_axis(dist: BaseDistribution) -> Callable[[Any], float]:
    low, high = _range(dist)
    if _log_scale(dist):
        low, high = math.log(low), math.log(high)
        return lambda v: (math.log(v) - low) / ((high - low) or 1.0)
    return lambda v: (v - low) / ((high - low) or 1.0)


def _categorical_axis(dist: CategoricalDistribution) -> Callable[[Any], float]:
    n = len(dist.choices)
    return lambda v: dist.choices.index(v) / (n - 1) if n > 1 else 0.5


def axis_scale(dist: BaseDistribution) -> Callable[[Any], float]:
    """Maps a value of the distribution onto [0, 1] (log ranges on a log scale)."""
    if isinstance(dist, CategoricalDistribution):
        return _categorical_axis(dist)
    return _numeric_axis(dist)


def _axis_ticks(dist: BaseDistribution) -> list[tuple[float, str]]:
    if isinstance(dist, CategoricalDistribution):
        scale = axis_scale(dist)
        return [(scale(c), str(c)) for c in dist.choices]
    low, high = _range(dist)
    return [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]


def parallel_coordinates(points: SweepPoints) -> bytes:
    """One line per trial across the searched parameters to its score, coloured by the score;
    dashed: the trial was stopped before the full schedule."""
    names = list(points.distributions)
    scales = [axis_scale(points.distributions[n]) for n in names]
    lines = [
        sweep_files.Line(
            ys=[scale(point.params[n]) for scale, n in zip(scales, names, strict=True)],
            score=point.value,
            dashed=not point.full_schedule,
        )
        for point in points.points
    ]
    shown = [f"{n} (log)" if _log_scale(points.distributions[n]) else n for n in names]
    ticks = {
        label: _axis_ticks(points.distributions[n]) for label, n in zip(shown, names, strict=True)
    }
    title = f"{points.sweep}: {counted(len(points.points), 'trial')}\nscore: {points.label}"
    return sweep_files.parallel_coordinates_png(title, shown, ticks, lines, f"{points.metric} (%)")
