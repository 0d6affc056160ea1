"""MLflow: a parent run per sweep, a child run per trial, teachers as registered models.

The only module of tfkd that imports MLflow. Trials log from inside (so it works when they run on
other nodes against a tracking server); a trial that restarts finds its run id in its checkpoint
and keeps logging into the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfkd import checkpoint
from tfkd.errors import UserError

RUN_ID_FILE = "mlflow_run.json"
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


def _artifact_root(uri: str) -> str | None:
    """Local backends keep artifacts beside the database, not in the trial's folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # MLflow 3's UI opens an experiment on its GenAI overview unless told it trains models
    return client.create_experiment(
        name,
        artifact_location=_artifact_root(uri),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )


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
) -> None:
    """Record the best trial on the parent run, close runs left open, close the parent."""
    if context is None:
        return
    client = mlflow_client(context.uri)
    run_id = context.parent_run_id
    if best_trial_id:
        child = _trial_run(client, context, best_trial_id)
        client.set_tag(run_id, "best_trial_id", best_trial_id)
        if child is not None:
            client.set_tag(run_id, "best_run_id", child.info.run_id)
        _log_metrics(client, run_id, best_of_sweep(best_metrics), step=0)
    for run in _children(client, context):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
    client.set_terminated(run_id, status=status)


SWEEP_METRICS = ("val_accuracy", "test_accuracy")  # of the best trial, as best_<name>


