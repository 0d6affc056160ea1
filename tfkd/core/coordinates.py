"""Search coordinates: the axes a search varies that are not trial config fields, and the fields
they set. One place knows, for each mode, how its coordinates become alpha and multiplier.

Why coordinates: the losses keep the original's fields (alpha, multiplier, temperature,
correct_prob, epsilon, semantics), whose meaning changes with the number of classes K and whose
axes are confounded (alpha and the multiplier both move both terms; their common scale acts as
a learning-rate multiplier). A search varies coordinates that mean the same at any K, each
moving the loss in its own way, and every mode's loss has total scale 1 (the learning rate is
searched as the field `lr_factor`, for every mode):

* ``kd_share`` (kd, rekd, dekd, tfkd_self; any semantics): lambda in [0, 1],
  L = (1 - lambda) CE + lambda T^2 KL_batchmean(p_T^teacher || p_T^student)   (Hinton et al.
  2015: the per-sample KL, whose size does not shrink with K). alpha = lambda and multiplier =
  K under semantics "reference" (its KL is a mean over batch x classes), 1 under "paper".
* ``kd_share`` (tfkd_reg, semantics "paper", Eq. 9 of Yuan et al. 2020): the same form with the
  virtual teacher p^d_T: L = (1 - lambda) CE + lambda T^2 KL_batchmean(p^d_T || softmax(z/T)).
  Eq. 9 has no T^2, so multiplier = T^2: lambda is the KL weight over T^2, the one combination
  of weight and T the gradient depends on (at the temperatures used, it is proportional to
  kl_weight / T^2).
* ``smoothing`` (tfkd_reg, semantics "reference", the original's form): that loss is label
  smoothing towards u = softmax(p^d / T) at a loss scale (1 - alpha) + alpha m / K. At scale 1
  the target is (1 - w) onehot + w u, i.e. label smoothing with epsilon = w (1 - u_y), where u_y
  is u's true-class mass: `smoothing` is that epsilon (the mass moved off the true class, the
  lsr mode's epsilon), so alpha = w = smoothing / (1 - u_y) and multiplier = K. temperature and
  correct_prob then change nothing but w.
* ``kd_share``, ``nckd_ratio`` (dkd, Zhao et al. 2022): L = (1 - lambda) CE + w_e lambda (NCKD
  + TCKD / r), i.e. dkd_ce = 1 - lambda, dkd_beta = lambda, dkd_alpha = lambda / r: lambda shares
  the loss between the CE and NCKD, and r = beta / alpha is the ratio the authors tune (8 for most
  CIFAR-100 pairs). NCKD's gradient dwarfs TCKD's, so the scale is set by CE and NCKD alone: with
  r inside the normalisation, (TCKD + r NCKD) / (1 + r), r moved the step as the learning rate
  does (cosine 0.95 at K = 100, tests/test_search_science.py measures it); the authors' own form
  CE + alpha TCKD + beta NCKD, CE fixed at 1, makes beta the loss scale. Their CE 1, alpha 1,
  beta 8 is lambda 8/9, r 8 at a loss scale 9, which the coordinates drop (the learning rate is
  searched instead).
* ``ce_weight``, ``kl_weight`` (any mode; the coordinates of older sweeps, still read):
  ce_weight CE + kl_weight KL, alpha = 1 - ce_weight, multiplier = kl_weight / alpha.

`fields_of` maps coordinates to fields (TrialConfig.from_dict calls it); `coordinates_of` maps a
config back (analysis places trials on the searched axes; presets are converted with it) and says
the loss scale the config had, which the coordinates drop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfkd.core.registry import Registry

if TYPE_CHECKING:
    from tfkd.core.config import TrialConfig

#: datasets with a fixed number of classes
FIXED_CLASSES = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200, "digits": 10, "fake": 10}
#: image-folder datasets: their classes are the folders of <data_dir>/train; the count when the
#: folder is not there (None: it must be there)
FOLDER_CLASSES: dict[str, int | None] = {"imagenet": 1000, "folder": None}


def num_classes(dataset: str, data_dir: str = "") -> int:
    """K, the number of classes of `dataset` (an image folder's: its class folders)."""
    if dataset in FIXED_CLASSES:
        return FIXED_CLASSES[dataset]
    if dataset not in FOLDER_CLASSES:
        raise ValueError(
            f"the number of classes of dataset {dataset!r} is unknown to "
            "tfkd.core.coordinates (add it to FIXED_CLASSES or FOLDER_CLASSES)"
        )
    train = Path(data_dir or ".").expanduser() / "train"
    if train.is_dir():
        found = [e for e in os.listdir(train) if not e.startswith(".") and (train / e).is_dir()]
        if len(found) >= 2:
            return len(found)
    fallback = FOLDER_CLASSES[dataset]
    if fallback is None:
        raise ValueError(
            f"dataset {dataset!r}: its number of classes is the number of class folders in "
            f"{train}, which holds none; set data_dir to the dataset's root"
        )
    return fallback


def classes_of(cfg: TrialConfig) -> int:
    return num_classes(cfg.dataset, cfg.data_dir)


#: semantics -> the factor that turns its KL reduction into the per-sample (batchmean) KL:
#: "reference" averages over batch x classes (K times smaller), "paper" over the batch.
PER_SAMPLE_FACTOR: dict[str, Callable[[int], float]] = {
    "reference": lambda k: float(k),
    "paper": lambda k: 1.0,
}


@dataclass(frozen=True)
class Converted:
    """A config in a coordinate's terms: the coordinate values and the loss scale they drop."""

    values: dict[str, float]
    scale: float  # the config's loss = scale x the loss the coordinates give at scale 1


@dataclass(frozen=True)
class Coordinate:
    """Searched axes (given together) that set some trial config fields.

    `to_fields(values, cfg)`: the fields, given the rest of the config (its dataset's K, its
    temperature, ...); `from_fields(cfg)`: the inverse, for any config of the mode.
    `semantics`: the loss forms it is defined for (empty: every form).
    """

    names: tuple[str, ...]
    sets: tuple[str, ...]
    to_fields: Callable[[Mapping[str, float], TrialConfig], dict[str, float]]
    from_fields: Callable[[TrialConfig], Converted]
    doc: str
    semantics: tuple[str, ...] = ()


# ---------------------------------------------------------------- the mappings


def kd_share_to_fields(values: Mapping[str, float], cfg: TrialConfig) -> dict[str, float]:
    """kd_share lambda -> alpha = lambda, multiplier = K (reference) or 1 (paper)."""
    share = _share(values["kd_share"])
    return {"alpha": share, "multiplier": PER_SAMPLE_FACTOR[cfg.semantics](classes_of(cfg))}


def kd_share_of(cfg: TrialConfig) -> Converted:
    """(alpha, multiplier) of a KD loss -> lambda and the scale (1 - alpha) + alpha m / factor."""
    soft = cfg.alpha * cfg.multiplier / PER_SAMPLE_FACTOR[cfg.semantics](classes_of(cfg))
    return _share_of(1.0 - cfg.alpha, soft, "kd_share")


def virtual_kd_share_to_fields(values: Mapping[str, float], cfg: TrialConfig) -> dict[str, float]:
    """tfkd_reg's paper form: kd_share lambda -> alpha = lambda, multiplier = T^2."""
    return {"alpha": _share(values["kd_share"]), "multiplier": cfg.temperature**2}


def virtual_kd_share_of(cfg: TrialConfig) -> Converted:
    """tfkd_reg's paper form: lambda = (alpha m / T^2) / ((1 - alpha) + alpha m / T^2)."""
    return _share_of(1.0 - cfg.alpha, cfg.alpha * cfg.multiplier / cfg.temperature**2, "kd_share")


def virtual_teacher_true_mass(temperature: float, correct_prob: float, k: int) -> float:
    """u_y: the true-class mass of the virtual teacher u = softmax(p^d / T) on K classes."""
    off = (1.0 - correct_prob) / (k - 1)
    return 1.0 / (1.0 + (k - 1) * math.exp((off - correct_prob) / temperature))


def smoothing_to_fields(values: Mapping[str, float], cfg: TrialConfig) -> dict[str, float]:
    """tfkd_reg's reference form: smoothing eps -> alpha = eps / (1 - u_y), multiplier = K."""
    k = classes_of(cfg)
    epsilon = float(values["smoothing"])
    off_true = 1.0 - virtual_teacher_true_mass(cfg.temperature, cfg.correct_prob, k)
    if not 0.0 <= epsilon <= off_true:
        raise ValueError(
            f"config key 'smoothing' = {epsilon!r} is out of range: the virtual teacher at "
            f"temperature {cfg.temperature:g}, correct_prob {cfg.correct_prob:g} on {k} classes "
            f"moves at most {off_true:.4g} off the true class; choose 0 to {off_true:.4g}"
        )
    return {"alpha": epsilon / off_true, "multiplier": float(k)}


def smoothing_of(cfg: TrialConfig) -> Converted:
    """tfkd_reg's reference form: eps = w (1 - u_y), w = (alpha m / K) / scale."""
    k = classes_of(cfg)
    share = _share_of(1.0 - cfg.alpha, cfg.alpha * cfg.multiplier / k, "w")
    off_true = 1.0 - virtual_teacher_true_mass(cfg.temperature, cfg.correct_prob, k)
    return Converted({"smoothing": share.values["w"] * off_true}, share.scale)


def dkd_share_to_fields(values: Mapping[str, float], cfg: TrialConfig) -> dict[str, float]:
    """kd_share lambda, nckd_ratio r -> dkd_ce = 1 - lambda, dkd_beta = lambda, dkd_alpha =
    lambda / r."""
    share, ratio = _share(values["kd_share"]), float(values["nckd_ratio"])
    if not ratio > 0:
        raise ValueError(f"config key 'nckd_ratio' = {ratio!r} is out of range (above 0)")
    return {"dkd_ce": 1.0 - share, "dkd_alpha": share / ratio, "dkd_beta": share}


def dkd_share_of(cfg: TrialConfig) -> Converted:
    """(dkd_ce, dkd_alpha, dkd_beta) -> lambda = beta / (dkd_ce + beta), r = beta / alpha, at
    the scale dkd_ce + beta (infinite r: NCKD without TCKD)."""
    alpha, beta = cfg.dkd_alpha, cfg.dkd_beta
    share = _share_of(cfg.dkd_ce, beta, "kd_share")
    ratio = beta / alpha if alpha > 0 else math.inf
    return Converted({**share.values, "nckd_ratio": ratio}, share.scale)


def loss_weights_to_fields(values: Mapping[str, float], cfg: TrialConfig) -> dict[str, float]:
    """ce_weight, kl_weight -> alpha = 1 - ce_weight, multiplier = kl_weight / alpha."""
    ce, kl = values["ce_weight"], values["kl_weight"]
    if not 0 <= ce < 1 or kl <= 0:
        raise ValueError(
            f"config keys ce_weight = {ce!r}, kl_weight = {kl!r} are out of range "
            "(ce_weight: at least 0 and below 1; kl_weight: greater than 0)"
        )
    return {"alpha": 1.0 - ce, "multiplier": kl / (1.0 - ce)}


def loss_weights_of(cfg: TrialConfig) -> Converted:
    """(alpha, multiplier) -> ce_weight = 1 - alpha, kl_weight = alpha m (scale not defined: 1)."""
    return Converted({"ce_weight": 1.0 - cfg.alpha, "kl_weight": cfg.alpha * cfg.multiplier}, 1.0)


def _share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"config key 'kd_share' = {value!r} is out of range (0 to 1)")
    return float(value)


