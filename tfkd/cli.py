"""tune_main.py's command line: parse, validate everything, then start the sweep.

Every user error (flag, search-space file, data, teacher, server, cluster) is found before Ray
starts and reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tfkd import config as trial_config
from tfkd import data, models, modes, search_space
from tfkd.errors import UserError

EXIT_OK, EXIT_ALL_FAILED, EXIT_USAGE = 0, 1, 2
MLFLOW_URI_HELP = (
    "MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
    "directory)"
)
SMOKE_TEST = {
    "dataset": "fake",
    "model": "resnet8",
    "epochs": 2,
    "num_samples": 2,
    "fake_size": 512,
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _epochs_list(text: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 1,50, got {text!r}") from None
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected positive epochs like 1,50, got {text!r}")
    return epochs


def add_resource_args(parser: argparse.ArgumentParser) -> None:
    """Cluster, resources and storage flags (shared with analysis.reproduce)."""
    group = parser.add_argument_group("cluster and resources")
    group.add_argument(
        "--gpus-per-trial",
        type=_non_negative_float,
        default=None,
        help="GPUs per trial, fractions allowed (default 0.25 when the cluster has GPUs, else 0)",
    )
    group.add_argument(
        "--cpus-per-trial", type=_non_negative_float, default=1.0, help="CPUs per trial (default 1)"
    )
    group.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=None,
        help="at most this many trials at once (default: as resources allow)",
    )
    group.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster HOST:PORT (default: RAY_ADDRESS, else a "
        "local Ray); token authentication is handled (see README)",
    )
    group.add_argument(
        "--storage",
        default="./ray_results",
        help="results folder or URI (s3://, gs://) (default ./ray_results)",
    )
    group.add_argument(
        "--mlflow-uri",
        default=None,
        help=MLFLOW_URI_HELP,
    )
    group.add_argument(
        "--experiment", default=None, help="MLflow experiment name (default: the sweep's name)"
    )
    group.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    group.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a crashed trial from its last checkpoint (default 2)",
    )


def resource_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SweepSpec fields that add_resource_args' flags set (tune_main and analysis.reproduce)."""
    return {
        "gpus_per_trial": args.gpus_per_trial,
        "cpus_per_trial": args.cpus_per_trial,
        "max_concurrent": args.max_concurrent,
        "storage": args.storage,
        "resume": args.resume,
        "max_failures": args.max_failures,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tune_main.py",
        description="Hyper-parameter search for Teacher-free Knowledge Distillation and its "
        "comparison modes (Ray Tune + Optuna + ASHA, tracked in MLflow).",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--mode", required=True, choices=modes.names(), help="teacher mode")
    what.add_argument("--dataset", required=True, choices=data.names(), help="dataset")
    what.add_argument(
        "--model",
        default="resnet18",
        choices=models.names(),
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
    what.add_argument("--data-dir", default="./data", help="dataset root (default ./data)")
    what.add_argument("--download", action="store_true", help="download CIFAR if missing")

    how = parser.add_argument_group("search")
    how.add_argument(
        "--search-space",
        default=None,
        metavar="PATH",
        help="search-space YAML (default search_spaces/<mode>.yaml)",
    )
    how.add_argument("--num-samples", type=_positive_int, default=8, help="trials (default 8)")
    how.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="the full schedule and ASHA's max_t (default 200)",
    )
    how.add_argument(
        "--grace-period",
        type=_positive_int,
        default=1,
        help="ASHA: epochs before a trial can be stopped (default 1)",
    )
    how.add_argument(
        "--search-alg",
        choices=("optuna", "random", "grid"),
        default="optuna",
        help="optuna (seeded multivariate TPE; default), random or grid",
    )
    how.add_argument(
        "--fixed",
        action="store_true",
        help="no search: one trial with the original implementation's values "
        "for this model (the mode's defaults when it has none)",
    )
    how.add_argument("--seed", type=int, default=0, help="seed of the search and the trials")
    how.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trial config key (repeatable); fixes a searched key",
    )
    how.add_argument("--name", default=None, help="experiment name (default mode-dataset-model)")
    how.add_argument(
        "--resume", action="store_true", help="continue the experiment --name after an interruption"
    )
    how.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny everything (fake data, resnet8, 2 epochs, 2 trials)",
    )
    add_resource_args(parser)
    return parser


# ---------------------------------------------------------------- validation


