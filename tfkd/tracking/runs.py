"""MLflow: a parent run per sweep, a child run per trial, teachers as registered models.

The only module of tfkd that imports MLflow. Trials log from inside (so it works when they run on
other nodes against a tracking server); a trial that restarts finds its run id in its checkpoint
and keeps logging into the same run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfkd.core import checkpoint
from tfkd.core.errors import UserError

TEACHER_ARTIFACT = "teacher"
BEST_ARTIFACT = "best_checkpoint"
SNAPSHOT_ARTIFACT = "snapshots"
BEST_ALIAS = "best"
TRIAL_TAG = "tfkd.ray_trial_id"
KIND_TAG = "tfkd.kind"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def _mlflow():
    import mlflow  # imported lazily: a sweep without tracking never pays for it

    return mlflow


def _quiet() -> None:
    """MLflow and alembic log INFO lines (database creation, migrations) to stderr."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_client(uri: str):
    """An MlflowClient for `uri`, with MLflow's and alembic's INFO chatter silenced."""
    from mlflow import MlflowClient

    _quiet()
    return MlflowClient(tracking_uri=uri)


# ---------------------------------------------------------------- where runs go


def resolve_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory.

    Local paths become absolute URIs: trials run in other working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer /health before any trial starts."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it "
            f"(mlflow server --host 127.0.0.1 --port PORT) or fix --mlflow-uri / "
            f"MLFLOW_TRACKING_URI"
        ) from None
    raise UserError(f"MLflow tracking server {uri} answered /health with an error")


def _initialise_sqlite(database: Path) -> None:
    """Create (or migrate) the store's tables under an exclusive lock beside the database."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        mlflow_client(f"sqlite:///{database}").search_experiments(max_results=1)


def _artifact_root(uri: str) -> str | None:
    """Local backends keep artifacts beside the database, not in the trial's folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if needed (a new SQLite store is created first, once:
    concurrent sweeps creating the same database would otherwise race on its tables)."""
    if uri.startswith("sqlite:///"):
        _initialise_sqlite(Path(uri.removeprefix("sqlite:///")))
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:  # MLflow 3's UI opens an experiment on its GenAI overview unless told it trains models
        return client.create_experiment(
            name,
            artifact_location=_artifact_root(uri),
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
    except Exception:  # a concurrent sweep created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_commit() -> str:
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


# ---------------------------------------------------------------- the sweep (parent run)


@dataclass(frozen=True)
class TrackingContext:
    """What a trial needs to log into its sweep; small and picklable (travels to every node)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    registered_model: str = ""  # baseline sweeps register their weights as teachers
    snapshot_epochs: tuple[int, ...] = ()
    child_kind: str = "trial"  # the tfkd.kind tag of the child runs ("reproduction", ...)
    child_tags: tuple[tuple[str, str], ...] = ()  # extra tags of every child run
    outbox_root: str = ""  # local folder for the sweep run's unsent writes (the experiment's)
    system_metrics: bool = False  # each trial logs CPU, memory (and GPU) use as system/...


def registered_model_name(dataset: str, model: str) -> str:
    return f"tfkd-{dataset}-{model}"


def start_sweep(
    uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    register_teachers: bool,
    dataset: str,
    model: str,
    snapshot_epochs: tuple[int, ...] = (),
    resume: bool = False,
    kind: str = "sweep",
    child_kind: str = "trial",
    child_tags: Mapping[str, str] | None = None,
    outbox_root: str = "",
    system_metrics: bool = False,
) -> TrackingContext:
    """Create (or, on --resume, find again) the sweep's parent run."""
    experiment_id = ensure_experiment(uri, experiment)
    client = mlflow_client(uri)
    parent = _find_parent(client, experiment_id, run_name, kind) if resume else None
    if parent is None:
        all_tags = {**tags, "mlflow.runName": run_name, KIND_TAG: kind, "git_commit": git_commit()}
        parent = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={k: str(v) for k, v in all_tags.items() if v != ""},
        )
    else:
        client.update_run(parent.info.run_id, status="RUNNING")
    return TrackingContext(
        uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        registered_model=registered_model_name(dataset, model) if register_teachers else "",
        snapshot_epochs=tuple(snapshot_epochs),
        child_kind=child_kind,
        child_tags=tuple(sorted((child_tags or {}).items())),
        outbox_root=outbox_root,
        system_metrics=system_metrics,
    )


