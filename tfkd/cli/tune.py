"""`tfkd tune` (and tune_main.py): parse, prepare (validate everything), run, report.

Every user error (flag, search-space file, data, teacher, server, cluster) is found before Ray
starts and reported as one line on stderr with exit status 2.

Architecture: this module only parses, prepares and reports. What it shares with the other
commands (exit codes, the resource and store flags) is in tfkd.cli.flags; the plan (flags ->
trial config, search space, rungs, name) in tfkd.sweep.plan; where the teacher comes from in
tfkd.sweep.teachers; storage checks in tfkd.sweep.storage; the sweep itself in tfkd.sweep (Ray)
and its runs in tfkd.tracking (MLflow).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tfkd.cli import outcome, saved_flags
from tfkd.cli.flags import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
)
from tfkd.cli.parser import PROG, TuneArgs, build_parser, parse_args
from tfkd.core.errors import UserError
from tfkd.sweep import cluster, ray_support, state_files, storage, teachers
from tfkd.sweep import status as progress
from tfkd.sweep.plan import Plan, make_plan

if TYPE_CHECKING:
    from tfkd.core.data import Dataset


def _user_error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _unexpected(prog: str, error: Exception, name: str | None) -> int:
    """An error tfkd did not foresee: one line naming it and the log that holds its traceback."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    log = cache / "tfkd" / "errors" / f"{name or 'tune_main'}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(traceback.format_exception(error)))
    said = (str(error).splitlines() or [""])[0]
    print(
        f"{prog}: error: {error.__class__.__name__}: {said} (the traceback is in {log})",
        file=sys.stderr,
    )
    return EXIT_FAILED


def teacher_run_name(student: str) -> str:
    """The name of the teacher run that --train-teacher starts for sweep `student`: fixed, so
    that the student's --resume continues an interrupted teacher run instead of starting over."""
    return f"{student}-teacher"


def _teacher_args(args: TuneArgs, teacher: teachers.Teacher, student: str) -> TuneArgs:
    """The baseline run that --train-teacher starts for sweep `student`: fixed recipe, snapshot
    if asked for, under the student's data, protocol, resources, retries and tracking settings.

    Its interruption prints the student's command (`continues`), which resumes both.
    """
    snapshot = (
        (int(teacher.alias.removeprefix("epoch-")),) if teacher.alias.startswith("epoch-") else ()
    )
    name = teacher_run_name(student)
    resume = args.resume and storage.sweep_folder_exists(args.storage, name)
    given = {key: getattr(args, key) for key in _FORWARDED}
    teacher_args = build_parser(prog=args.prog).parse_args(
        [
            *f"--mode baseline --dataset {args.dataset} --model {teacher.model} --fixed".split(),
            *["--data-dir", args.data_dir, "--storage", args.storage, "--seed", str(args.seed)],
            *["--name", name, *(["--resume"] if resume else [])],
            *(["--epochs", str(args.epochs)] if args.epochs else []),
            *(["--snapshot-epochs", ",".join(map(str, snapshot))] if snapshot else []),
            *[f"--set={pair}" for pair in args.set if pair.split("=")[0] in _SHARED_KEYS],
            *_flags_of(given),
        ]
    )
    return TuneArgs(**vars(teacher_args), prog=args.prog, continues=(args, student))


# what the teacher run shares with its student (argparse dest -> its flag): where things are,
# the protocol it is evaluated under, the resources and retries of its trial, tracking settings
_FORWARDED = {
    "mlflow_uri": "--mlflow-uri",
    "protocol": "--protocol",
    "gpus_per_trial": "--gpus-per-trial",
    "cpus_per_trial": "--cpus-per-trial",
    "workers_per_trial": "--workers-per-trial",
    "max_failures": "--max-failures",
    "tracking_grace": "--tracking-grace",
    "system_metrics": "--system-metrics",
    "address": "--address",
    "download": "--download",
    "verbose": "--verbose",
}


def _flags_of(given: dict) -> list[str]:
    """The command-line words that set `given` ({dest: value}; None and False: left out)."""
    words: list[str] = []
    for key, value in given.items():
        if value is True:
            words.append(_FORWARDED[key])
        elif value is not None and value is not False:
            words += [_FORWARDED[key], str(value)]
    return words


# --set keys the teacher run takes from its student: the data, where it trains, and the warm-up
# of the schedule whose length (--epochs) it shares
_SHARED_KEYS = ("fake_size", "val_fraction", "split_seed", "device", "loader", "warmup_epochs")


@dataclass(frozen=True)
class Prepared:
    args: TuneArgs
    plan: Plan
    dataset: Dataset
    mlflow_uri: str | None
    teacher: teachers.Teacher | None
    teacher_accuracy: float | None  # on the validation split; None without a teacher (yet)
    lock: storage.SweepLock