def enable_ray_token_auth(address: str | None) -> None:
    """Let a driver join a cluster that uses token authentication (Ray >= 2.52 default).

    Clusters started with `ray start` require a token from every driver, and Ray reads
    RAY_AUTH_MODE when it is imported: so this runs before anything imports Ray. The token itself
    comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
    """
    joining = address or os.environ.get("RAY_ADDRESS")
    token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )
    if joining and joining != "local" and token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, values typed as YAML would type them."""
    out: dict[str, Any] = {}
    known = trial_config.keys()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in known:
            raise UserError(f"--set {key}: unknown config key; known keys: {', '.join(known)}")
        out[key] = yaml.safe_load(value) if value.strip() else ""
    return out


def apply_smoke_test(args: argparse.Namespace) -> dict[str, Any]:
    """--smoke-test: fake data, resnet8, 2 epochs, 2 trials; returns the extra config."""
    args.dataset, args.model = SMOKE_TEST["dataset"], SMOKE_TEST["model"]
    args.epochs, args.num_samples = SMOKE_TEST["epochs"], SMOKE_TEST["num_samples"]
    return {"fake_size": SMOKE_TEST["fake_size"]}


def teacher_model(args: argparse.Namespace) -> str:
    """The teacher's architecture: the student's own for tfkd_self, else --teacher."""
    if modes.get(args.mode).teacher_is_student and not args.teacher:
        return args.model
    return (args.teacher or "").partition("@")[0]


def base_config(
    args: argparse.Namespace,
    space: search_space.SearchSpace,
    extra: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Fixed trial config: defaults < preset's unsearched values < --smoke-test < --set."""
    preset = space.preset_for(args.model, teacher_model(args))
    config = {
        "mode": args.mode,
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": str(Path(args.data_dir).expanduser().resolve()),
        "download": args.download,
        "seed": args.seed,
        "teacher": teacher_model(args),
        **{k: v for k, v in {**space.defaults, **preset}.items() if k not in space.params},
        **extra,
        **overrides,
    }
    if args.epochs is not None:
        config["epochs"] = args.epochs
    return trial_config.TrialConfig.from_dict(config).to_dict()


@dataclass(frozen=True)
class Plan:
    """A validated sweep, ready to start."""

    name: str
    config: dict[str, Any]
    space: search_space.SearchSpace
    first_point: dict[str, Any]
    fixed: bool

    def trial_config(self) -> dict[str, Any]:
        return {**self.config, **self.first_point}


def make_plan(args: argparse.Namespace) -> Plan:
    extra = apply_smoke_test(args) if args.smoke_test else {}
    overrides = parse_overrides(args.set)
    path = args.search_space or search_space.default_path(args.mode)
    space = search_space.load(path, args.mode)
    space = replace(space, params={k: v for k, v in space.params.items() if k not in overrides})
    config = base_config(args, space, extra, overrides)
    first = space.first_point(args.model, teacher_model(args))
    trial_config.TrialConfig.from_dict({**config, **first})  # the first trial must be valid
    if not args.fixed:
        config = {k: v for k, v in config.items() if k not in space.params}
    name = args.name or f"{args.mode}-{config['dataset']}-{config['model']}"
    return Plan(name=name, config=config, space=space, first_point=first, fixed=args.fixed)


def check_storage(storage: str, name: str, resume: bool) -> None:
    if "://" in storage:
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(storage)
        except Exception as exc:
            raise UserError(f"--storage {storage}: not usable ({exc})") from None
        return
    if resume and not (Path(storage).expanduser() / name).is_dir():
        raise UserError(
            f"--resume: no experiment {name!r} under {storage}; run it without "
            "--resume first (or fix --name / --storage)"
        )


def load_data(config: Mapping[str, Any]) -> data.Dataset:
    try:
        return data.load(
            config["dataset"],
            config["data_dir"],
            val_fraction=config.get("val_fraction", 0.1),
            seed=config.get("split_seed", 0),
            download=config.get("download", False),
            fake_size=config.get("fake_size", 2048),
        )
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None