def _share_of(hard: float, soft: float, name: str) -> Converted:
    scale = hard + soft
    return Converted({name: soft / scale if scale > 0 else 0.0}, scale)


# ---------------------------------------------------------------- the registry

KD_SHARE = Coordinate(
    ("kd_share",),
    ("alpha", "multiplier"),
    kd_share_to_fields,
    kd_share_of,
    "the KD share lambda: (1 - lambda) CE + lambda T^2 KL_batchmean (Hinton)",
)
VIRTUAL_KD_SHARE = Coordinate(
    ("kd_share",),
    ("alpha", "multiplier"),
    virtual_kd_share_to_fields,
    virtual_kd_share_of,
    "the KL weight over T^2 of Eq. 9: (1 - lambda) CE + lambda T^2 KL_batchmean(p^d_T || .)",
    semantics=("paper",),
)
SMOOTHING = Coordinate(
    ("smoothing",),
    ("alpha", "multiplier"),
    smoothing_to_fields,
    smoothing_of,
    "the label smoothing towards the virtual teacher: the target's mass off the true class",
    semantics=("reference",),
)
LOSS_WEIGHTS = Coordinate(
    ("ce_weight", "kl_weight"),
    ("alpha", "multiplier"),
    loss_weights_to_fields,
    loss_weights_of,
    "ce_weight CE + kl_weight KL (older sweeps' coordinates)",
)
DKD_SHARE = Coordinate(
    ("kd_share", "nckd_ratio"),
    ("dkd_ce", "dkd_alpha", "dkd_beta"),
    dkd_share_to_fields,
    dkd_share_of,
    "DKD's share lambda and NCKD/TCKD ratio r: (1 - lambda) CE + lambda (NCKD + TCKD / r)",
)
#: coordinates every mode accepts (old runs' params hold them)
COMMON: tuple[Coordinate, ...] = (LOSS_WEIGHTS,)

