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
what tfkd put in).

Distributions: uniform, loguniform, int, logint (bounds inclusive), quniform (with q), choice.
The preset of the chosen model is the first point a search evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfkd.core.config import WEIGHTS, TrialConfig, weights_of
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
PRESET_SELECTORS = ("model", "teacher")
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

    def contains(self, value: Any) -> bool:
        if self.distribution == "choice":
            return value in self.values
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def grid(self) -> list[Any]:
        """Values a grid search visits: the choices, or low/mid/high of a range."""
        if self.distribution == "choice":
            return list(self.values)
        if self.distribution in ("loguniform", "logint"):
            mid = math.sqrt(self.low * self.high)
        else:
            mid = (self.low + self.high) / 2
        points = [self.low, mid, self.high]
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

    def preset_row(self, model: str, teacher: str = "") -> dict[str, Any]:
        """The preset row this model (and teacher) takes, as written, else {}.

        An exact (model, teacher) row wins, then a row for the model without a teacher, then the
        model's first row.
        """
        rows = [p for p in self.presets if p["model"] == model]
        for match in (
            lambda p: p.get("teacher", "") == teacher,
            lambda p: not p.get("teacher"),
            lambda p: True,
        ):
            for row in rows:
                if match(row):
                    return dict(row)
        return {}

    def preset_for(self, model: str, teacher: str = "") -> dict[str, Any]:
        """The original implementation's values for this model (and teacher), else {}."""
        row = self.preset_row(model, teacher)
        return {k: v for k, v in row.items() if k not in PRESET_SELECTORS + PRESET_NOTES}

    def filled_in(self, model: str, teacher: str = "") -> str:
        """Why the values `preset_for` gives are not the original's for this model and teacher
        ('' when they are): a filled-in row, another teacher's row, or no row at all."""
        row = self.preset_row(model, teacher)
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

    def first_point(self, model: str, teacher: str = "") -> dict[str, Any]:
        """The searched values of the preset (or the mode's defaults): Optuna's first trial.

        Presets keep the original's alpha and multiplier; a space that searches the loss weights
        gets them converted (the same loss).
        """
        values = _with_weights({**self.defaults, **self.preset_for(model, teacher)}, self.params)
        return {name: values[name] for name in self.params if name in values}

    def sets(self) -> set[str]:
        """The trial config fields the searched keys decide (the weights decide two others)."""
        decided = set(self.params) - set(WEIGHTS)
        return decided | ({"alpha", "multiplier"} if set(WEIGHTS) & set(self.params) else set())

    def without(self, fixed: Mapping[str, Any]) -> SearchSpace:
        """This space less the keys `fixed` sets; fixing any loss weight fixes both weights."""
        pair = set(WEIGHTS) | {"alpha", "multiplier"}
        dropped = set(fixed) | (set(WEIGHTS) if pair & set(fixed) else set())
        params = {k: v for k, v in self.params.items() if k not in dropped}
        return SearchSpace(self.path, self.mode, params, self.defaults, self.presets, self.text)


def _with_weights(values: Mapping[str, Any], params: Mapping[str, Param]) -> dict[str, Any]:
    """`values` plus the loss weights its alpha and multiplier (or the defaults') give, if
    `params` searches the weights and `values` does not already state them."""
    if not set(WEIGHTS) & set(params) or set(WEIGHTS) <= set(values):
        return dict(values)
    base = TrialConfig(mode="kd")
    alpha, multiplier = values.get("alpha", base.alpha), values.get("multiplier", base.multiplier)
    return {**weights_of(alpha, multiplier), **values}


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
        raise SearchSpaceError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
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
    for i, row in enumerate(presets):
        point = _with_weights({**defaults, **row}, params)
        _check_in_bounds(path, f"presets[{i}]", {k: point[k] for k in params if k in point}, params)
    point = _with_weights(defaults, params)
    _check_in_bounds(path, "defaults", {k: point[k] for k in params if k in point}, params)
    return space


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
    values = {k: v for k, v in row.items() if k not in PRESET_SELECTORS + PRESET_NOTES}
    _config_values(path, where, values)
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
                f"{path}: {where}.{name}: {value!r} lies outside params.{name}'s range"
            )