def user_error(message: str) -> int:
    print(f"tune_main.py: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------- teachers


@dataclass(frozen=True)
class Teacher:
    """Where a sweep's teacher comes from; `location` is '' until a --train-teacher run."""

    model: str
    alias: str
    location: str


def train_teacher_command(args: argparse.Namespace, model: str, alias: str) -> str:
    snapshot = alias.removeprefix("epoch-") if alias.startswith("epoch-") else ""
    parts = [
        "python tune_main.py --mode baseline",
        f"--dataset {args.dataset}",
        f"--model {model}",
        "--fixed",
    ]
    if args.epochs:
        parts.append(f"--epochs {args.epochs}")
    if snapshot:
        parts.append(f"--snapshot-epochs {snapshot}")
    return " ".join(parts)


def resolve_teacher(args: argparse.Namespace, mlflow_uri: str | None) -> Teacher | None:
    """--teacher-checkpoint > --teacher-run > the MLflow registry (tfkd-<dataset>-<model>)."""
    mode = modes.get(args.mode)
    if not mode.needs_teacher:
        return None
    from tfkd import tracking

    model = teacher_model(args)
    alias = tracking.parse_teacher(args.teacher)[1] if args.teacher else tracking.BEST_ALIAS
    if args.teacher_checkpoint:
        path = Path(args.teacher_checkpoint).expanduser().resolve()
        if not path.exists():
            raise UserError(f"--teacher-checkpoint {path}: no such file")
        return Teacher(model, alias, str(path))
    if not model:
        raise UserError(
            f"--mode {args.mode} needs a teacher: pass --teacher MODEL (found in "
            "the MLflow registry) or --teacher-checkpoint PATH"
        )
    if mlflow_uri is None:
        raise UserError(
            f"--mode {args.mode}: without MLflow tracking the teacher must be "
            "given as --teacher-checkpoint PATH"
        )
    if args.teacher_run:
        return Teacher(model, alias, tracking.teacher_uri_from_run(mlflow_uri, args.teacher_run))
    command = train_teacher_command(args, model, alias)
    try:
        location = tracking.teacher_uri_from_registry(
            mlflow_uri, args.dataset, f"{model}@{alias}", command
        )
    except UserError:
        if not args.train_teacher:
            raise
        location = ""
    return Teacher(model, alias, location)


def teacher_args(args: argparse.Namespace, teacher: Teacher) -> argparse.Namespace:
    """The baseline run that --train-teacher starts: fixed recipe, snapshot if asked for."""
    snapshot = (
        (int(teacher.alias.removeprefix("epoch-")),) if teacher.alias.startswith("epoch-") else ()
    )
    return build_parser().parse_args(
        [
            "--mode",
            "baseline",
            "--dataset",
            args.dataset,
            "--model",
            teacher.model,
            "--fixed",
            "--name",
            f"baseline-{args.dataset}-{teacher.model}-teacher",
            "--data-dir",
            args.data_dir,
            "--storage",
            args.storage,
            "--seed",
            str(args.seed),
            *(["--epochs", str(args.epochs)] if args.epochs else []),
            *(["--snapshot-epochs", ",".join(map(str, snapshot))] if snapshot else []),
            *(["--mlflow-uri", args.mlflow_uri] if args.mlflow_uri else []),
            *[f"--set={pair}" for pair in args.set if pair.split("=")[0] in DATA_KEYS],
        ]
    )


DATA_KEYS = ("fake_size", "val_fraction", "split_seed", "device", "loader")


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class Prepared:
    args: argparse.Namespace
    plan: Plan
    dataset: data.Dataset
    mlflow_uri: str | None
    teacher: Teacher | None


def prepare(args: argparse.Namespace) -> Prepared:
    """Validate everything a sweep needs, before anything starts."""
    enable_ray_token_auth(args.address)
    plan = make_plan(args)
    check_storage(args.storage, plan.name, args.resume)
    if args.address:
        from tfkd import search

        search.check_reachable(args.address)
    dataset = load_data(plan.config)
    mlflow_uri = None
    if not args.no_tracking:
        from tfkd import tracking

        mlflow_uri = tracking.resolve_uri(args.mlflow_uri)
        tracking.check_reachable(mlflow_uri)
    return Prepared(args, plan, dataset, mlflow_uri, resolve_teacher(args, mlflow_uri))


def with_teacher(prepared: Prepared) -> tuple[Plan, float | None]:
    """Put the teacher's location in the config and measure its validation accuracy."""
    from tfkd import tracking, train

    teacher = prepared.teacher
    if teacher is None:
        return prepared.plan, None
    local = tracking.local_path(teacher.location, prepared.mlflow_uri)
    probe = {**prepared.plan.trial_config(), "teacher_checkpoint": local}
    try:
        accuracy = train.teacher_accuracy(probe, prepared.dataset)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"teacher {teacher.location}: {str(exc).splitlines()[0]}") from None
    config = {
        **prepared.plan.config,
        "teacher_checkpoint": teacher.location,
        "teacher": teacher.model,
    }
    return replace(prepared.plan, config=config), accuracy