#: mode -> its own coordinates (a mode without an entry has only COMMON's)
MODE_COORDINATES: Registry[tuple[Coordinate, ...]] = Registry("mode with coordinates")


def register(coordinates: tuple[Coordinate, ...], *modes: str) -> None:
    """Give each of `modes` these coordinates (once per mode)."""
    for mode in modes:
        MODE_COORDINATES.add(mode, coordinates)


register((KD_SHARE,), "kd", "rekd", "dekd", "tfkd_self")
register((SMOOTHING, VIRTUAL_KD_SHARE), "tfkd_reg")
register((DKD_SHARE,), "dkd")


def of_mode(mode: str) -> tuple[Coordinate, ...]:
    """The coordinates a config of `mode` may give."""
    own = MODE_COORDINATES.get(mode) if mode in MODE_COORDINATES else ()
    return own + COMMON


def names() -> list[str]:
    """Every coordinate name of every mode (config keys besides the fields)."""
    everywhere = [c for mode in MODE_COORDINATES for c in MODE_COORDINATES.get(mode)] + list(COMMON)
    return sorted({name for c in everywhere for name in c.names})


def coordinate(mode: str, name: str, semantics: str | None = None) -> Coordinate:
    """The coordinate `name` of `mode` (under `semantics`, when it depends on it)."""
    for candidate in of_mode(mode):
        if name in candidate.names and (
            semantics is None or not candidate.semantics or semantics in candidate.semantics
        ):
            return candidate
    owners = sorted(m for m in MODE_COORDINATES for c in MODE_COORDINATES.get(m) if name in c.names)
    own = [n for c in of_mode(mode) for n in c.names if c not in COMMON]
    form = f" under semantics {semantics!r}" if semantics else ""
    raise ValueError(
        f"config key {name!r} is not a coordinate of mode {mode!r}{form} (its coordinates: "
        f"{', '.join(own) or 'none'}; {name} belongs to {', '.join(owners) or 'no mode'})"
    )


