"""The MLflow store: where runs go, how to reach it, and the queries tfkd and tfkd.analysis make.

MLflow is imported lazily (a sweep without tracking never pays for it). The layout tfkd writes:
every run carries the tag `tfkd.kind` (a sweep, its trials, a reproduction set and its
reproductions, a report); children point at their parent with `mlflow.parentRunId`, and a trial's
run carries its Ray trial id, so a retried or resumed trial finds its run again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfkd.core.errors import UserError

KIND_TAG = "tfkd.kind"
TRIAL_TAG = "tfkd.ray_trial_id"
# A sweep's sessions: the first start is session 1, each --resume the next (on the sweep run).
SESSION_TAG = "tfkd.session"
# On a trial's run: the session whose write last set its status (an older one's "open" that
# arrives late never re-opens a run its own session has closed).
STATUS_SESSION_TAG = "tfkd.status_session"
# On a sweep run, one per trial: how the driver saw the trial end ({"status", "stopped_early",
# "session"} as JSON), so a trial's run created after the driver's word still ends as it says.
VERDICT_PREFIX = "tfkd.trial_end."
# the kinds of run (values of KIND_TAG)
SWEEP, TRIAL = "sweep", "trial"
REPRODUCTION_SET, REPRODUCTION = "reproduction-set", "reproduction"
REPORT = "report"
FINISHED = "FINISHED"
PAGE = 1000  # runs per search_runs request
SQLITE = "sqlite:///"
# MLflow 3 marks an experiment's kind with this tag; "custom_model_development" is a training
# experiment, whose page is its runs table (the GenAI overview otherwise).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI reads the GenAI / Model training switch from the page address before the
# experiment's kind (and from the browser's last choice without it): links tfkd prints carry it.
TRAINING_VIEW = "?workflowType=machine_learning"


def import_mlflow():
    """The mlflow package, imported on first use: a sweep without tracking never pays for it."""
    import mlflow

    return mlflow


def _quiet() -> None:
    """MLflow and alembic log INFO lines (database creation, migrations) to stderr."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# MLflow's client prints "View run ... / View experiment ..." to stdout whenever it ends a run on
# a server; tfkd prints its own link once, where the sweep's comparison is
SILENT_CLIENT_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def mlflow_client(uri: str):
    """An MlflowClient for `uri`, with MLflow's and alembic's chatter silenced."""
    mlflow = import_mlflow()  # before _quiet: importing mlflow configures its loggers
    _quiet()
    for name, value in SILENT_CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    return mlflow.MlflowClient(tracking_uri=uri)


def client(uri: str):
    """An MlflowClient, or None for a SQLite store that does not exist yet (nothing to read).

    Opening a missing SQLite file would create an empty database as a side effect.
    """
    if uri.startswith(SQLITE) and not Path(uri.removeprefix(SQLITE)).is_file():
        return None
    return mlflow_client(uri)


# ---------------------------------------------------------------- where runs go


