"""Teachers in the MLflow model registry: one registered model per dataset and architecture.

A baseline sweep registers its trials' final weights (and snapshots at chosen epochs) as
versions, each tagged with the teacher run (the sweep's name and run id) that made it, so a
run's versions are found together; the alias `best` follows the final version that ranks first on
the metric its protocol chooses with (`rank_versions`: never a train accuracy), and a snapshot's
alias is its epoch (`epoch-50`), moved by the newest
teacher run that registers it. A distillation sweep names its teacher as `MODEL[@ALIAS][:RUN]`
(RUN: a teacher run's name or run id picks its version instead of the alias's) and gets a
local file of its weights and the teacher's provenance (`RegisteredTeacher`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkd.core import atomic, protocol
from tfkd.core.errors import UserError
from tfkd.tracking.store import client as existing_store
from tfkd.tracking.store import import_mlflow, mlflow_client

TEACHER_ARTIFACT = "teacher"
BEST_ARTIFACT = "best_checkpoint"
SNAPSHOT_ARTIFACT = "snapshots"
BEST_ALIAS = "best"
SNAPSHOT_PREFIX = "epoch-"
RUN_SEPARATOR = ":"  # MODEL@ALIAS:RUN
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
# the tags of every registered version that name the teacher run which made it
TEACHER_RUN_TAG, SWEEP_RUN_ID_TAG = "teacher_run", "sweep_run_id"
# the tags of every registered version that say what it is ranked on: the metric its trial's
# protocol chooses epochs with, and its value for these weights
RANKED_BY_TAG, RANK_VALUE_TAG = "ranked_by", "rank_value"
# on the registered model: what chose the version `best` points at, in words
BEST_RANKING_TAG = "tfkd.best_ranked_on"
# the ranking metrics, fairest first: a validation accuracy (a split that never trains and never
# tests) outranks the test accuracy of a protocol without one, which ranks only among its own
RANKING_PREFERENCE = tuple(
    dict.fromkeys(
        protocol.get(name).chooses_by
        for name in sorted(protocol.names(), key=lambda n: protocol.get(n).full_training_set)
    )
)


def registered_model_name(dataset: str, model: str) -> str:
    return f"tfkd-{dataset}-{model}"


def parse_teacher(spec: str) -> tuple[str, str]:
    """'resnet50' -> ('resnet50', 'best'); 'resnet50@epoch-50[:RUN]' -> ('resnet50', 'epoch-50')."""
    model, _, alias = spec.partition(RUN_SEPARATOR)[0].partition("@")
    return model, alias or BEST_ALIAS


def teacher_run_of(spec: str) -> str:
    """'resnet50@epoch-50:baseline-x' -> 'baseline-x': the teacher run asked for ('' for none)."""
    return spec.partition(RUN_SEPARATOR)[2]


@dataclass(frozen=True)
class RegisteredTeacher:
    """A version of a registered teacher and the run that made it."""

    name: str  # tfkd-<dataset>-<model>
    version: str
    kind: str  # final or snapshot
    epoch: str
    run_id: str  # the MLflow run (a trial) whose weights these are
    teacher_run: str  # the teacher run's (sweep's) name; '' for versions registered before tags
    location: str  # runs:/<run_id>/<artifact path>

    @property
    def alias(self) -> str:
        """What the version is in its run: 'epoch-N' (a snapshot) or 'final'."""
        return f"{SNAPSHOT_PREFIX}{self.epoch}" if self.kind == "snapshot" else self.kind

    def describe(self) -> str:
        """'tfkd-fake-resnet8 version 2, the epoch-1 snapshot of teacher run NAME (run ID)'."""
        what = f"{self.alias} snapshot" if self.kind == "snapshot" else "final weights"
        run = f"teacher run {self.teacher_run}" if self.teacher_run else "an unnamed teacher run"
        return f"{self.name} version {self.version}, the {what} of {run} (MLflow run {self.run_id})"


def _registered(name: str, version) -> RegisteredTeacher:
    tags = version.tags
    return RegisteredTeacher(
        name=name,
        version=str(version.version),
        kind=tags.get("kind", ""),
        epoch=tags.get("epoch", ""),
        run_id=version.run_id,
        teacher_run=tags.get(TEACHER_RUN_TAG, ""),
        location=f"runs:/{version.run_id}/{tags.get('artifact_path', TEACHER_ARTIFACT)}",
    )


def _has_alias(version, alias: str) -> bool:
    """`version` is what `alias` stands for in a run: its final weights (best) or epoch N."""
    if alias == BEST_ALIAS:
        return version.tags.get("kind") == "final"
    return (
        version.tags.get("kind") == "snapshot"
        and alias == f"{SNAPSHOT_PREFIX}{version.tags.get('epoch')}"
    )


def _of_run(version, run: str) -> bool:
    tags = version.tags
    return run in (tags.get(TEACHER_RUN_TAG), tags.get(SWEEP_RUN_ID_TAG), version.run_id)


def registered_teacher(
    uri: str, dataset: str, teacher: str, train_command: str
) -> RegisteredTeacher:
    """The registered version `teacher` (MODEL[@ALIAS][:RUN]) names; a clear error says how to
    train one. Without RUN, the alias's version; with it, that teacher run's version of ALIAS
    (the best by validation accuracy, if the run was a sweep of several trials)."""
    model, alias = parse_teacher(teacher)
    run = teacher_run_of(teacher)
    name = registered_model_name(dataset, model)
    hint = (
        f"train one with: {train_command} (or pass --teacher-checkpoint / --teacher-run, or "
        "--train-teacher)"
    )
    client = existing_store(uri)  # None: no SQLite store yet (a refusal must not create one)
    if not run:
        try:
            return _registered(name, client.get_model_version_by_alias(name, alias))
        except Exception:
            raise UserError(
                f"no teacher '{name}@{alias}' in the MLflow registry at {uri}; {hint}"
            ) from None
    versions = [v for v in _versions(client, name) if _has_alias(v, alias)]
    chosen = [v for v in versions if _of_run(v, run)]
    if not chosen:
        runs = sorted({v.tags.get(TEACHER_RUN_TAG) for v in versions} - {None, ""})
        raise UserError(
            f"--teacher {teacher}: teacher run {run!r} registered no '{alias}' version of {name} "
            f"at {uri} (teacher runs that did: {', '.join(runs) or 'none'}); {hint}"
        )
    ranked = rank_versions(client, chosen)
    return _registered(name, ranked.best if ranked else max(chosen, key=lambda v: int(v.version)))


def registered_by(uri: str, dataset: str, model: str, teacher_run: str) -> list[RegisteredTeacher]:
    """The versions a teacher run registered, oldest first (none yet if its writes are queued)."""
    name = registered_model_name(dataset, model)
    mine = [
        v for v in _versions(mlflow_client(uri), name) if v.tags.get(TEACHER_RUN_TAG) == teacher_run
    ]
    return [_registered(name, v) for v in sorted(mine, key=lambda v: int(v.version))]


def _versions(client, name: str) -> list:
    if client is None:
        return []
    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except Exception:  # no such registered model yet
        return []


def teacher_uri_from_run(uri: str, run_id: str) -> str:
    """The weights artifact of a run (its registered teacher, else its best checkpoint)."""
    try:
        run = existing_store(uri).get_run(run_id)
    except Exception:  # no such run, or no store at all (None)
        raise UserError(f"--teacher-run {run_id}: no such run at {uri}") from None
    for path in (TEACHER_ARTIFACT, BEST_ARTIFACT):
        if mlflow_client(uri).list_artifacts(run.info.run_id, path):
            return f"runs:/{run_id}/{path}"
    raise UserError(
        f"--teacher-run {run_id}: the run has no '{TEACHER_ARTIFACT}' or "
        f"'{BEST_ARTIFACT}' weights artifact"
    )


def ranking_tags(protocol_name: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The tags that let a registered version be ranked: the metric protocol `protocol_name`
    chooses with and its value in `metrics` (none where the epoch lacks it: a holdout trial
    without a validation split has nothing it may be ranked on; a train accuracy never ranks)."""
    metric = protocol.get(protocol_name).chooses_by
    value = metrics.get(metric)
    return {} if value is None else {RANKED_BY_TAG: metric, RANK_VALUE_TAG: value}


