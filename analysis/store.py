"""Reading the MLflow layout tfkd writes (see tfkd/tracking.py): sweeps, trials, reproductions.

Every run carries the tag `tfkd.kind`; children point at their parent with `mlflow.parentRunId`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfkd import tracking

SWEEP, TRIAL = "sweep", "trial"
REPRODUCTION_SET, REPRODUCTION = "reproduction-set", "reproduction"
REPORT = "report"
FINISHED = "FINISHED"
PAGE = 1000


def client(uri: str):
    """An MlflowClient, or None for a SQLite store that does not exist yet (nothing to read).

    Opening a missing SQLite file would create an empty database as a side effect.
    """
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    return tracking.mlflow_client(uri)


def experiment_id(mlflow_client: Any, name: str) -> str | None:
    found = mlflow_client.get_experiment_by_name(name) if mlflow_client else None
    if found is None or found.lifecycle_stage != "active":
        return None
    return found.experiment_id


def experiment_ids(mlflow_client: Any) -> list[str]:
    return [e.experiment_id for e in mlflow_client.search_experiments()]


def experiment_name(mlflow_client: Any, experiment: str) -> str:
    return mlflow_client.get_experiment(experiment).name


def search(
    mlflow_client: Any,
    experiments: Iterable[str],
    filter_string: str,
    order_by: list[str] | None = None,
) -> list:
    """All matching runs, page by page (search_runs returns at most one page)."""
    ids = list(experiments)
    if not ids:
        return []
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            ids, filter_string=filter_string, max_results=PAGE, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def kind_filter(
    kind: str, *, status: str | None = None, name: str | None = None, parent: str | None = None
) -> str:
    """An MLflow filter string: runs of one tfkd kind, optionally by status, name and parent."""
    clauses = [f"tags.`{tracking.KIND_TAG}` = '{kind}'"]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    if name:
        clauses.append(f"tags.`mlflow.runName` = '{name}'")
    if parent:
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")
    return " and ".join(clauses)


def runs_of_kind(mlflow_client: Any, experiments: Iterable[str], kind: str, **where: str) -> list:
    """Runs of one kind, newest first."""
    return search(
        mlflow_client,
        experiments,
        kind_filter(kind, **where),
        order_by=["attributes.start_time DESC"],
    )


def run_name(run: Any) -> str:
    return run.data.tags.get("mlflow.runName", run.info.run_name or "")


def metric_history(mlflow_client: Any, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of one metric; tfkd logs per-epoch metrics with step = epoch."""
    return {int(m.step): float(m.value) for m in mlflow_client.get_metric_history(run_id, key)}