def resolve_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory.

    Local paths become absolute URIs: trials run in other working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith(SQLITE) and not uri.startswith("sqlite:////"):
        return SQLITE + str(Path(uri.removeprefix(SQLITE)).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health_status(uri: str, timeout: float) -> int:
    """The HTTP status a tracking server's /health answers with."""
    with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
        return response.status


def check_location(uri: str, timeout: float = 5.0) -> None:
    """Where a sweep's runs go must take them, checked before anything starts: a server must
    answer /health; a local store (SQLite, a folder) must be writable where it is or would be
    created. Checks only: nothing is created (a refused command leaves no database behind)."""
    if uri.startswith(SQLITE):
        _check_writable_file(Path(uri.removeprefix(SQLITE)), uri)
    elif uri.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
        _check_writable_folder(folder, uri)
    check_reachable(uri, timeout)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer /health before anything reads or writes it (local stores
    are always there)."""
    if not is_server(uri):
        return
    try:
        if _health_status(uri, timeout) == 200:
            return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it "
            f"(mlflow server --host 127.0.0.1 --port PORT) or fix --mlflow-uri / "
            f"MLFLOW_TRACKING_URI"
        ) from None
    raise UserError(f"MLflow tracking server {uri} answered /health with an error")


def _unwritable(uri: str, where: Path, why: str) -> UserError:
    return UserError(
        f"MLflow store {uri}: cannot write {where} ({why}); choose a writable location with "
        "--mlflow-uri sqlite:///PATH/mlflow.db (or MLFLOW_TRACKING_URI)"
    )


def _check_writable_file(database: Path, uri: str) -> None:
    """A SQLite database (and the journal SQLite writes beside it) can be written."""
    if database.exists():
        if not database.is_file():
            raise _unwritable(uri, database, "not a file")
        try:
            with open(database, "r+b"):  # opened for writing, nothing written
                pass
        except OSError as exc:
            raise _unwritable(uri, database, exc.strerror or str(exc)) from None
    _check_writable_folder(database.parent, uri)


def _check_writable_folder(folder: Path, uri: str) -> None:
    """The folder (or the nearest existing folder it would be created in) takes files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _unwritable(uri, folder, f"{existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):  # removed as it closes
            pass
    except OSError as exc:
        raise _unwritable(uri, existing, exc.strerror or str(exc)) from None


def reachable(uri: str) -> bool:
    """A tracking server answers /health; a SQLite store can be written (a database that became
    unwritable is an outage: its writes wait, they are not refused); other stores are there."""
    if uri.startswith(SQLITE):
        try:
            _check_writable_file(Path(uri.removeprefix(SQLITE)), uri)
        except UserError:
            return False
        return True
    if not is_server(uri):
        return True
    try:
        return _health_status(uri, timeout=2) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# what SQLite says when another writer holds the database past its busy timeout: the store is
# busy, not refusing (MLflow passes the driver's message on in its own exception's text)
TRANSIENT_MARKERS = ("database is locked", "database is busy", "database table is locked")


def is_transient(error: BaseException) -> bool:
    """Whether a failed write would go through if tried again: the store was busy."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if any(marker in str(cause).lower() for marker in TRANSIENT_MARKERS):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _initialise_sqlite(database: Path) -> None:
    """Create (or migrate) the store's tables under an exclusive lock on the database's folder
    (a lock on the folder itself leaves no lock file behind)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
        mlflow_client(f"{SQLITE}{database}").search_experiments(max_results=1)
    finally:
        os.close(folder)


def _artifact_root(uri: str) -> str | None:
    """Local backends keep artifacts beside the database, not in the trial's folder."""
    if uri.startswith(SQLITE):
        return (Path(uri.removeprefix(SQLITE)).parent / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if needed (a new SQLite store is created first, once:
    concurrent sweeps creating the same database would otherwise race on its tables)."""
    if uri.startswith(SQLITE):
        _initialise_sqlite(Path(uri.removeprefix(SQLITE)))
    store_client = mlflow_client(uri)
    found = store_client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # made before tfkd marked them
            store_client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return found.experiment_id
    try:
        return store_client.create_experiment(
            name,
            artifact_location=_artifact_root(uri),
            tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},
        )
    except Exception:  # a concurrent sweep created it first
        found = store_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def ui_link(uri: str, experiment_id: str, run_id: str = "", artifact: str = "") -> str:
    """Where MLflow's UI shows an experiment's runs, a run, or one of its artifacts, on the
    training side of MLflow 3's GenAI / Model training switch (`TRAINING_VIEW`). For a store
    without a server, the part after `mlflow ui`'s address."""
    page = f"#/experiments/{experiment_id}/runs"
    page += f"/{run_id}" if run_id else ""
    page += f"/artifacts/{artifact}" if run_id and artifact else ""
    base = uri.rstrip("/") + "/" if uri.startswith(("http://", "https://")) else ""
    return f"{base}{page}{TRAINING_VIEW}"


def git_commit() -> str:
    """The commit of the checkout tfkd runs from ("" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------- queries


def experiment_id(mlflow_client: Any, name: str) -> str | None:
    """The id of the active experiment `name` (None without one, or without a store)."""
    found = mlflow_client.get_experiment_by_name(name) if mlflow_client else None
    if found is None or found.lifecycle_stage != "active":
        return None
    return found.experiment_id


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
    clauses = [f"tags.`{KIND_TAG}` = '{kind}'"]
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


def newest_run_named(mlflow_client: Any, experiment: str, kind: str, name: str):
    """The newest run of one kind with that run name, or None."""
    runs = mlflow_client.search_runs(
        [experiment],
        filter_string=kind_filter(kind, name=name),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def child_runs(mlflow_client: Any, experiment: str, parent_run_id: str) -> list:
    """The runs under a parent run (a sweep's trials)."""
    return mlflow_client.search_runs(
        [experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=5000,
    )


def trial_run(mlflow_client: Any, experiment: str, parent_run_id: str, trial_id: str):
    """The run of one Ray trial under its sweep's run, or None."""
    found = mlflow_client.search_runs(
        [experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
        f"and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return found[0] if found else None


def run_name(run: Any) -> str:
    return run.data.tags.get("mlflow.runName", run.info.run_name or "")


def metric_history(mlflow_client: Any, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of one metric; tfkd logs per-epoch metrics with step = epoch."""
    return {int(m.step): float(m.value) for m in mlflow_client.get_metric_history(run_id, key)}