@dataclass(frozen=True)
class Ranking:
    """The version that ranks first among comparable versions, and what was ranked."""

    best: Any  # an MLflow ModelVersion
    metric: str
    ranked: tuple[str, ...]  # the versions compared on `metric`
    unranked: tuple[str, ...]  # the others: another metric, or nothing comparable

    def describe(self) -> str:
        """'val_accuracy of versions 1, 3 (not ranked: 2)': stored on the registered model."""
        text = f"{self.metric} of version(s) {', '.join(self.ranked)}"
        if self.unranked:
            others = ", ".join(self.unranked)
            text += f" (not ranked: {others}; another metric or no validation split)"
        return text


def _rank_of(client, version) -> tuple[str, float] | None:
    """(metric, value) a version ranks on, or None. Versions registered before the ranking tags
    carry a `val_accuracy` tag that is a train accuracy when their run had no validation split;
    it ranks only where the run's params show a holdout split."""
    tags = version.tags
    if RANKED_BY_TAG in tags:
        return tags[RANKED_BY_TAG], float(tags[RANK_VALUE_TAG])
    if "val_accuracy" not in tags:
        return None
    try:
        params = client.get_run(version.run_id).data.params
    except Exception:  # the run is gone: nothing says what the number is
        return None
    split = float(params.get("val_fraction", 0) or 0)
    if params.get("protocol", "holdout") == "holdout" and split > 0:
        return "val_accuracy", float(tags["val_accuracy"])
    return None