@contextlib.contextmanager
def sweep_run(
    uri: str | None, experiment: str, run_name: str, tags: Mapping[str, str], **options: Any
) -> Iterator[TrackingContext | None]:
    """The parent run of a sweep (or reproduction set) for the duration of a block.

    Yields None when `uri` is None (no tracking). `options` go to `start_sweep`. When the block
    raises (an interrupt, a crash) the run is marked KILLED; otherwise the block has finished it
    (search.run_sweep / run_configs do).
    """
    if uri is None:
        yield None
        return
    context = start_sweep(uri, experiment, run_name, tags, **options)
    try:
        yield context
    except BaseException:
        finish_sweep(context, None, None, status="KILLED")
        raise


def _find_parent(client, experiment_id: str, run_name: str, kind: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = '{kind}' and tags.`mlflow.runName` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def check_new_sweep(uri: str, experiment: str, run_name: str, resume: bool) -> None:
    """A new sweep must not take the name of a sweep run its experiment already has."""
    if resume or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file()):
        return  # a SQLite store that does not exist yet holds no runs (and is not created here)
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None and _find_parent(client, found.experiment_id, run_name, "sweep"):
        raise UserError(
            f"--name {run_name}: MLflow experiment {experiment!r} already has a sweep of that "
            "name; continue it with --resume or choose another --name"
        )


def log_sweep_metrics(context: TrackingContext | None, metrics: Mapping[str, float]) -> None:
    if context is not None:
        _log_metrics(mlflow_client(context.uri), context.parent_run_id, metrics, step=0)


def finish_sweep(
    context: TrackingContext | None,
    best_trial_id: str | None,
    best_metrics: Mapping[str, Any] | None,
    status: str = "FINISHED",
) -> bool:
    """Record the best trial on the parent run, close runs left open, close the parent.

    Sent through the sweep's outbox: False when the tracking server did not take it in time
    (it stays on disk for `replay`).
    """
    if context is None:
        return True
    box = _sweep_box(context)
    best = _numeric(best_of_sweep(best_metrics))
    box.put(
        {
            "op": "finish_sweep",
            "experiment_id": context.experiment_id,
            "best_trial_id": best_trial_id,
            "best_metrics": best,
            "status": status,
        }
    )
    del _SWEEP_BOXES[context.parent_run_id]
    return box.close(SWEEP_FLUSH_SECONDS)


def sweep_outbox(context: TrackingContext) -> Path:
    """Where the sweep run's own writes wait: beside its trials in a local results folder."""
    root = Path(context.outbox_root or Path(tempfile.gettempdir()) / "tfkd-outbox")
    return root / OUTBOX_DIR / context.parent_run_id


_SWEEP_BOXES: dict[str, Outbox] = {}  # parent run id -> the driver's outbox for that sweep


def _sweep_box(context: TrackingContext) -> Outbox:
    """The driver's outbox of a sweep run, opened on first use."""
    box = _SWEEP_BOXES.get(context.parent_run_id)
    if box is None:
        box = Outbox(sweep_outbox(context), context.uri)
        box.put({"op": "use_run", "run_id": context.parent_run_id})
        _SWEEP_BOXES[context.parent_run_id] = box
    return box


SWEEP_METRICS = ("val_accuracy", "test_accuracy")  # of the best trial, as best_<name>


