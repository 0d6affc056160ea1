"""Queue the whole comparison behind one of the paper's tables, skipping what is already done.

    tfkd paper-suite --dataset cifar100 [--models ...] [--modes ...] [--dry-run]

The plan, from tfkd/analysis/paper_results.csv:
  1. a baseline sweep of every model that is a student or a teacher in the chosen rows;
  2. a teacher run of every Defective-KD teacher (`teacher-<dataset>-<model>`: one baseline
     run with the original's values, --fixed, registering the snapshots the rows need, e.g.
     epoch 1 of resnet18, 50 of resnet50);
  3. a sweep of every other (model, mode, teacher) row, with the teacher the paper used (a
     De-KD row names its teacher run: --teacher resnet18@epoch-1:teacher-cifar100-resnet18);
  4. a reproduction (tfkd reproduce) of every sweep that is a row of the table.
A step is done when MLflow holds a FINISHED run of it: a sweep run named like the sweep
(tfkd.kind=sweep), or a reproduction-set run named reproduce-<sweep>. --dry-run prints the exact
commands in order (`python -m tfkd tune ...`, `python -m tfkd reproduce ...`), marking the done
ones; otherwise they run in order, stopping at a failure.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tfkd.analysis import paper
from tfkd.analysis.common import say, tracking_uri
from tfkd.analysis.reproduce import SET_PREFIX
from tfkd.core import data, models, modes
from tfkd.core.errors import UserError
from tfkd.sweep.storage import sweep_folder_exists
from tfkd.tracking import store

TFKD = (sys.executable, "-m", "tfkd")  # how a step runs a tfkd command
BASELINE = "baseline"
DEFECTIVE = "dekd"
TEACHER_RUN = "teacher"  # the name prefix of a De-KD teacher run
NO_TEACHER_FLAG = ("", paper.SELF)  # teacher-free modes; tfkd_self's teacher is its own baseline
FORWARDED_RESOURCES = (
    "gpus_per_trial",
    "cpus_per_trial",
    "max_concurrent",
    "workers_per_trial",
    "address",
    "storage",
    "mlflow_uri",
)


@dataclass(frozen=True)
class Step:
    """One command of the plan; `marker` names the MLflow run that proves it done."""

    stage: str
    experiment: str
    marker: str
    kind: str
    argv: tuple[str, ...]
    done: bool = False
    note: str = ""  # what the step is compared with (the paper's value), shown in the plan

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


# ---------------------------------------------------------------- choosing the rows


def _check_known(kind: str, asked: Iterable[str], known: Iterable[str]) -> None:
    unknown = sorted(set(asked) - set(known))
    if unknown:
        raise UserError(f"--{kind}s: unknown {kind} {unknown[0]!r}; known: {', '.join(known)}")


def runnable(row: paper.PaperRow) -> bool:
    """tfkd has the row's student and teacher architectures (the paper has a few it lacks)."""
    return row.model in models.names() and teacher_model(row) in ("", *models.names())


def wanted(row: paper.PaperRow, args: argparse.Namespace) -> bool:
    return (args.models is None or row.model in args.models) and (
        args.modes is None or row.mode in args.modes
    )


def missing_architectures(row: paper.PaperRow) -> list[str]:
    """The row's student or teacher architectures tfkd does not have."""
    return [m for m in (row.model, teacher_model(row)) if m and m not in models.names()]


def say_unplannable(rows: Iterable[paper.PaperRow]) -> None:
    """One line naming the rows left out because tfkd lacks an architecture they use."""
    left_out = [r for r in rows if missing_architectures(r)]
    if left_out:
        named = sorted({f"{r.mode} {r.model}" + (f"<-{r.teacher}" if r.teacher else "")
                        for r in left_out})  # fmt: skip
        lacking = sorted({m for r in left_out for m in missing_architectures(r)})
        say(
            f"not planned: {len(left_out)} row(s) whose architectures tfkd lacks "
            f"({', '.join(lacking)}): {'; '.join(named)}"
        )


