"""Declarative search spaces (search_spaces/<mode>.yaml), checked before anything starts.

A file holds, for one mode:

    mode: tfkd_reg
    params:                       # what the search varies
      temperature: {distribution: loguniform, low: 1, high: 100}
      semantics: {distribution: choice, values: [reference, paper]}
    defaults: {temperature: 20}   # the mode's values when a model has no preset (optional)
    presets:                      # the original implementation's values, per model (and teacher)
      - {model: resnet18, temperature: 20, alpha: 0.1, multiplier: 100,
         provenance: original, source: experiments/base_experiments/base_resnet18/params.json}

A preset row may say where its values come from (every shipped row does): `provenance:
original` (`source`: the original's params.json) or `provenance: filled-in` (`source`: why, and
what tfkd put in), and which dataset its values were written for (`dataset`; every shipped row
says cifar100). A row applies whole only on its dataset (or on any, when it names none); on
another dataset its loss serves, converted to the searched coordinates, and the batch size,
learning rate and schedule are that dataset's recipe's (`RECIPE_KEYS`).

Searched keys are trial config fields or search coordinates of the file's mode
(tfkd.core.coordinates: kd_share, smoothing, ...), which set some fields. Presets keep the
original's fields as written; the first point a search evaluates is the preset converted to the
searched coordinates at the number of classes of the row's dataset (`first_point`), and
`provenance` says what the conversion dropped (the original's loss scale: every shipped space
searches the learning rate as lr_factor, starting at 1).

Distributions: uniform, loguniform, int, logint (bounds inclusive), quniform (with q), choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfkd.core import coordinates
from tfkd.core.config import RECIPE_KEYS, TrialConfig
from tfkd.core.config import keys as config_keys


def _search_spaces_dir() -> Path:
    """search_spaces/ of a checkout, or tfkd/search_spaces of an installed package."""
    package = Path(__file__).resolve().parents[1]
    installed, checkout = package / "search_spaces", package.parent / "search_spaces"
    return installed if installed.is_dir() else checkout


SEARCH_SPACES_DIR = _search_spaces_dir()
TOP_LEVEL_KEYS = {"mode", "description", "params", "defaults", "presets"}
DISTRIBUTION_KEYS = {
    "uniform": {"low", "high"},
    "loguniform": {"low", "high"},
    "int": {"low", "high"},
    "logint": {"low", "high"},
    "quniform": {"low", "high", "q"},
    "choice": {"values"},
}
PRESET_SELECTORS = ("model", "teacher", "dataset")
PROVENANCES = ("original", "filled-in")
PRESET_NOTES = ("provenance", "source")  # where a preset row's values come from


class SearchSpaceError(ValueError):
    """A search-space file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    q: float | None = None
    values: tuple[Any, ...] = ()

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range (every distribution but choice: `load` checks both are set)."""
        assert self.low is not None and self.high is not None, f"{self.name} is not a range"
        return self.low, self.high

    def contains(self, value: Any) -> bool:
        if self.distribution == "choice":
            return value in self.values
        low, high = self.bounds
        return isinstance(value, (int, float)) and low <= value <= high

    def grid(self) -> list[Any]:
        """Values a grid search visits: the choices, or low/mid/high of a range."""
        if self.distribution == "choice":
            return list(self.values)
        low, high = self.bounds
        if self.distribution in ("loguniform", "logint"):
            mid = math.sqrt(low * high)
        else:
            mid = (low + high) / 2
        points = [low, mid, high]
        if self.distribution in ("int", "logint"):
            points = [int(round(p)) for p in points]
        return sorted(set(points), key=points.index)


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    mode: str
    params: dict[str, Param]
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: tuple[dict[str, Any], ...] = ()
    text: str = ""

    def preset_row(self, model: str, teacher: str = "", dataset: str = "") -> dict[str, Any]:
        """The preset row this model (and teacher) takes on `dataset`, as written, else {}.

        An exact (model, teacher) row wins, then a row for the model without a teacher, then the
        model's first row; among equals, a row written for `dataset` (or for any dataset).
        """
        rows = [p for p in self.presets if p["model"] == model]
        for match in (
            lambda p: p.get("teacher", "") == teacher,
            lambda p: not p.get("teacher"),
            lambda p: True,
        ):
            matching = [row for row in rows if match(row)]
            for row in matching:
                if written_for(row, dataset):
                    return dict(row)
            if matching:
                return dict(matching[0])
        return {}

    def preset_for(self, model: str, teacher: str = "", dataset: str = "") -> dict[str, Any]:
        """The preset's values that apply on `dataset`, else {}: all of them on the dataset the
        row was written for, its loss values only on another (the recipe's keys are that
        dataset's own)."""
        row = self.preset_row(model, teacher, dataset)
        values = {k: v for k, v in row.items() if k not in PRESET_SELECTORS + PRESET_NOTES}
        if written_for(row, dataset):
            return values
        return {k: v for k, v in values.items() if k not in RECIPE_KEYS}

    def filled_in(self, model: str, teacher: str = "", dataset: str = "") -> str:
        """Why the values `preset_for` gives are not the original's for this model and teacher
        ('' when they are): a filled-in row, another teacher's row, or no row at all."""
        row = self.preset_row(model, teacher, dataset)
        if not row:
            return f"the original has no {self.mode} values for {model}; the mode's defaults"
        if row.get("provenance") == "filled-in":
            return f"filled in, not the original's: {row['source']}"
        if row.get("teacher", "") not in ("", teacher):
            return (
                f"the original has no {self.mode} values for {model} with teacher {teacher}; "
                f"its values with teacher {row['teacher']} ({row['source']})"
            )
        return ""

    def provenance(
        self, model: str, teacher: str = "", dataset: str = "", fixed: bool = False
    ) -> str:
        """'original', or what the first point is besides: `filled_in`'s reason, the row's
        dataset when it is another (its loss converted, the recipe this dataset's), and what
        converting the row to the searched coordinates dropped (a search; `--fixed` on the
        row's dataset trains the row as written)."""
        row = self.preset_row(model, teacher, dataset)
        reason = self.filled_in(model, teacher, dataset)
        if not row:
            return reason
        elsewhere = not written_for(row, dataset)
        notes = [reason or ("" if elsewhere else "original")]
        conversion = self.conversion(row, dataset)
        if elsewhere:
            first = f"the first point is {conversion}; " if conversion else ""
            notes.append(
                f"the row is written for {row['dataset']}, not {dataset}: {first}batch size, "
                f"learning rate and schedule are {dataset}'s recipe's"
            )
        elif conversion and not fixed:
            notes.append(conversion)
        return "; ".join(note for note in notes if note)

    def conversion(self, row: Mapping[str, Any], dataset: str = "") -> str:
        """What converting `row` to the searched coordinates gives and drops ('' if nothing)."""
        changed = [n for n in self.params if coordinates.is_coordinate(n)]
        if not changed:
            return ""
        cfg = self._config_of(row, dataset)
        converted = coordinates.coordinates_of(cfg, changed)
        sources = sorted({f for n in changed for f in coordinates.decided_by(self.mode, n)})
        origin = ", ".join(f"{f} {getattr(cfg, f):g}" for f in sources)
        into = ", ".join(f"{n} {converted.values[n]:.4g}" for n in changed)
        note = (
            f"its loss converted at {cfg.dataset} ({coordinates.classes_of(cfg)} classes): "
            f"{origin} -> {into}"
        )
        if not math.isclose(converted.scale, 1.0, rel_tol=1e-9):
            note += (
                f"; the original's loss scale {converted.scale:.4g} is dropped (every mode's "
                "loss has scale 1; lr_factor, the searched learning-rate factor, starts at 1)"
            )
        return note

    def first_point(
        self, model: str, teacher: str = "", dataset: str = "", data_dir: str = ""
    ) -> dict[str, Any]:
        """The search's first point: the preset (or the mode's defaults) converted to the
        searched coordinates at the number of classes of the dataset it was written for."""
        row = self.preset_row(model, teacher, dataset)
        cfg = self._config_of(row, dataset, data_dir)
        return coordinates.coordinates_of(cfg, list(self.params)).values

    def original_point(
        self, model: str, teacher: str = "", dataset: str = "", data_dir: str = ""
    ) -> dict[str, Any]:
        """The fields the searched keys decide, at the preset as written (a `--fixed` run on
        the row's dataset trains exactly the original's loss)."""
        cfg = self._config_of(self.preset_row(model, teacher, dataset), dataset, data_dir)
        return {name: getattr(cfg, name) for name in sorted(self.sets())}

    def _config_of(
        self, row: Mapping[str, Any], dataset: str = "", data_dir: str = ""
    ) -> TrialConfig:
        """The row (over the mode's defaults) as a trial config on the dataset it was written
        for (else `dataset`, else the config's default dataset)."""
        written = _row_values(row)
        taken = set().union(*(coordinates.decided_by(self.mode, k) for k in written))
        defaults = {
            k: v
            for k, v in self.defaults.items()
            if not coordinates.decided_by(self.mode, k) & taken
        }
        where = {"dataset": row.get("dataset") or dataset} if row.get("dataset") or dataset else {}
        return TrialConfig.from_dict(
            {
                "mode": self.mode,
                **defaults,
                **written,
                **where,
                **({"data_dir": data_dir} if data_dir else {}),
            }
        )

    def sets(self) -> set[str]:
        """The trial config fields the searched keys decide (a coordinate decides several)."""
        return set().union(*(coordinates.decided_by(self.mode, k) for k in self.params))

    def without(self, fixed: Mapping[str, Any]) -> SearchSpace:
        """This space less the keys that decide a field `fixed` decides (fixing alpha drops
        kd_share, which sets it)."""
        taken = set().union(*(coordinates.decided_by(self.mode, k) for k in fixed))
        params = {
            k: v for k, v in self.params.items() if not coordinates.decided_by(self.mode, k) & taken
        }
        return SearchSpace(self.path, self.mode, params, self.defaults, self.presets, self.text)


def written_for(row: Mapping[str, Any], dataset: str) -> bool:
    """Whether a preset row applies whole on `dataset` (it names it, or names none)."""
    return not row.get("dataset") or not dataset or row["dataset"] == dataset


def _row_values(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in PRESET_SELECTORS + PRESET_NOTES}


def default_path(mode: str) -> Path:
    return SEARCH_SPACES_DIR / f"{mode}.yaml"


def load(path: str | Path, mode: str | None = None) -> SearchSpace:
    """Read and check a search-space file; any problem raises SearchSpaceError naming file/key."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file not found: {path}")
    return loads(path.read_text(), path, mode)


def loads(text: str, path: str | Path = "<text>", mode: str | None = None) -> SearchSpace:
    """Check a search space given as YAML text (e.g. a sweep's tag); `path` names it in errors."""
    path = Path(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SearchSpaceError(yaml_error_at(path, exc)) from None
    if not isinstance(doc, dict):
        raise SearchSpaceError(f"{path}: expected a mapping with keys {sorted(TOP_LEVEL_KEYS)}")
    _check_keys(path, "", doc, TOP_LEVEL_KEYS)
    file_mode = doc.get("mode")
    if mode is not None and file_mode not in (None, mode):
        raise SearchSpaceError(f"{path}: mode: the file is for {file_mode!r}, not {mode!r}")
    params = {name: _param(path, name, spec) for name, spec in (doc.get("params") or {}).items()}
    defaults = _config_values(path, "defaults", doc.get("defaults") or {})
    presets = tuple(_preset(path, i, row) for i, row in enumerate(doc.get("presets") or []))
    space = SearchSpace(path, file_mode or mode or "", params, defaults, presets, text)
    _check_coordinates(path, space)
    for i, row in enumerate(presets):
        _check_first_point(path, f"presets[{i}]", space, row)
    _check_first_point(path, "defaults", space, {})
    return space


def yaml_error_at(path: Path, exc: yaml.YAMLError) -> str:
    """'FILE:LINE:COLUMN: not valid YAML (what PyYAML found wrong there)', 1-based, one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML ({yaml_problem(exc)})"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong, in one line without its position."""
    return " ".join(str(getattr(exc, "problem", None) or exc.__class__.__name__).split())


def _check_coordinates(path: Path, space: SearchSpace) -> None:
    """Searched coordinates belong to the file's mode, and no two searched keys set one field
    (the two names of one coordinate, ce_weight and kl_weight, set theirs together)."""
    decided: dict[str, tuple[str, ...]] = {}
    for name in space.params:
        group: tuple[str, ...] = (name,)
        if coordinates.is_coordinate(name):
            if not space.mode:
                raise SearchSpaceError(f"{path}: params.{name}: a coordinate needs the file's mode")
            try:
                group = coordinates.coordinate(space.mode, name).names
            except ValueError as exc:
                raise SearchSpaceError(f"{path}: params.{name}: {exc}") from None
        for field_name in coordinates.decided_by(space.mode, name):
            if decided.setdefault(field_name, group) != group:
                raise SearchSpaceError(
                    f"{path}: params.{name} and params.{decided[field_name][0]} both set "
                    f"{field_name}; search one of them"
                )


def _check_first_point(path: Path, where: str, space: SearchSpace, row: Mapping) -> None:
    """A preset (or the defaults) must convert to a point inside the searched ranges: the
    search's first point."""
    if not space.mode:
        return
    try:
        point = coordinates.coordinates_of(space._config_of(row), list(space.params)).values
    except ValueError as exc:
        raise SearchSpaceError(f"{path}: {where}: {exc}") from None
    _check_in_bounds(path, where, point, space.params)


def _check_keys(path: Path, where: str, doc: Mapping, allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise SearchSpaceError(
            f"{path}: unknown key {prefix}{unknown[0]}; allowed: {', '.join(sorted(allowed))}"
        )


def _config_key(path: Path, where: str, key: str) -> None:
    if key not in config_keys():
        raise SearchSpaceError(f"{path}: {where}.{key}: not a trial config key")


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"params.{name}"
    _config_key(path, "params", name)
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise SearchSpaceError(f"{path}: {where}: needs a 'distribution'")
    kind = spec["distribution"]
    if kind not in DISTRIBUTION_KEYS:
        raise SearchSpaceError(
            f"{path}: {where}.distribution: unknown distribution {kind!r}; "
            f"known: {', '.join(DISTRIBUTION_KEYS)}"
        )
    _check_keys(path, where, spec, DISTRIBUTION_KEYS[kind] | {"distribution"})
    missing = sorted(DISTRIBUTION_KEYS[kind] - set(spec))
    if missing:
        raise SearchSpaceError(f"{path}: {where}: missing {missing[0]!r} for {kind}")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SearchSpaceError(f"{path}: {where}.values: must be a non-empty list")
        return Param(name, kind, values=tuple(values))
    low, high = spec["low"], spec["high"]
    for key, value in (("low", low), ("high", high), ("q", spec.get("q", 1))):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SearchSpaceError(f"{path}: {where}.{key}: must be a number, got {value!r}")
    if low > high:
        raise SearchSpaceError(f"{path}: {where}: low ({low}) > high ({high})")
    if kind.startswith("log") and low <= 0:
        raise SearchSpaceError(f"{path}: {where}.low: {kind} needs a positive bound, got {low}")
    return Param(name, kind, low=low, high=high, q=spec.get("q"))


def _config_values(path: Path, where: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise SearchSpaceError(f"{path}: {where}: must be a mapping of config keys to values")
    for key in values:
        _config_key(path, where, key)
    return dict(values)


def _preset(path: Path, index: int, row: Any) -> dict[str, Any]:
    where = f"presets[{index}]"
    if not isinstance(row, dict) or "model" not in row:
        raise SearchSpaceError(f"{path}: {where}: needs a 'model'")
    values = _row_values(row)
    _config_values(path, where, values)
    if "dataset" in row and not isinstance(row["dataset"], str):
        raise SearchSpaceError(f"{path}: {where}.dataset: must be a dataset's name")
    given = set(PRESET_NOTES) & set(row)  # optional in a user's file; the shipped rows have both
    if given and (
        row.get("provenance") not in PROVENANCES or not str(row.get("source", "")).strip()
    ):
        raise SearchSpaceError(
            f"{path}: {where}: provenance must be {' or '.join(PROVENANCES)}, with a source (the "
            "original's params.json, or why the values are filled in)"
        )
    return dict(row)


def _check_in_bounds(
    path: Path, where: str, point: Mapping[str, Any], params: Mapping[str, Param]
) -> None:
    """A preset outside the searched range could never be the search's first point."""
    for name, value in point.items():
        if not params[name].contains(value):
            raise SearchSpaceError(
                f"{path}: {where}.{name}: {value!r} lies outside params.{name}'s range (its "
                "first point, converted to the searched coordinates); widen the range"
            )