def prepare(args: TuneArgs) -> Prepared:
    """Validate everything a sweep needs, before anything starts."""
    cluster.enable_token_auth(args.address)
    plan = make_plan(args)  # first: its mistakes are answered before torch is imported
    from tfkd.core import train
    from tfkd.tracking import system_metrics

    storage.check_storage(args.storage, plan.name, args.resume)
    system_metrics.check_available(args.system_metrics)
    ray_support.check_ray(args.workers_per_trial)
    if args.address:
        cluster.check_cluster_reachable(args.address)
    dataset = train.dataset_of(plan.config)
    mlflow_uri = None
    if not args.no_tracking:
        from tfkd import tracking

        mlflow_uri = tracking.resolve_uri(args.mlflow_uri)
        tracking.check_location(mlflow_uri)  # reachable and writable
        tracking.check_new_sweep(mlflow_uri, plan.experiment, plan.name, args.resume)
    teacher = teachers.resolve(teachers.TeacherRequest.from_args(args), mlflow_uri)
    if teacher is not None and not teacher.location:  # --train-teacher: its run's flags too
        _teacher_run_error(lambda: make_plan(_teacher_args(args, teacher, plan.name)))
    plan, teacher_accuracy = _attach_teacher(plan, teacher, dataset, mlflow_uri)
    _check_resume_flags(args, plan)
    lock = storage.SweepLock(args.storage, plan.name)  # last: every check has passed
    try:  # the state a running sweep is writing is not checked (the lock refused that above)
        unchecked = _check_resume_state(args, plan, mlflow_uri)
    except UserError:
        lock.release()
        raise
    if unchecked:
        print(unchecked, file=sys.stderr, flush=True)
    return Prepared(args, plan, dataset, mlflow_uri, teacher, teacher_accuracy, lock)


def _check_resume_state(args: TuneArgs, plan: Plan, mlflow_uri: str | None) -> str | None:
    """--resume loads only the state files tfkd left: their digests, recorded on the sweep's
    MLflow run at the end of its last session, must match (UserError otherwise, before anything
    is unpickled). A session that never ended (a killed driver) recorded none: not refused, and
    the warning to say so is returned."""
    if not args.resume:
        return None
    found = state_files.state_digests(storage.join(args.storage, plan.name))
    if not found:
        return None  # Tune saved nothing: the sweep starts afresh
    from tfkd.tracking import state

    record = state.recorded_state(mlflow_uri, plan.experiment, plan.name) if mlflow_uri else None
    if record is None or not record.current:
        why = "its last session ended without recording them" if record else "none are recorded"
        return (
            f"{args.prog}: warning: --resume: the state files of sweep {plan.name} are not "
            f"checked ({why}: the driver was killed, or the sweep is not tracked)"
        )
    changed = record.mismatches(found)
    if changed:
        raise UserError(
            f"--resume: {len(changed)} state file(s) of sweep {plan.name} are not the ones tfkd "
            f"left at the end of its session {record.session} ({', '.join(changed[:3])}); "
            "nothing was loaded: put back the files tfkd wrote, or start a new sweep under "
            "another --name"
        )
    return None


def _check_resume_flags(args: TuneArgs, plan: Plan) -> None:
    """--resume refuses flags that differ from the sweep's start; a new sweep saves its own."""
    experiment_dir = storage.local_experiment_dir(args.storage, plan.name)
    current = saved_flags.sweep_flags(args, plan.config, plan.space.text)
    saved_flags.check_or_save(experiment_dir, args.resume, current)


def _attach_teacher(
    plan: Plan, teacher: teachers.Teacher | None, dataset: Dataset, uri: str | None
) -> tuple[Plan, float | None]:
    """The plan with the teacher's location in its config, and the teacher's accuracy."""
    if teacher is None or not teacher.location:
        return plan, None
    config, accuracy = teachers.attach(teacher, plan.config, plan.first_trial(), dataset, uri)
    return replace(plan, config=config), accuracy


def _sweep_tags(args: TuneArgs, plan: Plan, teacher: teachers.Teacher | None) -> dict[str, str]:
    return {
        "mode": args.mode,
        "dataset": plan.config["dataset"],
        "model": plan.config["model"],
        "teacher": f"{teacher.model}@{teacher.alias}" if teacher else "",
        "teacher_location": teacher.location if teacher else "",
        **(teacher.tags() if teacher else {}),
        "search_alg": "fixed" if plan.fixed else args.search_alg,
        "search_space": plan.space.text,
        "search_space_file": str(plan.space.path),
        "epochs": str(plan.first_trial()["epochs"]),
        "preset_provenance": plan.preset_provenance,
        "num_samples": str(args.num_samples),
        "protocol": plan.config["protocol"],
        "metric": plan.metric,
    }