def decided_by(mode: str, key: str) -> set[str]:
    """The config fields a key decides: a coordinate's fields, or the field itself."""
    for candidate in of_mode(mode):
        if key in candidate.names:
            return set(candidate.sets)
    return {key}


def is_coordinate(key: str) -> bool:
    return key in names()


def as_number(name: str, value: Any) -> float:
    """A coordinate's value from YAML, Ray, numpy or MLflow (a string) as a finite float."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"config key '{name}' must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"config key '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"config key '{name}' must be finite, got {value!r}")
    return number


def fields_of(values: Mapping[str, Any], cfg: TrialConfig) -> dict[str, float]:
    """The trial config fields the coordinates in `values` set, given the rest of the config
    `cfg` (built without them). Coordinates given together are given whole; two that set the
    same field are refused."""
    given = {k: as_number(k, v) for k, v in values.items()}
    fields: dict[str, float] = {}
    done: set[str] = set()
    for name in given:
        if name in done:
            continue
        found = coordinate(cfg.mode, name, cfg.semantics)
        missing = [n for n in found.names if n not in given]
        if missing:
            raise ValueError(
                f"config key '{name}' needs '{missing[0]}' too (together they set "
                f"{' and '.join(found.sets)})"
            )
        clash = sorted(set(found.sets) & set(fields))
        if clash:
            raise ValueError(
                f"config keys {', '.join(sorted(done))} and {name} both set {clash[0]}; give one"
            )
        fields.update(found.to_fields({n: given[n] for n in found.names}, cfg))
        done.update(found.names)
    return fields


def coordinates_of(cfg: TrialConfig, names_: tuple[str, ...] | list[str]) -> Converted:
    """A config's values on the axes `names_` (coordinates or fields), and the loss scale the
    coordinates among them drop (1 when none does)."""
    values: dict[str, float] = {}
    scale = 1.0
    for name in names_:
        if name in values:
            continue
        if not is_coordinate(name):
            values[name] = getattr(cfg, name)
            continue
        converted = coordinate(cfg.mode, name, cfg.semantics).from_fields(cfg)
        values.update(converted.values)
        scale = converted.scale
    return Converted({n: values[n] for n in names_}, scale)