def rank_versions(client, versions: list) -> Ranking | None:
    """The version that ranks first on the fairest metric any of `versions` has
    (RANKING_PREFERENCE), compared only with versions ranked on the same metric (ties: the
    newer version); None when none can be ranked."""
    versions = sorted(versions, key=lambda v: int(v.version))
    ranks = {str(v.version): rank for v in versions if (rank := _rank_of(client, v)) is not None}
    for metric in RANKING_PREFERENCE:
        group = [v for v in versions if ranks.get(str(v.version), ("",))[0] == metric]
        if group:
            best = max(group, key=lambda v: (ranks[str(v.version)][1], int(v.version)))
            compared = tuple(str(v.version) for v in group)
            others = tuple(str(v.version) for v in versions if str(v.version) not in compared)
            return Ranking(best, metric, compared, others)
    return None


def move_best_alias(client, name: str) -> None:
    """Alias 'best' -> the final-weights version that ranks first (`rank_versions`), and the
    registered model's tag BEST_RANKING_TAG says what was ranked. Nothing moves while no final
    version can be ranked."""
    finals = [
        v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("kind") == "final"
    ]
    ranking = rank_versions(client, finals)
    if ranking is not None:
        client.set_registered_model_alias(name, BEST_ALIAS, ranking.best.version)
        client.set_registered_model_tag(name, BEST_RANKING_TAG, ranking.describe())


# Teachers downloaded from MLflow are kept in the user's cache folder, once per node, never in
# the temp folder: the TEACHER_CACHE_KEEP most recently used stay; a download removes older ones
# not used in the last TEACHER_CACHE_IN_USE_S (a trial may still be loading one), and the
# staging folders of downloads whose process died.
TEACHER_CACHE_KEEP = 8
TEACHER_CACHE_IN_USE_S = 3600.0
STAGING_PREFIX = ".staging-"


def teacher_cache() -> Path:
    """Where downloaded teachers are kept: $XDG_CACHE_HOME/tfkd/teachers (~/.cache/...)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tfkd" / "teachers"


def local_path(value: str, uri: str | None = None) -> str:
    """A teacher location as a local file: MLflow URIs are downloaded once per node into the
    teacher cache (`teacher_cache`, bounded: TEACHER_CACHE_KEEP)."""
    if not value.startswith(MLFLOW_SCHEMES):
        return value
    cache = teacher_cache() / hashlib.sha1(f"{uri}|{value}".encode()).hexdigest()[:16]
    if not cache.is_dir():
        _download(value, uri, cache)
    os.utime(cache)  # used now: kept by the eviction below
    files = sorted(cache.rglob("*.pt"))
    if not files:
        raise FileNotFoundError(f"no weights (*.pt) in teacher artifact {value}")
    return str(files[0])


def _download(value: str, uri: str | None, cache: Path) -> None:
    """Download into a staging folder beside the cache, then rename it into place; a failed
    download leaves nothing (its staging folder is removed), and then the cache is trimmed."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_dead_process_folders(cache.parent, STAGING_PREFIX)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=cache.parent))
    try:
        import_mlflow().artifacts.download_artifacts(
            artifact_uri=value, dst_path=str(staging), tracking_uri=uri
        )
        os.replace(staging, cache)
    except OSError:
        if not cache.is_dir():  # not: another trial on this node was faster
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _evict(cache.parent)


def _evict(root: Path) -> None:
    """Keep the TEACHER_CACHE_KEEP teachers used most recently, and any used within the last
    TEACHER_CACHE_IN_USE_S."""
    kept = sorted(
        (f for f in root.iterdir() if f.is_dir() and not f.name.startswith(STAGING_PREFIX)),
        key=lambda f: f.stat().st_mtime,
        reverse=True,
    )
    recent = time.time() - TEACHER_CACHE_IN_USE_S
    for folder in kept[TEACHER_CACHE_KEEP:]:
        if folder.stat().st_mtime < recent:
            shutil.rmtree(folder, ignore_errors=True)
