"""The trial configuration: one flat dict of plain values, validated once into a frozen object.

The same dict travels through YAML, Ray Tune's param space and MLflow params, so every value is a
plain str/int/float/bool. `TrialConfig.from_dict` rejects unknown keys and out-of-range values with
a `ValueError` that names the key.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tfkd.core import catalog, coordinates

CUDA_GRAPHS = ("auto", "off", "capture", "compile")  # how CUDA runs the step (tfkd.core.steps)
OPTIMIZER_NAMES = ("sgd", "adam")  # tfkd.core.recipe.OPTIMIZERS builds them
#: the keys a dataset's (and model's) recipe decides (tfkd.core.recipe): a preset written for
#: another dataset does not carry them over
RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_batch",
    "optimizer",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "lr_milestones",
    "lr_gamma",
    "image_size",
    "eval_batch_size",
)


def _positive(value: float) -> bool:
    """greater than 0"""
    return value > 0


def _non_negative(value: float) -> bool:
    """0 or more"""
    return value >= 0


def _above_one(value: float) -> bool:
    return value > 1


def _unit_open(value: float) -> bool:
    """strictly between 0 and 1"""
    return 0 < value < 1


def _unit_closed(value: float) -> bool:
    """between 0 and 1"""
    return 0 <= value <= 1


def _half_open_unit(value: float) -> bool:
    """at least 0 and below 1"""
    return 0 <= value < 1


def _one_of(*choices: str) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value in choices

    check.__doc__ = "one of " + ", ".join(choices)
    return check


def _registered(kind: str) -> Callable[[str], bool]:
    """Validate a name against a registry, imported lazily to keep this module light."""

    def check(value: str) -> bool:
        return value in registry_names(kind)

    check.__doc__ = f"a registered {kind}"
    return check


# kind -> (module, Registry attribute) of the registries tfkd.core.catalog does not read
_REGISTRIES = {"protocol": ("tfkd.core.protocol", "PROTOCOLS")}


def registry_names(kind: str) -> list[str]:
    """Names registered for `kind` (mode, model, dataset, semantics, loader or protocol); the
    torch-backed registries' are read from their source until they are imported
    (tfkd.core.catalog), so that a config is checked before torch is imported."""
    if kind in catalog.SOURCES:
        return catalog.names(kind)
    module, attribute = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attribute).names()


def _device_name(value: str) -> bool:
    """auto, cpu, cuda or cuda:N"""
    return value in ("auto", "cpu", "cuda") or value.startswith("cuda:")


def _milestones(value: str) -> bool:
    """increasing fractions between 0 and 1, e.g. 0.3,0.6,0.8"""
    try:
        fractions = parse_milestones(value)
    except ValueError:
        return False
    return all(0 < f < 1 for f in fractions) and fractions == sorted(fractions)


def parse_milestones(value: str) -> list[float]:
    """'0.3,0.6,0.8' -> [0.3, 0.6, 0.8] (fractions of the schedule)."""
    return [float(part) for part in str(value).split(",") if part.strip()]


def _meta(check: Callable[[Any], bool] | None = None, doc: str = "") -> dict:
    return {"check": check, "doc": doc}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Defaults follow the paper's CIFAR recipe."""

    mode: str = field(metadata=_meta(_registered("mode"), "teacher mode"))
    model: str = field(default="resnet18", metadata=_meta(_registered("model"), "student model"))
    dataset: str = field(default="cifar100", metadata=_meta(_registered("dataset"), "dataset"))
    data_dir: str = field(default="./data", metadata=_meta(None, "dataset root folder"))
    download: bool = field(default=False, metadata=_meta(None, "download CIFAR if missing"))
    val_fraction: float = field(default=0.1, metadata=_meta(_half_open_unit, "held-out share"))
    split_seed: int = field(default=0, metadata=_meta(_non_negative, "seed of the val split"))
    protocol: str = field(
        default="holdout",
        metadata=_meta(
            _registered("protocol"), "what chooses the reported epoch (tfkd.core.protocol)"
        ),
    )
    fake_size: int = field(default=2048, metadata=_meta(_positive, "size of the fake set"))
    epochs: int = field(default=200, metadata=_meta(_positive, "full schedule length"))
    batch_size: int = field(default=128, metadata=_meta(_positive, "training batch size"))
    lr: float = field(default=0.1, metadata=_meta(_positive, "learning rate at batch lr_batch"))
    lr_factor: float = field(
        default=1.0, metadata=_meta(_positive, "the searched factor on the recipe's rate")
    )
    lr_batch: int = field(
        default=128, metadata=_meta(_positive, "batch size that lr is given for (lr scales)")
    )
    optimizer: str = field(
        default="sgd", metadata=_meta(_one_of(*OPTIMIZER_NAMES), "optimiser (adam: the cnn's)")
    )
    momentum: float = field(default=0.9, metadata=_meta(_half_open_unit, "SGD momentum"))
    weight_decay: float = field(default=5e-4, metadata=_meta(_non_negative, "SGD weight decay"))
    warmup_epochs: int = field(default=1, metadata=_meta(_non_negative, "linear warm-up"))
    lr_milestones: str = field(
        default="0.3,0.6,0.8", metadata=_meta(_milestones, "learning-rate milestones")
    )
    lr_gamma: float = field(default=0.2, metadata=_meta(_unit_open, "decay at each milestone"))
    temperature: float = field(default=20.0, metadata=_meta(_positive, "softmax temperature"))
    alpha: float = field(default=0.95, metadata=_meta(_unit_closed, "weight of the KL term"))
    multiplier: float = field(default=1.0, metadata=_meta(_positive, "extra KL factor"))
    correct_prob: float = field(default=0.99, metadata=_meta(_unit_open, "virtual teacher p"))
    epsilon: float = field(default=0.1, metadata=_meta(_half_open_unit, "label smoothing"))
    semantics: str = field(
        default="reference", metadata=_meta(_registered("semantics"), "loss form")
    )
    seed: int = field(default=0, metadata=_meta(_non_negative, "init/shuffle/augment seed"))
    teacher: str = field(default="", metadata=_meta(None, "teacher model name (informative)"))
    teacher_checkpoint: str = field(default="", metadata=_meta(None, "teacher weights file"))
    device: str = field(default="auto", metadata=_meta(_device_name, "device"))
    amp: bool = field(default=True, metadata=_meta(None, "bf16 autocast on CUDA"))
    channels_last: bool = field(default=True, metadata=_meta(None, "channels_last on CUDA"))
    compile: bool = field(default=False, metadata=_meta(None, "torch.compile the student"))
    cuda_graphs: str = field(
        default="auto", metadata=_meta(_one_of(*CUDA_GRAPHS), "graph-captured step on CUDA")
    )
    gpu_share: float = field(
        default=1.0, metadata=_meta(_positive, "share of a GPU the trial holds (set by search)")
    )
    loader: str = field(default="device", metadata=_meta(_registered("loader"), "input pipeline"))
    augment: str = field(default="default", metadata=_meta(None, "augmentations or 'default'"))
    num_workers: int = field(default=0, metadata=_meta(_non_negative, "classic loader workers"))
    image_size: int = field(
        default=224, metadata=_meta(_positive, "crop size of image-folder datasets")
    )
    eval_batch_size: int = field(default=1000, metadata=_meta(_positive, "evaluation batch"))
    divergence_factor: float = field(
        default=1000.0, metadata=_meta(_above_one, "loss / first epoch's loss that fails a trial")
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialConfig:
        """Validate a flat dict; unknown keys, wrong types and out-of-range values raise.

        Search coordinates (tfkd.core.coordinates: kd_share, smoothing, ...) are turned into
        the fields they set, given the rest of the config (its dataset's number of classes);
        a field given beside a coordinate that sets it must agree with it.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        if "mode" not in values:
            raise ValueError("config key 'mode' is required")
        as_given = values
        values, declared = _mode_keys(values)
        searched = set(coordinates.names())
        unknown = sorted(set(values) - set(known) - searched)
        if unknown:
            raise ValueError(
                f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(keys())}"
            )
        given = {k: v for k, v in values.items() if k not in searched}
        config = cls._checked(given, known)
        axes = {k: v for k, v in values.items() if k in searched}
        if axes:
            decided = coordinates.fields_of(axes, config)
            _check_agreement(as_given, decided)
            fields = {k: v for k, v in decided.items() if k in known}
            config = cls._checked({**given, **fields}, known)
            declared |= _mode_values(
                config.mode, {k: v for k, v in decided.items() if k not in known}
            )
        object.__setattr__(config, "_mode_values", declared)
        _check_protocol_split(config)
        _check_warmup(config)
        return config

    @classmethod
    def _checked(cls, values: Mapping[str, Any], known: Mapping[str, dataclasses.Field]):
        coerced = {name: _coerce(known[name], value) for name, value in values.items()}
        for name, value in coerced.items():
            _check(known[name], value)
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        """The flat dict: the core keys and the keys the mode declares (defaults filled in)."""
        return {**dataclasses.asdict(self), **self.__dict__.get("_mode_values", {})}

    def __getattr__(self, name: str) -> Any:
        """A key the mode declares (tfkd.core.modes.base.Param), read like a core key."""
        values = self.__dict__.get("_mode_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"TrialConfig has no key {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrialConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self.to_dict().items())))

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    @property
    def scaled_lr(self) -> float:
        """The linear scaling rule times the searched factor: lr x lr_factor x batch_size /
        lr_batch (128 for CIFAR, 256 ImageNet)."""
        return self.lr * self.lr_factor * self.batch_size / self.lr_batch


def _check_protocol_split(config: TrialConfig) -> None:
    """A protocol that trains on the full training set has no validation split to carve."""
    from tfkd.core import protocol

    if protocol.get(config.protocol).full_training_set and config.val_fraction != 0:
        raise ValueError(
            f"config key 'val_fraction' = {config.val_fraction!r} contradicts protocol "
            f"{config.protocol!r}, which trains on the full training set: set val_fraction=0 "
            "or use protocol 'holdout'"
        )


def _check_warmup(cfg: TrialConfig) -> None:
    """The warm-up must end before the schedule does (else the full rate is never trained)."""
    if cfg.warmup_epochs >= cfg.epochs:
        raise ValueError(
            f"config key 'warmup_epochs' = {cfg.warmup_epochs} is not below epochs = {cfg.epochs}: "
            "the schedule would end before the full learning rate is reached; set "
            "warmup_epochs=0 (--set warmup_epochs=0) or train more epochs"
        )


def core_keys() -> list[str]:
    """The keys every mode shares (TrialConfig's fields)."""
    return [f.name for f in dataclasses.fields(TrialConfig)]


def keys() -> list[str]:
    """Every key a config dict may hold: the fields, the search coordinates that set some of them
    (tfkd.core.coordinates), and the keys that modes declare (each valid with its own mode
    only; read from their source until the modes are imported: tfkd.core.catalog)."""
    return core_keys() + coordinates.names() + catalog.names("mode key")


def check_core_values(values: Mapping[str, Any]) -> None:
    """Check the values of the core keys among `values` (their type and range), with nothing
    else of the config; ValueError names the first bad one. The command line checks --set with
    this before torch is imported (a mode's own keys are checked by the mode, later)."""
    fields = {f.name: f for f in dataclasses.fields(TrialConfig)}
    for key, value in values.items():
        if key in fields:
            _check(fields[key], _coerce(fields[key], value))


def _mode_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split off the keys the config's mode declares, validated, with their defaults filled in.

    A key another mode declares is refused with the mode it belongs to. The mode's own keys
    are its business (tfkd.core.modes.base.Param): config.py never lists them.
    """
    from tfkd.core import modes

    mode = values["mode"]
    own = modes.params_of(mode) if isinstance(mode, str) else {}
    foreign = sorted(set(values) & set(modes.declared_keys()) - set(own))
    if foreign:
        owners = modes.declared_keys()
        raise ValueError(
            "config key(s) "
            + ", ".join(f"'{k}' (mode {owners[k]})" for k in foreign)
            + f" do not belong to mode {mode!r}; remove them or change the mode"
        )
    declared = {k: p.validate(values[k]) if k in values else p.default for k, p in own.items()}
    return {k: v for k, v in values.items() if k not in own}, declared


def _mode_values(mode: str, decided: Mapping[str, float]) -> dict[str, Any]:
    """The mode's own keys that its coordinates set, validated as the mode declares them."""
    from tfkd.core import modes

    own = modes.params_of(mode)
    return {k: own[k].validate(v) for k, v in decided.items()}


def _check_agreement(given: Mapping[str, Any], decided: Mapping[str, float]) -> None:
    """A field given beside the coordinate that sets it must agree (a reproduction may log
    both)."""
    for key, value in decided.items():
        if key in given and not math.isclose(float(given[key]), value, rel_tol=1e-6):
            raise ValueError(
                f"config key '{key}' = {given[key]!r} disagrees with the searched coordinates "
                f"(which set it to {value:.6g}); give one or the other"
            )


def key_types() -> dict[str, type]:
    from tfkd.core import modes

    declared = {k: modes.get(owner).params for k, owner in modes.declared_keys().items()}
    mode_types = {k: next(p.type for p in ps if p.name == k) for k, ps in declared.items()}
    return {f.name: _field_type(f) for f in dataclasses.fields(TrialConfig)} | mode_types


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Accept what YAML, Ray and MLflow hand back (ints for floats, numpy scalars, None for '')."""
    kind = _field_type(f)
    if value is None and kind is str:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"config key '{f.name}' must be {_TYPE_NAMES[kind]}, got {value!r}")


def _check(f: dataclasses.Field, value: Any) -> None:
    check = f.metadata.get("check")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key '{f.name}' must be finite, got {value!r}")
    if check is not None and not check(value):
        expected = f.metadata.get("doc", "")
        rule = check.__doc__ or check.__name__.strip("_").replace("_", " ")
        raise ValueError(f"config key '{f.name}' = {value!r} is out of range ({expected}: {rule})")