def announce(plan: Plan, prepared: Prepared) -> None:
    """Where the sweep goes: analysis commands and --resume take these names."""
    for warning in plan.warnings:
        print(f"{prepared.args.prog}: {warning}", file=sys.stderr, flush=True)
    tracked = f"MLflow experiment {plan.experiment}" if prepared.mlflow_uri else "not tracked"
    where = storage.join(prepared.args.storage, plan.name)
    print(f"[tfkd] sweep {plan.name} ({tracked}; results in {where})", flush=True)
    if plan.fixed and plan.preset_provenance != "original":
        print(f"[tfkd] --fixed: {plan.preset_provenance}", flush=True)
    teacher = prepared.teacher
    if teacher is not None and teacher.location:
        print(f"[tfkd] {teacher.describe()}", flush=True)


# print_registered names every version a teacher run registered up to this many (a single
# trial's final weights and a few snapshots); a baseline sweep's trials register one or more
# each, hundreds in a large sweep, so beyond it the line gives each kind's version numbers as a
# span and the version the --teacher hint picks.
LISTED_VERSIONS = 4


def print_registered(plan: Plan, mlflow_uri: str) -> None:
    """One line naming the teacher versions a baseline run registered, and how to use them."""
    from tfkd import tracking

    model, dataset = plan.config["model"], plan.config["dataset"]
    found = tracking.registered_by(mlflow_uri, dataset, model, plan.name)
    if not found:
        return  # nothing registered yet (writes still queued): the summary says what is pending
    runs = list(dict.fromkeys(v.run_id for v in found))  # one for a teacher run; a sweep's trials
    if len(found) > LISTED_VERSIONS:
        print(_registered_summary(found, runs, plan, mlflow_uri), flush=True)
        return
    versions = ", ".join(f"version {v.version} ({v.alias})" for v in found)
    alias = next((f"@{v.alias}" for v in found if v.kind == "snapshot"), "")
    print(
        f"[tfkd] registered teacher {found[0].name}: {versions} of teacher run {plan.name} "
        f"(MLflow run{'s' * (len(runs) > 1)} {', '.join(runs)}); use it with --teacher "
        f"{model}{alias}:{plan.name}",
        flush=True,
    )


def _registered_summary(found: list, runs: list[str], plan: Plan, mlflow_uri: str) -> str:
    """The registered line of a run with many versions: how many, each kind's version numbers
    (`_span`), and the hints, with the version `--teacher MODEL:RUN` gets (the run's final
    weights that rank first) where the registry can say."""
    model = plan.config["model"]
    by_alias: dict[str, list[int]] = {"final": []}
    for version in found:
        by_alias.setdefault(version.alias, []).append(int(version.version))
    kinds = ", ".join(
        f"{'final weights' if alias == 'final' else f'{alias} snapshots'} as {_span(numbers)}"
        for alias, numbers in by_alias.items()
        if numbers
    )
    hints = [f"--teacher {model}@{alias}:{plan.name}" for alias in by_alias if alias != "final"]
    if by_alias["final"]:
        hints.insert(0, f"--teacher {model}:{plan.name}{_picked(plan, mlflow_uri)}")
    where = f"MLflow run {runs[0]}" if len(runs) == 1 else f"{len(runs)} MLflow runs"
    return (
        f"[tfkd] registered teacher {found[0].name}: {len(found)} versions of teacher run "
        f"{plan.name} from {where}: {kinds}; use it with {' or '.join(hints)}"
    )


def _picked(plan: Plan, mlflow_uri: str) -> str:
    """' (version 17, MLflow run ID)': the version `--teacher MODEL:RUN` resolves to; '' when
    the registry cannot say."""
    from tfkd import tracking

    teacher = f"{plan.config['model']}:{plan.name}"
    try:
        picked = tracking.registered_teacher(mlflow_uri, plan.config["dataset"], teacher, "")
    except UserError:
        return ""
    return f" (version {picked.version}, MLflow run {picked.run_id})"


def _span(numbers: list[int]) -> str:
    """'versions 1-256' (consecutive), 'version 3', 'versions 3, 7' (up to three), else
    '256 versions between 2 and 512' (a sweep's trials register side by side)."""
    low, high, count = min(numbers), max(numbers), len(numbers)
    if count == 1:
        return f"version {low}"
    if high - low == count - 1:
        return f"versions {low}-{high}"
    if count <= 3:
        return f"versions {', '.join(map(str, sorted(numbers)))}"
    return f"{count} versions between {low} and {high}"