def best_of_sweep(best_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sweep-level metrics of its best trial (not Ray's bookkeeping: pid, iterations...)."""
    metrics = best_metrics or {}
    return {f"best_{k}": metrics[k] for k in SWEEP_METRICS if k in metrics}


def log_sweep_report(
    context: TrackingContext | None, metrics: Mapping[str, float], files: Mapping[str, bytes]
) -> None:
    """The sweep run's counts and its comparison files (trials table, plot) as artifacts.

    Queued in the sweep's outbox, like every write of the driver: sent with finish_sweep.
    """
    if context is None:
        return
    box = _sweep_box(context)
    box.put({"op": "metrics", "step": 0, "metrics": _numeric(metrics)})
    with tempfile.TemporaryDirectory(prefix="tfkd-sweep-report-") as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
            box.put(
                {"op": "artifact", "name": name, "artifact_path": None},
                files={name: Path(folder) / name},
            )


def _children(client, context: TrackingContext) -> list:
    return client.search_runs(
        [context.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{context.parent_run_id}'",
        max_results=5000,
    )


def _trial_run(client, context: TrackingContext, trial_id: str):
    for run in _children(client, context):
        if run.data.tags.get(TRIAL_TAG) == trial_id:
            return run
    return None


def close_trial_run(
    context: TrackingContext | None, trial_id: str, status: str, stopped_early: bool | None = None
) -> None:
    """Close a trial's run that its trial left open (driver side, through the sweep's outbox)."""
    if context is not None:
        _sweep_box(context).put(
            {
                "op": "close_trial",
                "experiment_id": context.experiment_id,
                "trial_id": trial_id,
                "status": status,
                "stopped_early": stopped_early,
            }
        )


def _close_trial(box: Outbox, client, op: dict[str, Any]) -> None:
    run = _trial_run(
        client, TrackingContext(box.uri, op["experiment_id"], box._run_id), op["trial_id"]
    )
    if run is None or run.info.status != "RUNNING":
        return
    if op["stopped_early"] is not None and "stopped_early" not in run.data.tags:
        client.set_tag(run.info.run_id, "stopped_early", str(op["stopped_early"]).lower())
        if op["stopped_early"]:
            client.set_tag(run.info.run_id, "stopped_by", "scheduler (ASHA)")
    client.set_terminated(run.info.run_id, status=op["status"])


# ---------------------------------------------------------------- the outbox: tracking never blocks

OUTBOX_DIR = "mlflow_outbox"
OPS_FILE, SENT_FILE, URI_FILE = "ops.jsonl", "sent", "uri"
REPLAY_COMMAND = "python -m tfkd.tracking replay"
RETRY_SECONDS = (1.0, 30.0)  # back-off while the tracking server is unreachable: first, longest
SWEEP_FLUSH_SECONDS = 30.0  # how long the driver waits for the sweep run's last writes
END_OF_SWEEP_GRACE_S = 60.0  # how long a sweep's end waits for a tracking server to come back
SKIP_AFTER = 3  # a write the reachable store keeps refusing is skipped after this many tries
# MLflow's own client retries a request for minutes with back-off; the outbox retries on its own
# schedule instead, so each request gives up fast.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
logger = logging.getLogger("tfkd.tracking")


class Outbox:
    """One run's MLflow writes, sent in order by a background thread; the caller never waits.

    Each write is appended to `<folder>/ops.jsonl` before it is sent (artifact files are copied
    into the folder first) and `<folder>/sent` counts the writes done, so a tracking server that
    is down loses nothing: the thread retries with back-off, `close(timeout)` waits a bounded
    time, and what is still unsent when the process ends is sent by the next Outbox on the same
    folder (a restarted trial) or by `python -m tfkd.tracking replay FOLDER`.

    The first write opens the run: a trial's run is found by its trial id under its sweep's run
    (so retries and resumes never open a second run) or created; every later per-epoch metrics
    write whose step that run already has is skipped (an epoch is logged exactly once).
    """

    def __init__(self, folder: str | os.PathLike, uri: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / URI_FILE).write_text(uri)
        self.uri = uri
        self._lock = threading.Condition()
        self._ops = _read_ops(self.folder)
        self._sent = _read_sent(self.folder)
        self._closing = False
        self._client = None
        self.run_opened = threading.Event()  # set once the run is found or created
        self._run_id: str | None = None
        self._logged_steps: set[int] = set()
        self._thread = threading.Thread(target=self._drain, name="tfkd-outbox", daemon=True)
        self._thread.start()

    # -- the caller's side

    def put(self, op: dict[str, Any], files: Mapping[str, str | os.PathLike] | None = None) -> None:
        """Queue a write; `files` (name -> local path) are copied into the outbox first."""
        with self._lock:
            if files:
                stash = self.folder / f"files-{len(self._ops)}"
                stash.mkdir(exist_ok=True)
                for name, path in files.items():
                    shutil.copyfile(path, stash / name)
                op = {**op, "stash": stash.name}
            with open(self.folder / OPS_FILE, "a") as out:
                out.write(json.dumps(op) + "\n")
            self._ops.append(op)
            self._lock.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for every write; True when all were sent."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout)
        return self.pending() == 0

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def pending(self) -> int:
        with self._lock:
            return len(self._ops) - self._sent

    # -- the sending thread

    def _drain(self) -> None:
        if not self._reopen():
            return
        while True:
            with self._lock:
                while self._sent >= len(self._ops) and not self._closing:
                    self._lock.wait()
                if self._sent >= len(self._ops):
                    return
                op = self._ops[self._sent]
            if self._send_with_retries(op):
                with self._lock:
                    self._sent += 1
                    _write_atomic_text(self.folder / SENT_FILE, str(self._sent))
            else:
                return  # gave up for now (closing while unreachable): the rest stays on disk

    def _reopen(self) -> bool:
        """Writes left by an earlier process on this folder need their run: open it again."""
        opened = [op for op in self._ops[: self._sent] if op["op"] in OPENING_OPS]
        return not opened or self._send_with_retries(opened[-1])

    def _send_with_retries(self, op: dict[str, Any]) -> bool:
        """Send one write, retrying while the server is unreachable; False: left for later.

        A write the reachable store keeps refusing is skipped (logged), except the one that
        opens the run: nothing after it could be sent without it.
        """
        opening = op["op"] in OPENING_OPS
        if not opening and self._run_id is None:
            return False  # the run could not be opened: keep everything for a later try
        delay, refused = RETRY_SECONDS[0], 0
        while True:
            try:
                self._client = self._client or mlflow_client(self.uri)
                _OPERATIONS[op["op"]](self, self._client, op)
                return True
            except Exception as exc:  # the store refused, or could not be reached
                reachable = _reachable(self.uri)
                refused += reachable
                if refused >= SKIP_AFTER and not opening:
                    logger.warning("MLflow refused %s (skipped): %s", op["op"], exc)
                    return True
                with self._lock:
                    if self._closing and (not reachable or refused >= SKIP_AFTER):
                        return False  # the rest waits on disk for a later outbox or replay
                    self._lock.wait(delay)
                delay = min(2 * delay, RETRY_SECONDS[1])

    def _stashed(self, op: dict[str, Any], name: str) -> str:
        return str(self.folder / op["stash"] / name)


def _read_ops(folder: Path) -> list[dict[str, Any]]:
    path = folder / OPS_FILE
    if not path.is_file():
        return []
    ops = []
    for line in path.read_text().splitlines():
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: nothing after it was written
            break
    return ops


def _read_sent(folder: Path) -> int:
    path = folder / SENT_FILE
    return int(path.read_text() or 0) if path.is_file() else 0


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reachable(uri: str) -> bool:
    """A tracking server answers /health (local stores are always there)."""
    if not is_server(uri):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# The writes an outbox knows. Each is idempotent given the run it resolved, so sending a write
# again after a crash between "sent" and "counted" does no harm.


def _open_run(box: Outbox, client, op: dict[str, Any]) -> None:
    """Find the trial's run under its sweep run (or create it), mark it RUNNING, tag it."""
    found = client.search_runs(
        [op["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{op['parent_run_id']}' "
        f"and tags.`{TRIAL_TAG}` = '{op['trial_id']}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(op["experiment_id"], run_name=op["name"], tags=op["tags"])
        run_id = run_id.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in sorted(op["params"].items())]
        client.log_batch(run_id, params=params)
    client.log_batch(run_id, tags=_tag_list(op["run_tags"]))
    box._run_id = run_id
    box._logged_steps = {int(m.step) for m in client.get_metric_history(run_id, "epoch")}
    box.run_opened.set()


def _log_epoch(box: Outbox, client, op: dict[str, Any]) -> None:
    if op["step"] in box._logged_steps:
        return
    _log_metrics(client, box._run_id, op["metrics"], step=op["step"])
    box._logged_steps.add(op["step"])


def _log_other_metrics(box: Outbox, client, op: dict[str, Any]) -> None:
    _log_metrics(client, box._run_id, op["metrics"], step=op["step"])


def _set_tags(box: Outbox, client, op: dict[str, Any]) -> None:
    client.log_batch(box._run_id, tags=_tag_list(op["tags"]))


def _log_artifact(box: Outbox, client, op: dict[str, Any]) -> None:
    client.log_artifact(box._run_id, box._stashed(op, op["name"]), op["artifact_path"])


def _register(box: Outbox, client, op: dict[str, Any]) -> None:
    """Log weights and register them as a version of the teacher model (with an alias)."""
    _log_artifact(box, client, op)
    name = op["model_name"]
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        try:
            client.create_registered_model(name)
        except Exception:  # another trial created it first
            pass
    version = client.create_model_version(
        name,
        source=f"runs:/{box._run_id}/{op['artifact_path']}",
        run_id=box._run_id,
        tags={**op["version_tags"], "artifact_path": op["artifact_path"]},
    )
    if op["alias"]:
        client.set_registered_model_alias(name, op["alias"], version.version)
    if op["kind"] == "final":
        _move_best_alias(client, name)


def _terminate(box: Outbox, client, op: dict[str, Any]) -> None:
    client.set_terminated(box._run_id, status=op["status"])


def _use_run(box: Outbox, client, op: dict[str, Any]) -> None:
    """The sweep's own outbox writes to its existing parent run."""
    box._run_id = op["run_id"]


def _finish_sweep(box: Outbox, client, op: dict[str, Any]) -> None:
    """Record the best trial on the sweep run, close child runs left open, close the sweep run."""
    context = TrackingContext(box.uri, op["experiment_id"], box._run_id)
    if op["best_trial_id"]:
        client.set_tag(box._run_id, "best_trial_id", op["best_trial_id"])
        child = _trial_run(client, context, op["best_trial_id"])
        if child is not None:
            client.set_tag(box._run_id, "best_run_id", child.info.run_id)
        _log_metrics(client, box._run_id, op["best_metrics"], step=0)
    for run in _children(client, context):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
    client.set_terminated(box._run_id, status=op["status"])


_OPERATIONS: dict[str, Callable[[Outbox, Any, dict[str, Any]], None]] = {
    "open": _open_run,
    "epoch": _log_epoch,
    "metrics": _log_other_metrics,
    "tags": _set_tags,
    "artifact": _log_artifact,
    "register": _register,
    "terminate": _terminate,
    "use_run": _use_run,
    "finish_sweep": _finish_sweep,
    "close_trial": _close_trial,
}
OPENING_OPS = ("open", "use_run")


def _tag_list(tags: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def _move_best_alias(client, name: str) -> None:
    """Alias 'best' -> the final-weights version with the highest validation accuracy."""
    finals = [
        v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("kind") == "final"
    ]
    if finals:
        best = max(finals, key=lambda v: float(v.tags.get("val_accuracy", "-inf")))
        client.set_registered_model_alias(name, BEST_ALIAS, best.version)


def pending_outboxes(root: str | os.PathLike) -> list[Path]:
    """Outbox folders under `root` (or `root` itself) with writes not yet sent."""
    return [
        ops.parent
        for ops in sorted(Path(root).rglob(OPS_FILE))
        if OUTBOX_DIR in ops.parts and len(_read_ops(ops.parent)) > _read_sent(ops.parent)
    ]


def flush_pending(root: str | os.PathLike, grace: float = END_OF_SWEEP_GRACE_S) -> list[Path]:
    """Send what outboxes under `root` still hold; returns those still not sent.

    Trials that ended while the tracking server was down left their last writes on disk. At the
    end of a sweep the driver waits up to `grace` seconds for the server to answer, then sends
    them; a server that stays down leaves them for `replay`.
    """
    boxes = pending_outboxes(root)
    if not boxes:
        return []
    uri = (boxes[0] / URI_FILE).read_text().strip()
    deadline = time.monotonic() + grace
    while not _reachable(uri) and time.monotonic() < deadline:
        time.sleep(1.0)
    return [box for box in boxes if not send_outbox(box, None, timeout=grace)]


def send_outbox(folder: str | os.PathLike, uri: str | None, timeout: float) -> bool:
    """Send what an outbox still holds (to `uri`, else where it was bound); True when done."""
    box = Outbox(folder, uri or (Path(folder) / URI_FILE).read_text().strip())
    return box.close(timeout)


# ---------------------------------------------------------------- a trial (child run)


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _log_metrics(client, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in _numeric(metrics).items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


class NullTracker:
    """Used when a sweep is not tracked; every hook does nothing."""

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str, best: bool) -> None: ...
    def on_finish(self, metrics: Mapping[str, Any]) -> bool:
        return True

    def on_stopped(self) -> bool:
        return True

    def on_failed(self, error: BaseException) -> bool:
        return True


class TrialTracker:
    """The child run of one trial: params, per-epoch metrics, artifacts, status, teachers.

    Every write goes through the trial's `Outbox`: training never waits on the tracking server.
    A restored trial hands in its `checkpoint.TrialRecord`: the epochs it already trained are
    logged if the run lacks them (and never twice), and its best weights are the ones uploaded.
    """

    def __init__(
        self,
        context: TrackingContext,
        config: Mapping[str, Any],
        trial_id: str,
        trial_name: str,
        record: checkpoint.TrialRecord,
        outbox_dir: str | os.PathLike,
        flush_seconds: float = 30.0,
    ) -> None:
        self.context = context
        self.config = dict(config)
        self.record = record
        self.flush_seconds = flush_seconds
        self.closed = False
        self.outbox = Outbox(outbox_dir, context.uri)
        tags = {
            "mlflow.parentRunId": context.parent_run_id,
            TRIAL_TAG: trial_id,
            KIND_TAG: context.child_kind,
            "mode": config["mode"],
            "model": config["model"],
            "dataset": config["dataset"],
            "teacher": config.get("teacher", ""),
            **dict(context.child_tags),
        }
        self.outbox.put(
            {
                "op": "open",
                "experiment_id": context.experiment_id,
                "parent_run_id": context.parent_run_id,
                "trial_id": trial_id,
                "name": trial_name,
                "tags": tags,
                "params": {k: str(v) for k, v in self.config.items()},
                # which Ray node ran (or resumed) the trial: the latest, and all in order
                "run_tags": {"ray_node_id": record.nodes[-1] if record.nodes else ""}
                | {"ray_nodes": ",".join(record.nodes)},
            }
        )
        for metrics in record.history:  # epochs trained before a restart, if the run lacks them
            self._put_epoch(metrics)
        if record.best_epoch:
            self._put_best()
        self.system_monitor = None
        if context.system_metrics:  # once the outbox has opened the run
            threading.Thread(target=self._start_system_metrics, daemon=True).start()

    def _put_epoch(self, metrics: Mapping[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        self.outbox.put({"op": "epoch", "step": epoch, "metrics": _numeric(metrics)})

    def _put_best(self) -> None:
        best = {"best_val_accuracy": self.record.best_accuracy}
        self.outbox.put({"op": "metrics", "step": self.record.best_epoch, "metrics": best})

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str, best: bool) -> None:
        """Queue the epoch's metrics (and new best, snapshot, teacher registrations)."""
        epoch = int(metrics["epoch"])
        self._put_epoch(metrics)
        if best:
            self._put_best()
        accuracy = metrics.get("val_accuracy", metrics.get("train_accuracy"))
        if epoch in self.context.snapshot_epochs and self.context.registered_model:
            tags = {"kind": "snapshot", "epoch": epoch, "val_accuracy": accuracy}
            self._put_registration(checkpoint_dir, f"{SNAPSHOT_ARTIFACT}/epoch-{epoch}", tags)
        if epoch == int(self.config["epochs"]) and self.context.registered_model:
            tags = {"kind": "final", "epoch": epoch, "val_accuracy": accuracy}
            self._put_registration(checkpoint_dir, TEACHER_ARTIFACT, tags)

    def _put_registration(self, checkpoint_dir: str, artifact_path: str, tags: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            weights = checkpoint.export_weights(checkpoint_dir, Path(tmp) / checkpoint.WEIGHTS_FILE)
            alias = artifact_path.rpartition("/")[2] if tags["kind"] == "snapshot" else None
            self.outbox.put(
                {
                    "op": "register",
                    "name": checkpoint.WEIGHTS_FILE,
                    "artifact_path": artifact_path,
                    "model_name": self.context.registered_model,
                    "alias": alias,
                    "kind": tags["kind"],
                    "version_tags": {k: str(v) for k, v in tags.items()},
                },
                files={checkpoint.WEIGHTS_FILE: weights},
            )

    def on_finish(self, metrics: Mapping[str, Any]) -> bool:
        return self._wrap_up("FINISHED", {"stopped_early": "false"})

    def on_stopped(self) -> bool:
        """Stopped by Tune (ASHA, the end of the sweep or Ctrl-C): upload what the run has.

        Its status and stopped_early tag come from the driver, which knows why it stopped.
        """
        return self._wrap_up(None, {})

    def on_failed(self, error: BaseException) -> bool:
        return self._wrap_up("FAILED", {"error": f"{error.__class__.__name__}: {error}"[:5000]})

    def _wrap_up(self, status: str | None, tags: Mapping[str, str]) -> bool:
        """Queue the best checkpoint, config, tags and status; wait a bounded time for them.

        Returns False when some writes are still unsent (they stay in the outbox on disk).
        """
        if not self.closed:
            self.closed = True
            stop_system_metrics(self.system_monitor)
            self._put_results()
            if tags:
                self.outbox.put({"op": "tags", "tags": dict(tags)})
            if status:
                self.outbox.put({"op": "terminate", "status": status})
        return self.outbox.close(self.flush_seconds)

    def _put_results(self) -> None:
        """The best weights so far and the trial's config.yaml, as artifacts."""
        if self.record.best_weights.is_file():
            name = checkpoint.WEIGHTS_FILE
            self.outbox.put(
                {"op": "artifact", "name": name, "artifact_path": BEST_ARTIFACT},
                files={name: self.record.best_weights},
            )
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(self.config, sort_keys=True))
            self.outbox.put(
                {"op": "artifact", "name": config.name, "artifact_path": None},
                files={config.name: config},
            )

    def _start_system_metrics(self) -> None:
        if self.outbox.run_opened.wait(timeout=SYSTEM_METRICS_WAIT_S):
            resumed = bool(self.record.history)
            self.system_monitor = start_system_metrics(self.context, self.outbox.run_id, resumed)


SYSTEM_METRICS_INTERVAL_S = 5.0
SYSTEM_METRICS_WAIT_S = 600.0  # how long a trial waits for its run before giving up on them


def start_system_metrics(context: TrackingContext, run_id: str, resumed: bool = False):
    """MLflow's own system-metrics logging (CPU, memory, disk, network; GPU utilisation and
    memory where pynvml finds NVIDIA GPUs) into a trial's run, when the sweep asked for it."""
    if not context.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=SYSTEM_METRICS_INTERVAL_S,
        resume_logging=resumed,
        tracking_uri=context.uri,
    )
    monitor.start()
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    if monitor is not None:
        monitor.finish()


def trial_tracker(
    context: TrackingContext | None,
    config: Mapping[str, Any],
    trial_id: str,
    trial_name: str,
    record: checkpoint.TrialRecord,
    outbox_dir: str | os.PathLike,
) -> TrialTracker | NullTracker:
    if context is None:
        return NullTracker()
    return TrialTracker(context, config, trial_id, trial_name, record, outbox_dir)


# ---------------------------------------------------------------- teachers


def parse_teacher(spec: str) -> tuple[str, str]:
    """'resnet50' -> ('resnet50', 'best'); 'resnet50@epoch-50' -> ('resnet50', 'epoch-50')."""
    model, _, alias = spec.partition("@")
    return model, alias or BEST_ALIAS


def teacher_uri_from_registry(uri: str, dataset: str, teacher: str, train_command: str) -> str:
    """The artifact URI of a registered teacher; a clear error says how to train one."""
    model, alias = parse_teacher(teacher)
    name = registered_model_name(dataset, model)
    try:
        version = mlflow_client(uri).get_model_version_by_alias(name, alias)
    except Exception:
        raise UserError(
            f"no teacher '{name}@{alias}' in the MLflow registry at {uri}; train one with: "
            f"{train_command} (or pass --teacher-checkpoint / --teacher-run, or --train-teacher)"
        ) from None
    return f"runs:/{version.run_id}/{version.tags.get('artifact_path', TEACHER_ARTIFACT)}"


def teacher_uri_from_run(uri: str, run_id: str) -> str:
    try:
        run = mlflow_client(uri).get_run(run_id)
    except Exception:
        raise UserError(f"--teacher-run {run_id}: no such run at {uri}") from None
    for path in (TEACHER_ARTIFACT, BEST_ARTIFACT):
        if mlflow_client(uri).list_artifacts(run.info.run_id, path):
            return f"runs:/{run_id}/{path}"
    raise UserError(
        f"--teacher-run {run_id}: the run has no '{TEACHER_ARTIFACT}' or "
        f"'{BEST_ARTIFACT}' weights artifact"
    )


def local_path(value: str, uri: str | None = None) -> str:
    """A teacher location as a local file: MLflow URIs are downloaded once per node."""
    if not value.startswith(MLFLOW_SCHEMES):
        return value
    cache = (
        Path(tempfile.gettempdir())
        / "tfkd-teachers"
        / hashlib.sha1(f"{uri}|{value}".encode()).hexdigest()[:16]
    )
    if not cache.is_dir():
        staging = Path(tempfile.mkdtemp(prefix="tfkd-teacher-"))
        _mlflow().artifacts.download_artifacts(
            artifact_uri=value, dst_path=str(staging), tracking_uri=uri
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, cache)
        except OSError:  # another trial on this node was faster
            shutil.rmtree(staging, ignore_errors=True)
    files = sorted(cache.rglob("*.pt"))
    if not files:
        raise FileNotFoundError(f"no weights (*.pt) in teacher artifact {value}")
    return str(files[0])


# ---------------------------------------------------------------- python -m tfkd.tracking replay


def main(argv: list[str] | None = None) -> int:
    """`python -m tfkd.tracking replay FOLDER...`: send what outboxes under FOLDER still hold."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tfkd.tracking",
        description="Send MLflow writes that a sweep could not deliver (tracking server down).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    replay_parser = commands.add_parser(
        "replay", help="send the unsent writes of every outbox under the given folders"
    )
    replay_parser.add_argument("folders", nargs="+", help="experiment (or results) folders")
    replay_parser.add_argument("--mlflow-uri", default=None, help="default: where each was bound")
    replay_parser.add_argument("--timeout", type=float, default=300.0, help="seconds per outbox")
    args = parser.parse_args(argv)
    found = [box for folder in args.folders for box in pending_outboxes(folder)]
    left = sum(not send_outbox(box, args.mlflow_uri, args.timeout) for box in found)
    print(f"[tfkd] replayed {len(found) - left} of {len(found)} outbox(es)")
    if left:
        print(f"{REPLAY_COMMAND}: {left} outbox(es) still unsent (server unreachable?)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