def chosen_rows(args: argparse.Namespace) -> list[paper.PaperRow]:
    """The paper's rows of the dataset, for the models and modes asked for (and a line naming
    those tfkd cannot train)."""
    _check_known("model", args.models or (), models.names())
    _check_known("mode", args.modes or (), modes.names())
    asked = [r for r in paper.rows_for(args.dataset) if wanted(r, args)]
    say_unplannable(asked)
    rows = [r for r in asked if runnable(r)]
    if not rows:
        raise UserError(
            f"the paper has no {args.dataset} rows for models "
            f"{args.models or 'any'} and modes {args.modes or 'any'}"
        )
    return rows


def teacher_model(row: paper.PaperRow) -> str:
    """The architecture whose baseline the row needs as a teacher ('' for none)."""
    key = paper.teacher_key(row.mode, row.teacher)
    if key == paper.SELF:
        return row.model
    return key.partition("@")[0]


def sweep_name(dataset: str, row: paper.PaperRow) -> str:
    """tfkd tune's default name, plus the teacher where a (model, mode) has several."""
    name = f"{row.mode}-{dataset}-{row.model}"
    key = paper.teacher_key(row.mode, row.teacher)
    return name if key in NO_TEACHER_FLAG else f"{name}-{key.replace('@', '-')}"


# ---------------------------------------------------------------- the commands


def forwarded(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The resource flags given on our command line, for tune and reproduce."""
    flags = []
    for dest in FORWARDED_RESOURCES:
        value = getattr(args, dest)
        if value is not None and value != parser.get_default(dest):
            flags += [f"--{dest.replace('_', '-')}", str(value)]
    return flags


def tune_flags(args: argparse.Namespace) -> list[str]:
    optional = {
        "--epochs": args.epochs,
        "--num-samples": args.num_samples,
        "--data-dir": args.data_dir,
    }
    flags = [
        part for flag, value in optional.items() if value is not None for part in (flag, str(value))
    ]
    return flags + (["--download"] if args.download else [])


def tune_step(
    stage: str, name: str, mode_args: list[str], args: argparse.Namespace, resources: list[str]
) -> Step:
    argv = (
        *TFKD,
        "tune",
        *mode_args,
        "--dataset",
        args.dataset,
        "--name",
        name,
        "--experiment",
        name,
        *(["--resume"] if sweep_folder_exists(args.storage, name) else []),  # after a failure
        *tune_flags(args),
        *resources,
    )
    return Step(stage, name, name, store.SWEEP, argv)


def baseline_step(model: str, args: argparse.Namespace, resources: list[str]) -> Step:
    name = f"{BASELINE}-{args.dataset}-{model}"
    return tune_step(
        "teacher/baseline", name, ["--mode", BASELINE, "--model", model], args, resources
    )


def teacher_run_name(dataset: str, model: str) -> str:
    return f"{TEACHER_RUN}-{dataset}-{model}"


def snapshot_epochs(rows: Iterable[paper.PaperRow]) -> dict[str, list[int]]:
    """De-KD teacher model -> the epochs of its snapshots the rows use (resnet18: [1])."""
    needed: dict[str, set[int]] = {}
    for row in rows:
        if row.mode == DEFECTIVE:
            model, _, alias = paper.teacher_key(row.mode, row.teacher).partition("@")
            needed.setdefault(model, set()).add(int(alias.removeprefix("epoch-")))
    return {model: sorted(epochs) for model, epochs in needed.items()}


def teacher_step(
    model: str, epochs: list[int], args: argparse.Namespace, resources: list[str]
) -> Step:
    """One baseline run with the original's values whose snapshots are registered together."""
    if args.epochs is not None and max(epochs) > args.epochs:
        raise UserError(
            f"--epochs {args.epochs}: the De-KD rows need the epoch-{max(epochs)} snapshot of "
            f"{model}; give --epochs {max(epochs)} or more, or leave out --modes {DEFECTIVE}"
        )
    snapshots = ",".join(map(str, epochs))
    argv = ["--mode", BASELINE, "--model", model, "--fixed", "--snapshot-epochs", snapshots]
    return tune_step("De-KD teacher", teacher_run_name(args.dataset, model), argv, args, resources)


def teacher_flag(row: paper.PaperRow, dataset: str) -> list[str]:
    """--teacher as the row needs it; a De-KD teacher names the suite's teacher run."""
    key = paper.teacher_key(row.mode, row.teacher)
    if key in NO_TEACHER_FLAG:
        return []
    if row.mode == DEFECTIVE:
        return ["--teacher", f"{key}:{teacher_run_name(dataset, key.partition('@')[0])}"]
    return ["--teacher", key]


def mode_step(row: paper.PaperRow, args: argparse.Namespace, resources: list[str]) -> Step:
    teacher = teacher_flag(row, args.dataset)
    return tune_step(
        "sweep",
        sweep_name(args.dataset, row),
        ["--mode", row.mode, "--model", row.model, *teacher],
        args,
        resources,
    )


def reproduce_step(sweep: Step, args: argparse.Namespace, resources: list[str]) -> Step:
    argv = (
        *TFKD,
        "reproduce",
        "--experiment",
        sweep.experiment,
        "--sweep",
        sweep.marker,
        "--seeds",
        str(args.seeds),
        "--top",
        str(args.top),
        *resources,
    )
    return Step(
        "reproduce",
        sweep.experiment,
        f"{SET_PREFIX}{sweep.experiment}",
        store.REPRODUCTION_SET,
        argv,
    )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Step]:
    """Baselines and De-KD teacher runs (teachers first needed), then the other sweeps, then
    the reproductions."""
    rows = chosen_rows(args)
    resources = forwarded(args, parser)
    baselines = _unique(
        [r.model for r in rows if r.mode == BASELINE]
        + [teacher_model(r) for r in rows if teacher_model(r) and r.mode != DEFECTIVE]
    )
    baseline_steps = {m: baseline_step(m, args, resources) for m in baselines}
    teacher_steps = [teacher_step(m, e, args, resources) for m, e in snapshot_epochs(rows).items()]
    sweeps = [mode_step(r, args, resources) for r in rows if r.mode != BASELINE]
    compared = [baseline_steps[r.model] for r in rows if r.mode == BASELINE] + sweeps
    return [
        *baseline_steps.values(),
        *teacher_steps,
        *sweeps,
        *(reproduce_step(s, args, resources) for s in compared),
    ]


