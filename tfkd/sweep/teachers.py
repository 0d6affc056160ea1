"""Where a sweep's teacher comes from, checked before anything starts.

Architecture: a sweep's plan (tfkd.sweep.plan) builds a `TeacherRequest` from its request;
`resolve` finds the teacher's weights (--teacher-checkpoint > --teacher-run > the MLflow registry
entry tfkd-<dataset>-<model>@alias) or, with --train-teacher, says that a baseline run must train
it first; `attach` puts the teacher's location into the trial config and measures its validation
accuracy. Registry lookups go through tfkd.tracking (the only module that imports MLflow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfkd.core.errors import UserError
from tfkd.core.lazy import LazyModule, models, modes

if TYPE_CHECKING:
    from tfkd.core import data
    from tfkd.sweep.request import SweepRequest

# torch-backed: imported at first use, after the command line is parsed (tfkd.core.lazy)
checkpoint = LazyModule("tfkd.core.checkpoint")
torchvision_zoo = LazyModule("tfkd.core.models.torchvision_zoo")

# TeacherRequest's fields and the SweepRequest fields (the tune command's flags) that set them.
_FLAG_OF = {
    "mode": "mode",
    "dataset": "dataset",
    "model": "model",
    "teacher": "teacher",
    "checkpoint": "teacher_checkpoint",
    "run_id": "teacher_run",
    "train": "train_teacher",
    "epochs": "epochs",
}


@dataclass(frozen=True)
class TeacherRequest:
    """What the user asked for: a mode, a student, and the teacher flags."""

    mode: str
    dataset: str
    model: str
    teacher: str | None = None  # MODEL[@ALIAS][:RUN]
    checkpoint: str | None = None
    run_id: str | None = None
    train: bool = False
    epochs: int | None = None

    @classmethod
    def from_args(cls, args: SweepRequest) -> TeacherRequest:
        return cls(**{name: getattr(args, flag) for name, flag in _FLAG_OF.items()})

    @property
    def architecture(self) -> str:
        """The teacher's model: the student's own for tfkd_self, else --teacher's model."""
        if modes.get(self.mode).teacher_is_student and not self.teacher:
            return self.model
        model = (self.teacher or "").partition(":")[0].partition("@")[0]
        return torchvision_zoo.registry_name(model) if self.pretrained else model

    @property
    def pretrained(self) -> bool:
        """--teacher NAME@torchvision: torchvision's pretrained ImageNet weights."""
        return (self.teacher or "").partition("@")[2] == torchvision_zoo.PRETRAINED_ALIAS


def _teacher_flags(request: TeacherRequest) -> list[str]:
    given = {
        "--teacher": request.teacher,
        "--teacher-checkpoint": request.checkpoint,
        "--teacher-run": request.run_id,
        "--train-teacher": request.train,
    }
    return [flag for flag, value in given.items() if value]


