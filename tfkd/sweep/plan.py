"""From a sweep's request (its flags: tfkd.sweep.request) to a plan: the trial config, the search
space, the rungs, the sweep name.

Every mistake in the flags, the search-space file or the --set values is a `UserError` here,
before anything starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfkd.core import coordinates, protocol
from tfkd.core.config import TrialConfig, check_core_values
from tfkd.core.config import keys as config_keys
from tfkd.core.errors import UserError
from tfkd.core.lazy import modes, recipe
from tfkd.sweep import rungs, search_space, storage, teachers
from tfkd.sweep.request import SweepRequest

SMOKE_TEST: dict[str, Any] = {
    "dataset": "fake",
    "model": "resnet8",
    "epochs": 2,
    "num_samples": 2,
    "fake_size": 512,
}


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, values typed as YAML would type them; unknown keys and the core
    keys' bad values are refused here, before torch is imported (TrialConfig checks the rest)."""
    out: dict[str, Any] = {}
    known = config_keys()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in known:
            raise UserError(f"--set {key}: unknown config key; known keys: {', '.join(known)}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            problem = search_space.yaml_problem(exc)
            raise UserError(f"--set {pair}: not a valid YAML value ({problem})") from None
    try:
        check_core_values(out)
    except ValueError as exc:
        raise UserError(f"--set: {exc}") from None
    return out


def _apply_smoke_test(args: SweepRequest) -> dict[str, Any]:
    """--smoke-test: fake data, resnet8, 2 epochs, 2 trials; returns the extra config."""
    args.dataset, args.model = SMOKE_TEST["dataset"], SMOKE_TEST["model"]
    args.epochs, args.num_samples = SMOKE_TEST["epochs"], SMOKE_TEST["num_samples"]
    return {"fake_size": SMOKE_TEST["fake_size"]}


def _base_config(
    args: SweepRequest,
    space: search_space.SearchSpace,
    extra: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Fixed trial config: defaults < the space's defaults < the dataset's and model's recipe <
    preset's unsearched values (its recipe's only on the dataset it is written for) <
    --smoke-test < --set."""
    teacher = teachers.TeacherRequest.from_args(args).architecture
    preset = {**_recipe(args), **space.preset_for(args.model, teacher, args.dataset)}
    # what the searched keys and the --set keys decide (kd_share decides alpha and multiplier):
    # the defaults' and the preset's values for those would contradict them
    decided = space.sets() | set().union(*(coordinates.decided_by(args.mode, k) for k in overrides))
    unsearched = {
        k: v
        for k, v in {**space.defaults, **preset}.items()
        if not coordinates.decided_by(args.mode, k) & decided
    }
    config = {
        "mode": args.mode,
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": str(Path(args.data_dir).expanduser().resolve()),
        "download": args.download,
        "seed": args.seed,
        "teacher": teacher,
        **unsearched,
        **protocol.trial_config(args.protocol),
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
    metric: str = "val_accuracy"  # what the search, ASHA and "best" rank trials on
    warnings: tuple[str, ...] = ()  # one line each, printed before the sweep starts

    def first_trial(self) -> dict[str, Any]:
        """The complete config of the first trial (the preset's point of the search)."""
        return {**self.config, **self.first_point}

    @property
    def preset_provenance(self) -> str:
        """'original', or why the preset's values are not the original's (filled in, another
        teacher's, none); a user's search space without provenance says 'not stated'."""
        model, teacher = self.config["model"], self.config.get("teacher", "")
        dataset = self.config["dataset"]
        row = self.space.preset_row(model, teacher, dataset)
        if row and "provenance" not in row:
            return f"not stated in {self.space.path}"
        return self.space.provenance(model, teacher, dataset, fixed=self.fixed)


def make_plan(args: SweepRequest) -> Plan:
    overrides = _parse_overrides(args.set)  # first: answered before torch is imported
    teachers.check_request(teachers.TeacherRequest.from_args(args))
    extra = _apply_smoke_test(args) if args.smoke_test else {}
    path = args.search_space or search_space.default_path(args.mode)
    space = search_space.load(path, args.mode)
    space = space.without(overrides)
    config = _base_config(args, space, extra, overrides)
    fixed = args.fixed or bool(args.snapshot_epochs)  # a teacher run is one configuration
    first = _first_point(args, space, config["data_dir"], fixed)
    config = {k: v for k, v in config.items() if k not in space.sets()}  # the first point's
    first_trial = TrialConfig.from_dict({**config, **first})  # the first trial must be valid
    if first_trial.val_fraction == 0 and first_trial.protocol == "holdout":
        raise UserError(
            "--set val_fraction=0: a holdout sweep chooses and stops trials on the validation "
            "split, so it needs one (e.g. 0.1); --protocol paper trains on the full training set"
        )
    _check_snapshot_epochs(args, first_trial.epochs)
    metric, warnings = protocol.sweep_metric(args.protocol, args.metric, fixed)
    judged_at = () if fixed else _rung_epochs(args, first_trial.to_dict())
    what = f"{args.mode}-{config['dataset']}-{config['model']}"
    return Plan(
        name=_sweep_name(args, what),
        experiment=args.experiment or what,
        config=config,
        space=space,
        first_point=first,
        fixed=fixed,
        rungs=judged_at,
        metric=metric,
        warnings=warnings,
    )


def _check_snapshot_epochs(args: SweepRequest, epochs: int) -> None:
    """--snapshot-epochs makes a baseline run a teacher run: snapshots within its schedule."""
    if not args.snapshot_epochs:
        return
    given = ",".join(map(str, args.snapshot_epochs))
    if args.mode != "baseline":
        raise UserError(
            f"--snapshot-epochs {given}: only --mode baseline trains and registers teachers; "
            f"drop the flag, or run --mode baseline --snapshot-epochs {given} first"
        )
    beyond = [e for e in args.snapshot_epochs if e > epochs]
    if beyond:
        raise UserError(
            f"--snapshot-epochs {given}: epoch {beyond[0]} lies beyond the run's {epochs} epochs; "
            f"choose epochs from 1 to {epochs} or train longer (--epochs)"
        )


def _rung_epochs(args: SweepRequest, config: Mapping[str, Any]) -> tuple[int, ...]:
    """--rungs as epochs of this schedule; none when --grace-period asks for geometric rungs."""
    if args.grace_period is not None:
        return ()
    try:
        return rungs.epochs_of(rungs.parse(args.rungs), config)
    except rungs.RungError as exc:
        raise UserError(str(exc)) from None


def _first_point(
    args: SweepRequest, space: search_space.SearchSpace, data_dir: str, fixed: bool
) -> dict[str, Any]:
    """The search's first point: the preset converted to the searched coordinates, its recipe
    keys (a searched lr, say) the preset's on its own dataset, else the dataset's and model's
    recipe's. `--fixed` on the dataset the preset row is written for trains the row as written
    (the original's alpha and multiplier, not their conversion, which drops the loss scale)."""
    teacher = teachers.TeacherRequest.from_args(args).architecture
    row = space.preset_row(args.model, teacher, args.dataset)
    if fixed and row and search_space.written_for(row, args.dataset):
        return space.original_point(args.model, teacher, args.dataset, data_dir)
    first = space.first_point(args.model, teacher, args.dataset, data_dir)
    preset = space.preset_for(args.model, teacher, args.dataset)
    dataset = _recipe(args)
    return {
        k: v if coordinates.is_coordinate(k) else preset.get(k, dataset.get(k, v))
        for k, v in first.items()
    }


def _recipe(args: SweepRequest) -> dict[str, Any]:
    """The original's recipe for this dataset and model (the cnn's depends on the mode)."""
    distills = modes.get(args.mode).needs_teacher
    return recipe.recipe_defaults(args.dataset, args.model, distills)


def _sweep_name(args: SweepRequest, what: str) -> str:
    """--name, else a new unique mode-dataset-model-YYYYMMDD-HHMMSS: sweeps never mix."""
    if args.name:
        return args.name
    if args.resume:
        raise UserError("--resume needs --name NAME: the sweep to continue (tfkd tune printed it)")
    return storage.timestamped(what, lambda name: storage.sweep_folder_exists(args.storage, name))
