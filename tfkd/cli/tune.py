"""tune_main.py's command line: parse, prepare (validate everything), run, report.

Every user error (flag, search-space file, data, teacher, server, cluster) is found before Ray
starts and reported as one line on stderr with exit status 2.

Architecture: this module only parses, prepares and reports. What it shares with the analysis/
commands (exit codes, the resource and store flags, dataset loading with one-line errors) is in
tfkd.cli.flags; where the teacher comes from in tfkd.cli.teachers; storage checks in
tfkd.sweep.storage; the sweep itself in tfkd.sweep (Ray) and its runs in tfkd.tracking (MLflow).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tfkd.cli import flags, saved_flags, teachers
from tfkd.cli.flags import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LazyModule,
    Parser,
    positive_int,
)
from tfkd.core import atomic
from tfkd.core.config import WEIGHTS, TrialConfig
from tfkd.core.config import keys as config_keys
from tfkd.core.errors import UserError
from tfkd.sweep import cluster, rungs, search_space, storage
from tfkd.sweep import status as progress

# torch-backed registries: imported after the command line is parsed (tfkd.cli.flags.LazyModule)
data = LazyModule("tfkd.core.data")
models = LazyModule("tfkd.core.models")
modes = LazyModule("tfkd.core.modes")
recipe = LazyModule("tfkd.core.recipe")
# The flags whose values name a registry entry, and the registry's module.
_NAMED = {"mode": modes, "dataset": data, "model": models}
_SMOKE_TEST = {
    "dataset": "fake",
    "model": "resnet8",
    "epochs": 2,
    "num_samples": 2,
    "fake_size": 512,
}


def _epochs_list(text: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 1,50, got {text!r}") from None
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected positive epochs like 1,50, got {text!r}")
    return epochs


def _modes_epilog() -> str:
    """Every registered mode with its description, for --help."""
    width = max(len(name) for name in modes.names())
    lines = [f"  {name:<{width}}  {modes.get(name).description}" for name in modes.names()]
    return "teacher modes (--mode):\n" + "\n".join(lines)


def build_parser(registries: bool = True) -> argparse.ArgumentParser:
    """tune_main's parser; without `registries`, --mode, --dataset and --model take any name
    (`parse_args` checks them after parsing: the registries import torch)."""

    def names(flag: str) -> list[str] | None:
        return _NAMED[flag].names() if registries else None

    parser = Parser(
        prog="tune_main.py",
        description="Hyper-parameter search for Teacher-free Knowledge Distillation and its "
        "comparison modes (Ray Tune + Optuna + ASHA, tracked in MLflow).",
        epilog=_modes_epilog() if registries else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--mode", required=True, choices=names("mode"), help="teacher mode (listed below)"
    )
    what.add_argument("--dataset", required=True, choices=names("dataset"), help="dataset")
    what.add_argument(
        "--model",
        default="resnet18",
        choices=names("model"),
        help="student model (default resnet18)",
    )
    what.add_argument(
        "--teacher",
        default=None,
        help="teacher for kd/rekd/dekd: a model name, found in the MLflow "
        "registry as tfkd-<dataset>-<model>@best; NAME@epoch-N takes a "
        "snapshot (tfkd_self uses the student's own architecture)",
    )
    what.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="PATH",
        help="teacher weights file (overrides the registry)",
    )
    what.add_argument(
        "--teacher-run",
        default=None,
        metavar="RUN_ID",
        help="take the teacher weights of this MLflow run",
    )
    what.add_argument(
        "--train-teacher",
        action="store_true",
        help="train the teacher first (a baseline run) if it is not registered",
    )
    what.add_argument(
        "--snapshot-epochs",
        type=_epochs_list,
        default=(),
        help="baseline: also register the weights at these epochs as "
        "aliases epoch-N (e.g. 1,50: Defective-KD teachers)",
    )
    what.add_argument(
        "--data-dir",
        default=TrialConfig.data_dir,
        help=f"dataset root (default {TrialConfig.data_dir})",
    )
    what.add_argument("--download", action="store_true", help="download CIFAR if missing")

    how = parser.add_argument_group("search")
    how.add_argument(
        "--search-space",
        default=None,
        metavar="PATH",
        help="search-space YAML (default search_spaces/<mode>.yaml)",
    )
    how.add_argument(
        "--num-samples",
        type=positive_int,
        default=8,
        help="trials (default 8; TPE models once num_samples/8 of them, at least 1, have finished)",
    )
    how.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="the full schedule and ASHA's max_t (default 200)",
    )
    how.add_argument(
        "--grace-period",
        type=positive_int,
        default=None,
        help="ASHA with geometric rungs at N, 2N, 4N, ... epochs instead of --rungs",
    )
    how.add_argument(
        "--rungs",
        default=",".join(rungs.DEFAULT_RUNGS),
        help="ASHA judges at these points of the lr schedule: warmup, beforeK (the last epoch "
        "before drop K), afterK (the first after it); default %(default)s",
    )
    how.add_argument(
        "--search-alg",
        choices=("optuna", "random", "grid"),
        default="optuna",
        help="optuna (multivariate TPE seeded by --search-seed; default), random or grid",
    )
    how.add_argument(
        "--fixed",
        action="store_true",
        help="no search: one trial with the original implementation's values "
        "for this model (the mode's defaults when it has none)",
    )
    how.add_argument(
        "--seed", type=int, default=0, help="the trials' seed: initial weights, order (default 0)"
    )
    how.add_argument("--search-seed", type=int, default=0, help="the sampler's seed (default 0)")
    how.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trial config key (repeatable); fixes a searched key",
    )
    how.add_argument(
        "--name",
        default=None,
        help="the sweep's name: its results folder and MLflow run (default "
        "mode-dataset-model-YYYYMMDD-HHMMSS; an existing name needs --resume)",
    )
    how.add_argument(
        "--resume", action="store_true", help="continue the sweep --name after an interruption"
    )
    how.add_argument(
        "--verbose",
        action="store_true",
        help="also show every trial's own output (its per-epoch lines) besides the status table",
    )
    how.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny everything (fake data, resnet8, 2 epochs, 2 trials)",
    )
    flags.add_resource_args(parser)
    return parser


# ---------------------------------------------------------------- validation


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, values typed as YAML would type them."""
    out: dict[str, Any] = {}
    known = config_keys()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in known:
            raise UserError(f"--set {key}: unknown config key; known keys: {', '.join(known)}")
        out[key] = yaml.safe_load(value) if value.strip() else ""
    return out


