"""A sweep's comparison as files for its MLflow run: the trials table, a parallel-coordinates plot.

Architecture: plain data in, bytes out; nothing here imports Ray or MLflow. tfkd.sweep.summary turns
its Tune results into `TrialRow`s at the end of a sweep and tfkd.tracking logs `files(...)` as
artifacts of the sweep run, so one click on the sweep in the MLflow UI shows every trial's
searched values next to its accuracies.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tfkd.core import protocol
from tfkd.core.words import counted
from tfkd.sweep.search_space import Param
from tfkd.sweep.status import short_number

TABLE_CSV, TABLE_HTML, PARALLEL_PNG = "trials.csv", "trials.html", "parallel_coordinates.png"
ACCURACIES = ("val_accuracy", "test_accuracy")  # every table's; a paper sweep adds its metric
METRIC = protocol.DEFAULT_SWEEP_METRIC  # unless told (a paper sweep: paper_test_accuracy)


@dataclass(frozen=True)
class TrialRow:
    """One trial at its end: its name, searched values and last metrics."""

    name: str
    trial_id: str
    state: str  # DONE, STOPPED (by ASHA) or FAILED
    epoch: int
    val_accuracy: float | None
    test_accuracy: float | None
    values: dict[str, Any] = field(default_factory=dict)
    paper_test_accuracy: float | None = None  # the paper protocol's test maximum so far

    def score(self, metric: str) -> float | None:
        """The value of the metric the sweep ranked on (one of this row's accuracies)."""
        return getattr(self, metric)


def sorted_rows(rows: Sequence[TrialRow], metric: str = METRIC) -> list[TrialRow]:
    """Best score (the sweep's `metric`) first; trials without one last."""
    return sorted(rows, key=lambda r: (r.score(metric) is None, -(r.score(metric) or 0.0)))


def _accuracies(metric: str) -> list[str]:
    return [*ACCURACIES, *([metric] if metric not in ACCURACIES else [])]


def _columns(keys: Sequence[str], metric: str) -> list[str]:
    return ["trial", "trial_id", "state", "epoch", *keys, *_accuracies(metric)]


def _cells(row: TrialRow, keys: Sequence[str], metric: str) -> list[Any]:
    values = [row.values.get(key, "") for key in keys]
    accuracies = [row.score(name) for name in _accuracies(metric)]
    return [row.name, row.trial_id, row.state, row.epoch, *values, *accuracies]


def table_csv(rows: Sequence[TrialRow], keys: Sequence[str], metric: str = METRIC) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_columns(keys, metric))
    for row in sorted_rows(rows, metric):
        writer.writerow(["" if v is None else v for v in _cells(row, keys, metric)])
    return out.getvalue().encode()


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(
    title: str, rows: Sequence[TrialRow], keys: Sequence[str], metric: str = METRIC
) -> bytes:
    """A small self-contained page (MLflow's artifact view renders HTML)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _columns(keys, metric))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_shown(v))}</td>" for v in _cells(row, keys, metric))
        + "</tr>"
        for row in sorted_rows(rows, metric)
    )
    style = (
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>"
        f"<p>{counted(len(rows), 'trial')}, best {html.escape(metric)} first.</p>"
        f"<table><tr>{head}</tr>{body}</table></body></html>"
    )
    return page.encode()


# ---------------------------------------------------------------- parallel coordinates


def _axis(param: Param, values: Sequence[Any]):
    """A function from a searched value to [0, 1] on its axis, and the axis' end labels."""
    if param.distribution == "choice":
        choices = list(param.values)

        def categorical(value: Any) -> float:
            return choices.index(value) / max(1, len(choices) - 1) if value in choices else 0.5

        return categorical, [(categorical(c), str(c)) for c in choices]
    low, high = (float(bound) for bound in param.bounds)
    log = _is_log(param)
    lo, hi = (math.log(low), math.log(high)) if log else (low, high)
    span = (hi - lo) or 1.0

    def numeric(value: Any) -> float:
        x = math.log(float(value)) if log else float(value)
        return (x - lo) / span

    return numeric, [(0.0, short_number(low)), (1.0, short_number(high))]