def sweep_tags(args: argparse.Namespace, plan: Plan, teacher: Teacher | None) -> dict[str, str]:
    return {
        "mode": args.mode,
        "dataset": plan.config["dataset"],
        "model": plan.config["model"],
        "teacher": f"{teacher.model}@{teacher.alias}" if teacher else "",
        "teacher_location": teacher.location if teacher else "",
        "search_alg": "fixed" if plan.fixed else args.search_alg,
        "search_space": plan.space.text,
        "search_space_file": str(plan.space.path),
        "epochs": str(plan.trial_config()["epochs"]),
        "num_samples": str(args.num_samples),
    }


def run_prepared(prepared: Prepared) -> int:
    from tfkd import search, tracking

    args = prepared.args
    if prepared.teacher is not None and not prepared.teacher.location:
        print(f"[tfkd] training the teacher {prepared.teacher.model} first (--train-teacher)")
        code = run_prepared(prepare(teacher_args(args, prepared.teacher)))
        if code != EXIT_OK:
            return code
        prepared = replace(prepared, teacher=resolve_teacher(args, prepared.mlflow_uri))
    plan, teacher_accuracy = with_teacher(prepared)
    context = None
    if prepared.mlflow_uri:
        context = tracking.start_sweep(
            prepared.mlflow_uri,
            args.experiment or plan.name,
            plan.name,
            sweep_tags(args, plan, prepared.teacher),
            register_teachers=args.mode == "baseline",
            dataset=plan.config["dataset"],
            model=plan.config["model"],
            snapshot_epochs=args.snapshot_epochs,
            resume=args.resume,
        )
        if teacher_accuracy is not None:
            tracking.log_sweep_metrics(context, {"teacher_val_accuracy": teacher_accuracy})
    spec = search.SweepSpec(
        name=plan.name,
        base_config=plan.config,
        space=plan.space,
        search_alg=args.search_alg,
        num_samples=args.num_samples,
        grace_period=args.grace_period,
        seed=args.seed,
        fixed=plan.fixed,
        tracking=context,
        first_point=plan.first_point,
        **resource_options(args),
    )
    try:
        result = search.run_sweep(spec, prepared.dataset)
    except BaseException:
        tracking.finish_sweep(context, None, None, status="KILLED")
        raise
    return report_result(result, plan)


def best_config_document(result: Any, plan: Plan) -> dict[str, Any]:
    config = {k: v for k, v in result.best_config.items()}
    metrics = result.best_metrics or {}
    return {
        "experiment": plan.name,
        "trial_id": result.best_trial_id,
        "metrics": {k: metrics.get(k) for k in ("epoch", "val_accuracy", "test_accuracy")},
        "searched": {k: config[k] for k in plan.space.params if k in config},
        "config": config,
    }


def write_best_config(experiment_path: str, document: Mapping[str, Any]) -> str:
    text = yaml.safe_dump(dict(document), sort_keys=False)
    if "://" in experiment_path:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
        with fs.open_output_stream(f"{path}/best_config.yaml") as out:
            out.write(text.encode())
        return f"{experiment_path}/best_config.yaml"
    target = Path(experiment_path) / "best_config.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return str(target)


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, float) else str(value)


def report_result(result: Any, plan: Plan) -> int:
    print(
        f"[tfkd] {result.trials} trials: {result.failed} failed, "
        f"{result.stopped_early} stopped early by ASHA"
    )
    if result.best_config is None:
        print("tune_main.py: every trial failed; see the trial errors above", file=sys.stderr)
        return EXIT_ALL_FAILED
    document = best_config_document(result, plan)
    where = write_best_config(result.experiment_path, document)
    shown = ", ".join(f"{k} {_percent(v)}" for k, v in document["metrics"].items())
    print(f"[tfkd] best trial {result.best_trial_id}: {shown}")
    searched = " ".join(f"--set {k}={v}" for k, v in document["searched"].items())
    print(f"[tfkd] best config: {searched or '(nothing searched)'}")
    print(f"[tfkd] written to {where}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepared = prepare(args)
    except (UserError, ValueError, OSError) as exc:
        return user_error(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
    from tfkd import search

    try:
        with search.session(args.address):
            return run_prepared(prepared)
    except UserError as exc:
        return user_error(str(exc).splitlines()[0])