def _apply_smoke_test(args: argparse.Namespace) -> dict[str, Any]:
    """--smoke-test: fake data, resnet8, 2 epochs, 2 trials; returns the extra config."""
    args.dataset, args.model = _SMOKE_TEST["dataset"], _SMOKE_TEST["model"]
    args.epochs, args.num_samples = _SMOKE_TEST["epochs"], _SMOKE_TEST["num_samples"]
    return {"fake_size": _SMOKE_TEST["fake_size"]}


def _base_config(
    args: argparse.Namespace,
    space: search_space.SearchSpace,
    extra: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Fixed trial config: defaults < the space's defaults < the dataset's recipe < preset's
    unsearched values < --smoke-test < --set."""
    teacher = teachers.TeacherRequest.from_args(args).architecture
    preset = {**recipe.dataset_defaults(args.dataset), **space.preset_for(args.model, teacher)}
    # --set ce_weight/kl_weight decide alpha and multiplier: the preset's would contradict them
    decided = set(space.params) | (
        {"alpha", "multiplier"} if set(WEIGHTS) & set(overrides) else set()
    )
    config = {
        "mode": args.mode,
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": str(Path(args.data_dir).expanduser().resolve()),
        "download": args.download,
        "seed": args.seed,
        "teacher": teacher,
        **{k: v for k, v in {**space.defaults, **preset}.items() if k not in decided},
        **extra,
        **overrides,
    }
    if args.epochs is not None:
        config["epochs"] = args.epochs
    return TrialConfig.from_dict(config).to_dict()


@dataclass(frozen=True)
class Plan:
    """A validated sweep, ready to start."""

    name: str
    experiment: str
    config: dict[str, Any]
    space: search_space.SearchSpace
    first_point: dict[str, Any]
    fixed: bool
    rungs: tuple[int, ...] = ()  # the epochs ASHA judges at (none with --grace-period)

    def first_trial(self) -> dict[str, Any]:
        """The complete config of the first trial (the preset's point of the search)."""
        return {**self.config, **self.first_point}


def make_plan(args: argparse.Namespace) -> Plan:
    teachers.check_request(teachers.TeacherRequest.from_args(args))
    extra = _apply_smoke_test(args) if args.smoke_test else {}
    overrides = _parse_overrides(args.set)
    path = args.search_space or search_space.default_path(args.mode)
    space = search_space.load(path, args.mode)
    space = space.without(overrides)
    config = _base_config(args, space, extra, overrides)
    first = _first_point(args, space)
    first_trial = TrialConfig.from_dict({**config, **first})  # the first trial must be valid
    if first_trial.val_fraction == 0:
        raise UserError(
            "--set val_fraction=0: a sweep chooses and stops trials on the validation split, so "
            "it needs one (e.g. 0.1); val_fraction=0 is for reproductions (analysis.reproduce)"
        )
    judged_at = _rung_epochs(args, first_trial.to_dict())
    if not args.fixed:
        config = {k: v for k, v in config.items() if k not in space.sets()}
    what = f"{args.mode}-{config['dataset']}-{config['model']}"
    return Plan(
        name=_sweep_name(args, what),
        experiment=args.experiment or what,
        config=config,
        space=space,
        first_point=first,
        fixed=args.fixed,
        rungs=judged_at,
    )


def _rung_epochs(args: argparse.Namespace, config: Mapping[str, Any]) -> tuple[int, ...]:
    """--rungs as epochs of this schedule; none when --grace-period asks for geometric rungs."""
    if args.grace_period is not None or args.fixed:
        return ()
    try:
        return rungs.epochs_of(rungs.parse(args.rungs), config)
    except rungs.RungError as exc:
        raise UserError(str(exc)) from None


def _first_point(args: argparse.Namespace, space: search_space.SearchSpace) -> dict[str, Any]:
    """The search's first point: the preset's values, else the dataset's recipe, else the
    space's defaults (the ImageNet recipe's weight decay, not the CIFAR default)."""
    teacher = teachers.TeacherRequest.from_args(args).architecture
    first = space.first_point(args.model, teacher)
    preset = space.preset_for(args.model, teacher)
    dataset = recipe.dataset_defaults(args.dataset)
    return {k: preset.get(k, dataset.get(k, v)) for k, v in first.items()}


def _sweep_name(args: argparse.Namespace, what: str) -> str:
    """--name, else a new unique mode-dataset-model-YYYYMMDD-HHMMSS: sweeps never mix."""
    if args.name:
        return args.name
    if args.resume:
        raise UserError("--resume needs --name NAME: the sweep to continue (tune_main printed it)")
    return storage.timestamped(what, lambda name: storage.sweep_folder_exists(args.storage, name))


def _user_error(message: str) -> int:
    print(f"tune_main.py: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------- preparing and running


def _teacher_args(args: argparse.Namespace, teacher: teachers.Teacher) -> argparse.Namespace:
    """The baseline run that --train-teacher starts: fixed recipe, snapshot if asked for."""
    snapshot = (
        (int(teacher.alias.removeprefix("epoch-")),) if teacher.alias.startswith("epoch-") else ()
    )
    return build_parser().parse_args(
        [
            *f"--mode baseline --dataset {args.dataset} --model {teacher.model} --fixed".split(),
            *["--data-dir", args.data_dir, "--storage", args.storage, "--seed", str(args.seed)],
            *(["--epochs", str(args.epochs)] if args.epochs else []),
            *(["--snapshot-epochs", ",".join(map(str, snapshot))] if snapshot else []),
            *(["--mlflow-uri", args.mlflow_uri] if args.mlflow_uri else []),
            *[f"--set={pair}" for pair in args.set if pair.split("=")[0] in _DATA_KEYS],
        ]
    )


_DATA_KEYS = ("fake_size", "val_fraction", "split_seed", "device", "loader")


@dataclass(frozen=True)
class Prepared:
    args: argparse.Namespace
    plan: Plan
    dataset: data.Dataset
    mlflow_uri: str | None
    teacher: teachers.Teacher | None
    teacher_accuracy: float | None  # on the validation split; None without a teacher (yet)
    lock: storage.SweepLock


def prepare(args: argparse.Namespace) -> Prepared:
    """Validate everything a sweep needs, before anything starts."""
    cluster.enable_token_auth(args.address)
    plan = make_plan(args)
    storage.check_storage(args.storage, plan.name, args.resume)
    flags.check_system_metrics(args.system_metrics)
    if args.address:
        cluster.check_cluster_reachable(args.address)
    dataset = flags.load_dataset(plan.config)
    mlflow_uri = None
    if not args.no_tracking:
        from tfkd import tracking

        mlflow_uri = tracking.resolve_uri(args.mlflow_uri)
        tracking.check_reachable(mlflow_uri)
        tracking.check_new_sweep(mlflow_uri, plan.experiment, plan.name, args.resume)
    teacher = teachers.resolve(teachers.TeacherRequest.from_args(args), mlflow_uri)
    plan, teacher_accuracy = _attach_teacher(plan, teacher, dataset, mlflow_uri)
    _check_resume_flags(args, plan)
    lock = storage.SweepLock(args.storage, plan.name)  # last: every check has passed
    return Prepared(args, plan, dataset, mlflow_uri, teacher, teacher_accuracy, lock)


def _check_resume_flags(args: argparse.Namespace, plan: Plan) -> None:
    """--resume refuses flags that differ from the sweep's start; a new sweep saves its own."""
    experiment_dir = storage.local_experiment_dir(args.storage, plan.name)
    current = saved_flags.sweep_flags(args, plan.config, plan.space.text)
    saved_flags.check_or_save(experiment_dir, args.resume, current)


def _attach_teacher(
    plan: Plan, teacher: teachers.Teacher | None, dataset: data.Dataset, uri: str | None
) -> tuple[Plan, float | None]:
    """The plan with the teacher's location in its config, and the teacher's accuracy."""
    if teacher is None or not teacher.location:
        return plan, None
    config, accuracy = teachers.attach(teacher, plan.config, plan.first_trial(), dataset, uri)
    return replace(plan, config=config), accuracy


def _sweep_tags(
    args: argparse.Namespace, plan: Plan, teacher: teachers.Teacher | None
) -> dict[str, str]:
    return {
        "mode": args.mode,
        "dataset": plan.config["dataset"],
        "model": plan.config["model"],
        "teacher": f"{teacher.model}@{teacher.alias}" if teacher else "",
        "teacher_location": teacher.location if teacher else "",
        "search_alg": "fixed" if plan.fixed else args.search_alg,
        "search_space": plan.space.text,
        "search_space_file": str(plan.space.path),
        "epochs": str(plan.first_trial()["epochs"]),
        "num_samples": str(args.num_samples),
    }


def train_missing_teacher(prepared: Prepared) -> tuple[int, Prepared]:
    """--train-teacher: train a teacher the registry lacks (a baseline run), then attach it.

    Returns the baseline run's exit status and the prepared sweep with its teacher in place.
    """
    if prepared.teacher is None or prepared.teacher.location:
        return EXIT_OK, prepared
    args = prepared.args
    print(f"[tfkd] training the teacher {prepared.teacher.model} first (--train-teacher)")
    teacher_sweep = prepare(_teacher_args(args, prepared.teacher))
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
    from tfkd.sweep.spec import SweepSpec

    code, prepared = train_missing_teacher(prepared)
    if code != EXIT_OK:
        return code
    args = prepared.args
    plan, teacher_accuracy = prepared.plan, prepared.teacher_accuracy
    _announce(plan, prepared)
    with tracking.sweep_run(
        prepared.mlflow_uri,
        plan.experiment,
        plan.name,
        _sweep_tags(args, plan, prepared.teacher),
        register_teachers=args.mode == "baseline",
        dataset=plan.config["dataset"],
        model=plan.config["model"],
        snapshot_epochs=args.snapshot_epochs,
        resume=args.resume,
        outbox_root=storage.local_experiment_dir(args.storage, plan.name),
        system_metrics=args.system_metrics,
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
            fixed=plan.fixed,
            tracking=context,
            first_point=plan.first_point,
            verbose=args.verbose,
            **flags.resource_options(args),
        )
        result = tuner.run_sweep(spec, prepared.dataset)
    code = _print_outcome(result, plan, args)
    if context is not None and code == EXIT_OK:
        _print_comparison(context)
    return code


MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def _print_comparison(context: Any) -> None:
    """Where MLflow's UI compares the sweep's trials (its sweep run's trials.html)."""
    from tfkd import tracking

    link = tracking.ui_link(
        context.uri, context.experiment_id, context.parent_run_id, "trials.html"
    )
    if "://" not in link.split("#")[0]:
        link = f"run `mlflow ui --backend-store-uri {context.uri}`, open {MLFLOW_UI}/{link}"
    print(f"[tfkd] compare the trials in MLflow: {link}")


def _announce(plan: Plan, prepared: Prepared) -> None:
    """Where the sweep goes: analysis commands and --resume take these names."""
    tracked = f"MLflow experiment {plan.experiment}" if prepared.mlflow_uri else "not tracked"
    where = storage.join(prepared.args.storage, plan.name)
    print(f"[tfkd] sweep {plan.name} ({tracked}; results in {where})", flush=True)
    teacher = prepared.teacher
    if teacher is not None and teacher.location:
        print(f"[tfkd] teacher {teacher.model}@{teacher.alias}: {teacher.location}", flush=True)


def _best_config_document(result: Any, plan: Plan) -> dict[str, Any]:
    config = {k: v for k, v in result.best_config.items()}
    metrics = result.best_metrics or {}
    return {
        "experiment": plan.name,
        "trial_id": result.best_trial_id,
        "metrics": {k: metrics.get(k) for k in ("epoch", "val_accuracy", "test_accuracy")},
        "searched": {k: config[k] for k in plan.space.params if k in config},
        "config": config,
    }


def _write_best_config(experiment_path: str, document: Mapping[str, Any]) -> str:
    text = yaml.safe_dump(dict(document), sort_keys=False)
    return atomic.write_bytes(storage.join(experiment_path, "best_config.yaml"), text.encode())


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, float) else str(value)


def _resume_command(args: argparse.Namespace, name: str | None) -> str:
    """The command that continues sweep `name`: the same flags, its --name, and --resume once
    its results folder exists (an interrupted --resume continues, or starts afresh when Tune
    had saved nothing); before that, the same command again."""
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    if args.name is None and name is not None:
        argv += ["--name", name]
    resumable = name is not None and storage.sweep_folder_exists(args.storage, name)
    return " ".join(["python tune_main.py", *map(shlex.quote, argv), *["--resume"] * resumable])


def _interrupted(args: argparse.Namespace, name: str | None) -> int:
    print(
        f"tune_main.py: interrupted; continue with: {_resume_command(args, name)}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _print_outcome(result: Any, plan: Plan, args: argparse.Namespace) -> int:
    """The sweep's summary; exit 0 only when every trial ran to its end."""
    if result.interrupted:
        return _interrupted(args, plan.name)
    print(
        f"[tfkd] {result.trials} trials: {result.failed} failed, "
        f"{result.stopped_early} stopped early by ASHA"
    )
    for trial_id, reason in result.failures.items():
        print(f"[tfkd] trial {trial_id} failed: {reason}")
    if result.tracking_pending:
        from tfkd import tracking

        print(
            f"[tfkd] MLflow lacks the last writes of {len(result.tracking_pending)} run(s) "
            "(tracking server unreachable); send them when it is back with: "
            f"{tracking.REPLAY_COMMAND} {shlex.quote(result.experiment_path)}"
        )
    for folder in result.tracking_refused:
        print(
            f"[tfkd] MLflow refused some writes of a run; they are kept in {folder}/refused.jsonl"
        )
    if result.best_config is None:
        print("tune_main.py: every trial failed; see the trial errors above", file=sys.stderr)
        return EXIT_FAILED
    if not result.complete:
        print(
            f"tune_main.py: {result.failed_by_infrastructure} trial(s) could not be completed "
            f"(see above); retry them with: {_resume_command(args, plan.name)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    document = _best_config_document(result, plan)
    where = _write_best_config(result.experiment_path, document)
    shown = ", ".join(f"{k} {_percent(v)}" for k, v in document["metrics"].items())
    print(f"[tfkd] best trial {result.best_trial_id}: {shown}")
    searched = " ".join(f"--set {k}={v}" for k, v in document["searched"].items())
    print(f"[tfkd] best config: {searched or '(nothing searched)'}")
    print(f"[tfkd] written to {where}")
    return EXIT_OK


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before torch, Ray or MLflow is imported; then the names of
    --mode, --dataset and --model, checked against tfkd.core's registries."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(registries=bool({"-h", "--help"} & set(argv)))
    args = parser.parse_args(argv)
    for flag, registry in _NAMED.items():
        value, known = getattr(args, flag), registry.names()
        if value not in known:
            choices = ", ".join(map(repr, known))
            parser.error(f"argument --{flag}: invalid choice: {value!r} (choose from {choices})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress.configure_driver(args.verbose)
    try:
        prepared = prepare(args)
    except (UserError, ValueError, OSError) as exc:
        return _user_error(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
    except KeyboardInterrupt:  # while checking: nothing started
        return _interrupted(args, args.name)
    try:
        with cluster.session(args.address):
            return run_prepared(prepared)
    except UserError as exc:
        return _user_error(str(exc).splitlines()[0])
    except KeyboardInterrupt:  # before Tune's handler, or a second Ctrl-C cut its stop short
        return _interrupted(args, prepared.plan.name)
    finally:
        prepared.lock.release()