def finished(mlflow_client: Any, step: Step) -> bool:
    """MLflow holds a FINISHED run of the step's kind and name in the step's experiment."""
    experiment = store.experiment_id(mlflow_client, step.experiment)
    if experiment is None:
        return False
    return bool(
        store.runs_of_kind(
            mlflow_client, [experiment], step.kind, status=store.FINISHED, name=step.marker
        )
    )


def mark_done(steps: Sequence[Step], uri: str) -> list[Step]:
    mlflow_client = store.client(uri)
    if mlflow_client is None:
        return list(steps)
    return [replace(step, done=finished(mlflow_client, step)) for step in steps]


# ---------------------------------------------------------- ImageNet (the seed's ImageNet_train)

# The seed's ImageNet experiments (ImageNet_train/readme.md) as (paper's model, mode, teacher):
# planned whether or not analysis/paper_results.csv has rows for them.
SEED_IMAGENET = (
    ("resnet18", "tfkd_self", paper.SELF),
    ("resnet18", "kd", "densenet121"),
    ("resnext101_32x8d", "tfkd_self", paper.SELF),
    ("resnet18", "tfkd_reg", ""),
    ("resnext101_32x8d", "tfkd_reg", ""),
    ("resnet18", "lsr", ""),
    ("densenet121", "lsr", ""),
)


def imagenet_experiments() -> list[tuple[str, str, str]]:
    """The paper's ImageNet rows and the seed's experiments, plus the baseline of every student
    (what each is compared with), baselines first."""
    rows = [(r.model, r.mode, r.teacher) for r in paper.rows_for("imagenet")] + list(SEED_IMAGENET)
    students = _unique(model for model, _, _ in rows)
    return list(dict.fromkeys([*((m, BASELINE, "") for m in students), *rows]))


