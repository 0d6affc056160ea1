"""Teachers in the MLflow model registry: one registered model per dataset and architecture.

A baseline sweep registers its trials' final weights (and snapshots at chosen epochs) as
versions; the alias `best` follows the final version with the highest validation accuracy, and
a snapshot's alias is its epoch (`epoch-50`). A distillation sweep names its teacher as
`MODEL[@ALIAS]` and gets a local file of its weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tfkd.core.errors import UserError
from tfkd.tracking.store import import_mlflow, mlflow_client

TEACHER_ARTIFACT = "teacher"
BEST_ARTIFACT = "best_checkpoint"
SNAPSHOT_ARTIFACT = "snapshots"
BEST_ALIAS = "best"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def registered_model_name(dataset: str, model: str) -> str:
    return f"tfkd-{dataset}-{model}"


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
    """The weights artifact of a run (its registered teacher, else its best checkpoint)."""
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


def move_best_alias(client, name: str) -> None:
    """Alias 'best' -> the final-weights version with the highest validation accuracy."""
    finals = [
        v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("kind") == "final"
    ]
    if finals:
        best = max(finals, key=lambda v: float(v.tags.get("val_accuracy", "-inf")))
        client.set_registered_model_alias(name, BEST_ALIAS, best.version)


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
        import_mlflow().artifacts.download_artifacts(
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