def _teacher_run_error(step):
    """`step()`, with its user error (a bad flag, value, folder) as one line naming the teacher
    run that --train-teacher starts."""
    try:
        return step()
    except (UserError, ValueError, OSError) as exc:
        said = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"--train-teacher: the teacher's baseline run: {said}") from None


def train_missing_teacher(prepared: Prepared) -> tuple[int, Prepared]:
    """--train-teacher: train a teacher the registry lacks (a baseline run), then attach it.

    Returns the baseline run's exit status and the prepared sweep with its teacher in place.
    """
    if prepared.teacher is None or prepared.teacher.location:
        return EXIT_OK, prepared
    args = prepared.args
    print(f"[tfkd] training the teacher {prepared.teacher.model} first (--train-teacher)")
    teacher_args = _teacher_args(args, prepared.teacher, prepared.plan.name)
    teacher_sweep = _teacher_run_error(lambda: prepare(teacher_args))
    try:
        code = run_prepared(teacher_sweep)
    finally:
        teacher_sweep.lock.release()
    if code != EXIT_OK:
        return code, prepared
    teacher = teachers.resolve(teachers.TeacherRequest.from_args(args), prepared.mlflow_uri)
    plan, accuracy = _attach_teacher(prepared.plan, teacher, prepared.dataset, prepared.mlflow_uri)
    return EXIT_OK, replace(prepared, plan=plan, teacher=teacher, teacher_accuracy=accuracy)


def run_prepared(prepared: Prepared) -> int:
    from tfkd import tracking
    from tfkd.sweep import tuner
    from tfkd.sweep.spec import SweepSpec, resource_options

    code, prepared = train_missing_teacher(prepared)
    if code != EXIT_OK:
        return code
    args = prepared.args
    plan, teacher_accuracy = prepared.plan, prepared.teacher_accuracy
    announce(plan, prepared)
    with tracking.sweep_run(
        prepared.mlflow_uri,
        plan.experiment,
        plan.name,
        _sweep_tags(args, plan, prepared.teacher),
        register_teachers=args.mode == "baseline",
        dataset=plan.config["dataset"],
        model=plan.config["model"],
        snapshot_epochs=args.snapshot_epochs,
        child_tags=prepared.teacher.tags() if prepared.teacher else {},
        resume=args.resume,
        outbox_root=storage.local_experiment_dir(args.storage, plan.name),
        system_metrics=args.system_metrics,
        grace_s=args.tracking_grace,
    ) as context:
        if teacher_accuracy is not None:
            tracking.log_sweep_metrics(context, {"teacher_val_accuracy": teacher_accuracy})
        spec = SweepSpec(
            name=plan.name,
            base_config=plan.config,
            space=plan.space,
            search_alg=args.search_alg,
            num_samples=args.num_samples,
            grace_period=args.grace_period,
            rungs=plan.rungs,
            search_seed=args.search_seed,
            metric=plan.metric,
            fixed=plan.fixed,
            tracking=context,
            first_point=plan.first_point,
            verbose=args.verbose,
            **resource_options(args),
        )
        result = tuner.run_sweep(spec, prepared.dataset)
    code = outcome.print_outcome(result, plan, args)
    if context is not None and args.mode == "baseline":
        print_registered(plan, context.uri)
    if context is not None and code == EXIT_OK and _sweep_files_sent(context, result):
        outcome.print_comparison(context)
    return code


def _sweep_files_sent(context, result) -> bool:
    """Whether the sweep run's writes (its trials.html among them) reached MLflow: the link to
    compare the trials is printed only then."""
    from tfkd import tracking

    return str(tracking.sweep_outbox(context)) not in result.tracking_pending


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """The tune command; `prog` is how the user ran it ("tune_main.py", "tfkd tune"): its
    messages start with it and the command that continues an interrupted sweep repeats it."""
    args = parse_args(argv, prog)
    cluster.treat_sigterm_as_ctrl_c()
    progress.configure_driver(args.verbose)
    try:
        prepared = prepare(args)
    except (UserError, ValueError, OSError) as exc:
        return _user_error(prog, str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
    except KeyboardInterrupt:  # while checking: nothing started
        return outcome.interrupted(args, args.name)
    except Exception as exc:
        return _unexpected(prog, exc, args.name)
    try:
        with cluster.session(args.address):
            return run_prepared(prepared)
    except UserError as exc:
        return _user_error(prog, str(exc).splitlines()[0])
    except KeyboardInterrupt:  # before Tune's handler, or a second Ctrl-C cut its stop short
        return outcome.interrupted(args, prepared.plan.name)
    except Exception as exc:
        return _unexpected(prog, exc, prepared.plan.name)
    finally:
        prepared.lock.release()