def best_of_sweep(best_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sweep-level metrics of its best trial (not Ray's bookkeeping: pid, iterations...)."""
    metrics = best_metrics or {}
    return {f"best_{k}": metrics[k] for k in SWEEP_METRICS if k in metrics}


def log_sweep_report(
    context: TrackingContext | None, metrics: Mapping[str, float], files: Mapping[str, bytes]
) -> None:
    """The sweep run's counts and its comparison files (trials table, plot) as artifacts."""
    if context is None:
        return
    client = mlflow_client(context.uri)
    _log_metrics(client, context.parent_run_id, metrics, step=0)
    with tempfile.TemporaryDirectory(prefix="tfkd-sweep-report-") as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
        client.log_artifacts(context.parent_run_id, folder)


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
    """Close a trial's run that its trial left open (driver side)."""
    if context is None:
        return
    client = mlflow_client(context.uri)
    run = _trial_run(client, context, trial_id)
    if run is None or run.info.status != "RUNNING":
        return
    if stopped_early is not None and "stopped_early" not in run.data.tags:
        client.set_tag(run.info.run_id, "stopped_early", str(stopped_early).lower())
        if stopped_early:
            client.set_tag(run.info.run_id, "stopped_by", "scheduler (ASHA)")
    client.set_terminated(run.info.run_id, status=status)


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


def run_id_in(folder: str | None) -> str | None:
    """The MLflow run id a checkpoint carries, if any."""
    if folder is None or not (Path(folder) / RUN_ID_FILE).is_file():
        return None
    return json.loads((Path(folder) / RUN_ID_FILE).read_text()).get("run_id")


class NullTracker:
    """Used when a sweep is not tracked; every hook does nothing."""

    run_id = None

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None: ...
    def on_finish(self, metrics: Mapping[str, Any]) -> None: ...
    def on_stopped(self) -> None: ...
    def on_failed(self, error: BaseException) -> None: ...


class TrialTracker:
    """The child run of one trial: params, per-epoch metrics, artifacts, status, teachers."""

    def __init__(
        self,
        context: TrackingContext,
        config: Mapping[str, Any],
        trial_id: str,
        trial_name: str,
        run_id: str | None,
        node_id: str = "",
    ) -> None:
        self.context = context
        self.client = mlflow_client(context.uri)
        self.config = dict(config)
        self.best_accuracy = -math.inf
        self.best_weights = Path(tempfile.mkdtemp(prefix="tfkd-best-")) / checkpoint.WEIGHTS_FILE
        self.closed = False
        if run_id is None:
            run = self.client.create_run(
                context.experiment_id,
                run_name=trial_name,
                tags={
                    "mlflow.parentRunId": context.parent_run_id,
                    TRIAL_TAG: trial_id,
                    KIND_TAG: context.child_kind,
                    "mode": config["mode"],
                    "model": config["model"],
                    "dataset": config["dataset"],
                    "teacher": config.get("teacher", ""),
                    **dict(context.child_tags),
                },
            )
            self.run_id = run.info.run_id
            self._log_config()
        else:  # a restarted or resumed trial: same run, never a duplicate
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            best = self.client.get_run(run_id).data.metrics.get("best_val_accuracy")
            self.best_accuracy = best if best is not None else -math.inf
        if node_id:  # which Ray node ran (or resumed) the trial
            self.client.set_tag(self.run_id, "ray_node_id", node_id)
        self.system_monitor = start_system_metrics(context, self.run_id, resumed=bool(run_id))

    def _log_config(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in sorted(self.config.items())]
        self.client.log_batch(self.run_id, params=params)

    def on_epoch(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        epoch = int(metrics["epoch"])
        _log_metrics(self.client, self.run_id, metrics, step=epoch)
        if checkpoint_dir is None:
            return
        (Path(checkpoint_dir) / RUN_ID_FILE).write_text(json.dumps({"run_id": self.run_id}))
        accuracy = metrics.get("val_accuracy", metrics.get("train_accuracy", -math.inf))
        if accuracy > self.best_accuracy:
            self.best_accuracy = accuracy
            checkpoint.export_weights(checkpoint_dir, self.best_weights)
            _log_metrics(self.client, self.run_id, {"best_val_accuracy": accuracy}, step=epoch)
        if epoch in self.context.snapshot_epochs and self.context.registered_model:
            self._register_snapshot(checkpoint_dir, epoch, accuracy)
        if epoch == int(self.config["epochs"]) and self.context.registered_model:
            self._register_teacher(checkpoint_dir, epoch, accuracy)

    def _log_weights(self, source: str | Path, artifact_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            weights = checkpoint.export_weights(source, Path(tmp) / checkpoint.WEIGHTS_FILE)
            self.client.log_artifact(self.run_id, str(weights), artifact_path)

    def _register(self, artifact_path: str, alias: str | None, tags: Mapping[str, Any]) -> None:
        name = self.context.registered_model
        client = self.client
        if client.search_registered_models(filter_string=f"name = '{name}'") == []:
            try:
                client.create_registered_model(name)
            except Exception:  # another trial created it first
                pass
        version = client.create_model_version(
            name,
            source=f"runs:/{self.run_id}/{artifact_path}",
            run_id=self.run_id,
            tags={k: str(v) for k, v in {**tags, "artifact_path": artifact_path}.items()},
        )
        if alias:
            client.set_registered_model_alias(name, alias, version.version)

    def _register_snapshot(self, checkpoint_dir: str, epoch: int, accuracy: float) -> None:
        path = f"{SNAPSHOT_ARTIFACT}/epoch-{epoch}"
        self._log_weights(checkpoint_dir, path)
        self._register(
            path, f"epoch-{epoch}", {"kind": "snapshot", "epoch": epoch, "val_accuracy": accuracy}
        )

    def _register_teacher(self, checkpoint_dir: str, epoch: int, accuracy: float) -> None:
        self._log_weights(checkpoint_dir, TEACHER_ARTIFACT)
        self._register(
            TEACHER_ARTIFACT, None, {"kind": "final", "epoch": epoch, "val_accuracy": accuracy}
        )
        self._move_best_alias()

    def _move_best_alias(self) -> None:
        """Alias 'best' -> the final-weights version with the highest validation accuracy."""
        name = self.context.registered_model
        finals = [
            v
            for v in self.client.search_model_versions(f"name = '{name}'")
            if v.tags.get("kind") == "final"
        ]
        if finals:
            best = max(finals, key=lambda v: float(v.tags.get("val_accuracy", "-inf")))
            self.client.set_registered_model_alias(name, BEST_ALIAS, best.version)

    def on_finish(self, metrics: Mapping[str, Any]) -> None:
        self._upload_best()
        self.client.set_tag(self.run_id, "stopped_early", "false")
        self._close("FINISHED")

    def on_stopped(self) -> None:
        if self.closed:
            return
        self._upload_best()
        self.client.set_tag(self.run_id, "stopped_early", "true")
        self.client.set_tag(self.run_id, "stopped_by", "scheduler (ASHA)")
        self._close("FINISHED")

    def on_failed(self, error: BaseException) -> None:
        if self.closed:
            return
        self.client.set_tag(self.run_id, "error", f"{error.__class__.__name__}: {error}"[:5000])
        self._close("FAILED")

    def _upload_best(self) -> None:
        if self.best_weights.is_file():
            self.client.log_artifact(self.run_id, str(self.best_weights), BEST_ARTIFACT)
        self.client.log_text(
            self.run_id, yaml.safe_dump(self.config, sort_keys=True), "config.yaml"
        )

    def _close(self, status: str) -> None:
        stop_system_metrics(self.system_monitor)
        self.client.set_terminated(self.run_id, status=status)
        self.closed = True
        shutil.rmtree(self.best_weights.parent, ignore_errors=True)


SYSTEM_METRICS_INTERVAL_S = 5.0


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
    run_id: str | None,
    node_id: str = "",
) -> TrialTracker | NullTracker:
    if context is None:
        return NullTracker()
    return TrialTracker(context, config, trial_id, trial_name, run_id, node_id)


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