def paper_note(dataset: str, model: str, mode: str, teacher: str) -> str:
    row = paper.match(dataset, model, mode, teacher)
    return f"paper {row.accuracy:.2f}% ({row.table})" if row else "no paper value"


def imagenet_step(
    model: str, mode: str, teacher: str, args: argparse.Namespace, resources: list[str]
) -> Step:
    """torchvision's architecture (tv_<name>) trained with the original's ImageNet recipe;
    teachers are torchvision's pretrained weights, as in the original (tfkd_self: its own)."""
    source = model if teacher == paper.SELF else teacher
    teacher_flag = ["--teacher", f"{source}@torchvision"] if source else []
    suffix = f"-{teacher}" if teacher and teacher != paper.SELF else ""
    step = tune_step(
        "sweep",
        f"{mode}-{args.dataset}-{model}{suffix}",
        ["--mode", mode, "--model", f"tv_{model}", *teacher_flag],
        args,
        resources,
    )
    return replace(step, note=paper_note(args.dataset, model, mode, teacher))


def imagenet_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Step]:
    """The sweeps (baselines first), then their reproductions; no teacher sweeps: the teachers
    are pretrained. Models and modes are chosen by the paper's names (resnet18, ...)."""
    experiments = [
        (model, mode, teacher)
        for model, mode, teacher in imagenet_experiments()
        if (args.models is None or model in args.models)
        and (args.modes is None or mode in args.modes)
    ]
    if not experiments:
        known = ", ".join(_unique(m for m, _, _ in imagenet_experiments()))
        raise UserError(f"no imagenet experiment for these --models / --modes; models: {known}")
    resources = forwarded(args, parser)
    sweeps = [imagenet_step(*e, args, resources) for e in experiments]
    reproductions = [replace(reproduce_step(s, args, resources), note=s.note) for s in sweeps]
    return [*sweeps, *reproductions]


# name of a dataset -> its own planner (others: `plan`, from the paper's rows)
DATASET_PLANS = {"imagenet": imagenet_plan}


def datasets() -> list[str]:
    """The datasets of the paper's tables (and of the seed's own plans) that tfkd has."""
    return sorted(({row.dataset for row in paper.load()} | set(DATASET_PLANS)) & set(data.names()))


# ---------------------------------------------------------------- running


def show(steps: Sequence[Step], dataset: str) -> None:
    done = sum(step.done for step in steps)
    say(f"paper suite for {dataset}: {len(steps)} steps, {done} already done (skipped)")
    for number, step in enumerate(steps, start=1):
        note = f"  # {step.note}" if step.note else ""
        print(
            f"{number:3d}. [{'skip: done' if step.done else 'run'}] {step.command}{note}",
            flush=True,
        )


def execute(steps: Sequence[Step]) -> tuple[Step, int] | None:
    """Run the steps not done, in order; the first failure stops the suite: returns it and its
    exit status (None when every step ran)."""
    todo = [s for s in steps if not s.done]
    for number, step in enumerate(todo, start=1):
        say(f"({number}/{len(todo)}) {step.stage}: {step.command}")
        code = subprocess.run(list(step.argv), check=False).returncode
        if code != 0:
            return step, code
    say("paper suite complete")
    return None


def suite(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Step, int] | None:
    """The plan `tfkd paper-suite`'s flags ask for (`parser`: their defaults), shown, then run
    unless --dry-run; returns the failed step and its exit status, if one failed."""
    if args.experiment or args.no_tracking:
        raise UserError(
            "--experiment / --no-tracking: the suite gives every sweep its own "
            "MLflow experiment and needs tracking to know what is done"
        )
    planner = DATASET_PLANS.get(args.dataset, plan)
    steps = mark_done(planner(args, parser), tracking_uri(args.mlflow_uri))
    show(steps, args.dataset)
    return None if args.dry_run else execute(steps)