def check_request(request: TeacherRequest) -> None:
    """Teacher flags only for a mode with a teacher, and --teacher naming a known model."""
    flags = _teacher_flags(request)
    if flags and not modes.get(request.mode).needs_teacher:
        with_teacher = [name for name in modes.names() if modes.get(name).needs_teacher]
        raise UserError(
            f"{flags[0]}: --mode {request.mode} has no teacher; drop the flag or choose a "
            f"mode with a teacher ({', '.join(with_teacher)})"
        )
    model = request.architecture
    if request.teacher and model not in models.names():
        raise UserError(
            f"--teacher {request.teacher}: unknown model {model!r}; known models: "
            f"{', '.join(models.names())}"
        )


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher; `location` is '' until a --train-teacher run has trained it.

    `run_id` is the MLflow run whose weights these are, `registered` the registry version and
    teacher run they come from (tfkd.tracking's `RegisteredTeacher.describe`), when known.
    """

    model: str
    alias: str
    location: str
    run_id: str = ""
    registered: str = ""
    teacher_run: str = ""

    def describe(self) -> str:
        """Where the teacher comes from, for the sweep's output (one line)."""
        where = self.registered or (
            f"the weights of MLflow run {self.run_id} ({self.location}), not a registry version"
            if self.run_id
            else f"{self.location} (a file: no registry version or run)"
        )
        return f"teacher {self.model}@{self.alias}: {where}"

    def tags(self) -> dict[str, str]:
        """The teacher's provenance, as tags of the sweep run and of every student's run."""
        given = {"teacher_run_id": self.run_id, "teacher_run": self.teacher_run}
        return {k: v for k, v in given.items() if v}


def train_command(request: TeacherRequest, model: str, alias: str) -> str:
    """The command that trains (and registers) a missing teacher."""
    parts = ["tfkd tune --mode baseline", f"--dataset {request.dataset}"]
    parts += [f"--model {model}", "--fixed"]
    if request.epochs:
        parts.append(f"--epochs {request.epochs}")
    if alias.startswith("epoch-"):
        parts.append(f"--snapshot-epochs {alias.removeprefix('epoch-')}")
    return " ".join(parts)


def resolve(request: TeacherRequest, mlflow_uri: str | None) -> Teacher | None:
    """--teacher-checkpoint > --teacher-run > the MLflow registry (tfkd-<dataset>-<model>)."""
    if not modes.get(request.mode).needs_teacher:
        return None
    from tfkd import tracking

    model = request.architecture
    alias = tracking.parse_teacher(request.teacher)[1] if request.teacher else tracking.BEST_ALIAS
    if request.pretrained and not request.checkpoint:
        return _pretrained(model)
    if request.checkpoint:
        path = Path(request.checkpoint).expanduser().resolve()
        if not path.exists():
            raise UserError(f"--teacher-checkpoint {path}: no such file")
        try:
            checkpoint.load(path)  # before anything starts: readable, weights only
        except (OSError, ValueError) as exc:
            raise UserError(f"--teacher-checkpoint {str(exc).splitlines()[0]}") from None
        return Teacher(model, alias, str(path))
    if not model:
        raise UserError(
            f"--mode {request.mode} needs a teacher: pass --teacher MODEL (found in the MLflow "
            "registry; add --train-teacher to train it first when it is not there) or "
            "--teacher-checkpoint PATH"
        )
    if mlflow_uri is None:
        raise UserError(
            f"--mode {request.mode}: without MLflow tracking the teacher must be "
            "given as --teacher-checkpoint PATH"
        )
    if request.run_id:
        location = tracking.teacher_uri_from_run(mlflow_uri, request.run_id)
        return Teacher(model, alias, location, run_id=request.run_id)
    command = train_command(request, model, alias)
    spec = request.teacher or model  # tfkd_self without --teacher: the student's model @best
    try:
        found = tracking.registered_teacher(mlflow_uri, request.dataset, spec, command)
    except UserError:
        if not request.train or tracking.teacher_run_of(spec):  # a named run is not retrained
            raise
        return Teacher(model, alias, "")
    return Teacher(model, alias, found.location, found.run_id, found.describe(), found.teacher_run)


def _pretrained(model: str) -> Teacher:
    """torchvision's cached ImageNet weights of `model` (never downloaded here)."""
    try:
        path = torchvision_zoo.pretrained_file(model)
    except FileNotFoundError as exc:
        raise UserError(f"--teacher {model.removeprefix('tv_')}@torchvision: {exc}") from None
    return Teacher(model, torchvision_zoo.PRETRAINED_ALIAS, str(path))


def attach(
    teacher: Teacher,
    config: Mapping[str, Any],
    probe_config: Mapping[str, Any],
    dataset: data.Dataset,
    mlflow_uri: str | None,
) -> tuple[dict[str, Any], float]:
    """The sweep's config with the teacher's location, and the teacher's validation accuracy.

    `probe_config` is a complete trial config (the first trial's) used to load and evaluate it.
    """
    from tfkd import tracking
    from tfkd.core import train

    local = tracking.local_path(teacher.location, mlflow_uri)
    try:
        accuracy = train.teacher_accuracy({**probe_config, "teacher_checkpoint": local}, dataset)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"teacher {teacher.location}: {str(exc).splitlines()[0]}") from None
    return {**config, "teacher_checkpoint": teacher.location, "teacher": teacher.model}, accuracy
