"""One results table over all reproductions, compared with the paper, plus plots.

    tfkd report [--experiment NAME ...] [--out DIR]

A row per reproduced config (analysis.results): dataset, model, mode, teacher, seeds, test
accuracy, ECE and NLL (mean and 95% CI over seeds), the paired difference to the baseline of the
same dataset, model, schedule and protocol (`vs_baseline` and its CI, `p_gain` = P(gain > 0),
the paired t-test's p and its Holm adjustment across the report's rows, a `verdict`), a `sanity`
check that the row is what its mode says, its compute with its teacher's (analysis.compute), the
paper's number for the same (dataset, model, mode, teacher) and the difference (empty where the
paper has no such row). Written to --out (default ./reports) as results.md, results.csv and
results.parquet, with learning_curves.png, accuracy_vs_paper.png and, per sweep,
importance_<sweep>.png and parallel_<sweep>.png; printed; and logged as artifacts of a run of
kind "report" in the MLflow experiment "tfkd-reports".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tfkd.analysis import importance, plots, results, sweeps
from tfkd.analysis.common import say, tracking_uri
from tfkd.core.atomic import write_bytes
from tfkd.core.errors import UserError
from tfkd.tracking import store

REPORT_EXPERIMENT = "tfkd-reports"
DEFAULT_OUT = "./reports"
TABLE_NAME = "results"


# ---------------------------------------------------------------- reading the reproductions


def chosen_experiments(mlflow_client: Any, names: Sequence[str], uri: str) -> dict[str, str]:
    """{experiment id: name} of the named experiments (all when none is named)."""
    if mlflow_client is None:
        raise UserError(
            f"no MLflow store at {uri}; run tfkd tune and tfkd reproduce first, or fix --mlflow-uri"
        )
    if not names:
        return {e.experiment_id: e.name for e in mlflow_client.search_experiments()}
    chosen = {}
    for name in names:
        experiment = store.experiment_id(mlflow_client, name)
        if experiment is None:
            raise UserError(f"--experiment {name}: no such MLflow experiment at {uri}")
        chosen[experiment] = name
    return chosen


def reproductions(mlflow_client: Any, experiments: dict[str, str]) -> list[results.Reproduction]:
    found = []
    for experiment, name in experiments.items():
        runs = store.runs_of_kind(
            mlflow_client, [experiment], store.REPRODUCTION, status=store.FINISHED
        )
        found += [
            results.reproduction_from_run(r, name)
            for r in runs
            if "test_accuracy" in r.data.metrics
        ]
    return found


# ---------------------------------------------------------------- the table


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- plots


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def sweep_figures(sweep: sweeps.Sweep) -> tuple[dict[str, bytes], str | None]:
    """parallel_<sweep>.png and importance_<sweep>.png, and a note on what is missing and why."""
    try:
        points = importance.sweep_points(sweep)
    except importance.NotEnoughTrials as exc:
        return {}, f"{sweep.name}: no importance / parallel-coordinates plot: {exc}"
    stem = file_stem(sweep.name)
    files = {f"parallel_{stem}.png": plots.parallel_coordinates(points)}
    try:
        scores = importance.importances(points)
    except importance.NotEnoughTrials as exc:
        return files, f"{sweep.name}: no importance plot: {exc}"
    return {**files, f"importance_{stem}.png": plots.importance_bars(points, scores)}, None


def load_sweeps(mlflow_client: Any, experiments: dict[str, str]) -> list[sweeps.Sweep]:
    parents = store.runs_of_kind(mlflow_client, list(experiments), store.SWEEP)
    return [sweeps.sweep_from_run(mlflow_client, p, with_history=True) for p in parents]


def render(frame: pd.DataFrame, sweep_list: Sequence[sweeps.Sweep]) -> dict[str, bytes]:
    """Every output file's bytes, in memory: nothing is written until all of them exist."""
    figures: dict[str, bytes] = {}
    notes = []
    for sweep in sweep_list:
        files, note = sweep_figures(sweep)
        figures.update(files)
        notes += [note] if note else []
    return {
        f"{TABLE_NAME}.md": results.markdown(frame, notes).encode(),
        f"{TABLE_NAME}.csv": frame.to_csv(index=False).encode(),
        f"{TABLE_NAME}.parquet": parquet_bytes(frame),
        "learning_curves.png": plots.learning_curves(frame, sweep_list),
        "accuracy_vs_paper.png": plots.accuracy_vs_paper(frame),
        **figures,
    }


# ---------------------------------------------------------------- writing


def write_files(out: str, files: dict[str, bytes]) -> list[Path]:
    return [Path(write_bytes(Path(out) / name, data)) for name, data in files.items()]


def log_report(uri: str, experiments: dict[str, str], paths: Sequence[Path]) -> str:
    """A FINISHED MLflow run of kind 'report' holding every output file as an artifact."""
    from tfkd import tracking

    mlflow_client = store.client(uri)
    experiment = tracking.ensure_experiment(uri, REPORT_EXPERIMENT)
    run = mlflow_client.create_run(
        experiment,
        run_name="report",
        tags={
            tracking.KIND_TAG: store.REPORT,
            "experiments": ",".join(sorted(experiments.values()))[:5000],
        },
    )
    try:
        for path in paths:
            mlflow_client.log_artifact(run.info.run_id, str(path))
    except BaseException:
        mlflow_client.set_terminated(run.info.run_id, status="FAILED")
        raise
    mlflow_client.set_terminated(run.info.run_id, status=store.FINISHED)
    return run.info.run_id


def report(args: argparse.Namespace) -> list[Path]:
    """The report `tfkd report`'s flags ask for: written, printed and logged to MLflow; returns
    the files written."""
    uri = tracking_uri(args.mlflow_uri)
    mlflow_client = store.client(uri)
    experiments = chosen_experiments(mlflow_client, args.experiment, uri)
    runs = reproductions(mlflow_client, experiments)
    if not runs:
        where = ", ".join(sorted(experiments.values())) or "any experiment"
        raise UserError(
            f"no finished reproductions in {where} at {uri}; run "
            "tfkd reproduce --experiment NAME first"
        )
    frame = results.results_table(runs, results.sweep_facts(uri, mlflow_client, runs))
    sweep_list = load_sweeps(
        mlflow_client, {e: n for e, n in experiments.items() if n in set(frame["experiment"])}
    )
    files = render(frame, sweep_list)
    paths = write_files(args.out, files)
    run_id = log_report(uri, experiments, paths)
    print(files[f"{TABLE_NAME}.md"].decode())
    say(
        f"{len(frame)} rows from {len(runs)} reproduction runs; {len(paths)} files in "
        f"{args.out}; MLflow run {run_id} in experiment {REPORT_EXPERIMENT!r}"
    )
    return paths