def _is_log(param: Param) -> bool:
    """A log-scaled axis: a log-uniform searched value (marked '(log)' on the plot)."""
    return param.distribution.startswith("log") and float(param.low or 0) > 0


@dataclass(frozen=True)
class Line:
    """One trial in a parallel-coordinates plot: its position on each axis, in [0, 1], and its
    score; dashed when the trial stopped before the full schedule."""

    ys: Sequence[float]
    score: float
    dashed: bool


def parallel_coordinates_png(
    title: str,
    names: Sequence[str],
    ticks: Mapping[str, Sequence[tuple[float, str]]],
    lines: Sequence[Line],
    score_label: str = "val acc (%)",
) -> bytes:
    """One line per trial across the named axes to its score, coloured by the score (PNG).

    The one drawing of a sweep's trials: the sweep run's plot and analysis.report's both use it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [line.score for line in lines]
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(1.6 * (len(names) + 1) + 1.5, 4))
    for line in sorted(lines, key=lambda item: item.score):
        shade = (line.score - low) / span
        ax.plot(
            range(len(names) + 1),
            [*line.ys, shade],
            color=cmap(shade),
            linestyle="--" if line.dashed else "-",
            marker="o",
            markersize=3,
            alpha=0.85,
        )
    for x, name in enumerate(names):
        ax.axvline(x, color="0.6", linewidth=0.8)
        for y, text in ticks[name]:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 0), fontsize=7)
    ax.axvline(len(names), color="0.6", linewidth=0.8)
    scale = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, low + span))
    fig.colorbar(scale, ax=ax, pad=0.02).set_label(score_label, fontsize=8)
    ax.set_xticks(range(len(names) + 1), [*names, score_label], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) + 0.6)
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def parallel_plot(
    title: str,
    rows: Sequence[TrialRow],
    params: Mapping[str, Param],
    epochs: int,
    metric: str = METRIC,
) -> bytes | None:
    """The sweep's trials across the searched values to their score, the sweep's `metric` (PNG);
    dashed: stopped early. None when nothing was searched or no trial reported the metric."""
    scored = [(row, score) for row in rows if (score := row.score(metric)) is not None]
    if not params or not scored:
        return None
    names = list(params)
    axes = {n: _axis(params[n], [row.values.get(n) for row, _ in scored]) for n in names}
    shown = [f"{n} (log)" if _is_log(params[n]) else n for n in names]
    lines = [
        Line(
            ys=[axes[n][0](row.values[n]) if n in row.values else 0.5 for n in names],
            score=score,
            dashed=row.epoch < epochs,
        )
        for row, score in scored
    ]
    ticks = {label: axes[n][1] for label, n in zip(shown, names, strict=True)}
    title = (
        f"{title}: {counted(len(scored), 'trial')}, each scored at its last epoch "
        f"(of {epochs}; dashed: stopped early)"
    )
    return parallel_coordinates_png(title, shown, ticks, lines, f"{metric} (%)")


def files(
    title: str,
    rows: Sequence[TrialRow],
    params: Mapping[str, Param],
    epochs: int,
    metric: str = METRIC,
) -> dict[str, bytes]:
    """The sweep run's comparison artifacts, ranked on its `metric`: {file name: content}."""
    keys = list(params)
    out = {
        TABLE_CSV: table_csv(rows, keys, metric),
        TABLE_HTML: table_html(title, rows, keys, metric),
    }
    plot = parallel_plot(title, rows, params, epochs, metric)
    if plot is not None:
        out[PARALLEL_PNG] = plot
    return out


def sweep_metrics(rows: Sequence[TrialRow]) -> dict[str, float]:
    """The sweep run's counts (its best accuracies are logged with the best trial)."""
    return {
        "trials": float(len(rows)),
        "failed": float(sum(r.state == "FAILED" for r in rows)),
        "stopped_early": float(sum(r.state == "STOPPED" for r in rows)),
    }
