"""Modes: which loss a trial optimises and what it needs for it (the contract: `base`).

A mode is one class in one module of this package, decorated with `@register`, plus its search
space `search_spaces/<name>.yaml`; every module here is imported when the package is, so nothing
else keeps a list of modes. `get(name)` returns the class; `names()` lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from tfkd.core.modes.base import (
    DECLARED,
    Batch,
    FunctionMode,
    LossFn,
    LossMode,
    Memory,
    Mode,
    Param,
    Progress,
    Terms,
)
from tfkd.core.registry import Registry

if TYPE_CHECKING:
    import torch

    from tfkd.core.config import TrialConfig

__all__ = [
    "Batch",
    "FunctionMode",
    "LossFn",
    "LossMode",
    "MODES",
    "Memory",
    "Mode",
    "Param",
    "Progress",
    "Terms",
    "get",
    "names",
    "params_of",
    "register",
]

MODES: Registry[type[Mode]] = Registry("mode")
get = MODES.get
names = MODES.names


def register(cls: type[Mode]) -> type[Mode]:
    """Register a mode class under its `name`, after checking what every mode must declare.

    Its config keys must not shadow a core key of TrialConfig nor another mode's key.
    """
    from tfkd.core.config import core_keys

    if not cls.name or not cls.description:
        raise ValueError(f"mode class {cls.__qualname__} must set `name` and `description`")
    if cls.name in MODES:
        raise ValueError(f"mode {cls.name!r} is already registered")
    for param in cls.params:
        if not param.doc:
            raise ValueError(f"mode {cls.name!r}: config key {param.name!r} needs a doc")
        if param.name in core_keys():
            raise ValueError(f"mode {cls.name!r}: {param.name!r} is a core config key")
        owner = DECLARED.params.get(param.name)
        if owner is not None and owner[1] != param:
            raise ValueError(
                f"mode {cls.name!r}: config key {param.name!r} is declared by {owner[0]!r}"
            )
        param.validate(param.default)
    for param in cls.params:
        DECLARED.params.setdefault(param.name, (cls.name, param))
    MODES.add(cls.name, cls)
    return cls


def unregister(name: str) -> None:
    """Forget a mode and the config keys only it declared (for tests that add one)."""
    MODES.remove(name)
    for key, (owner, _) in list(DECLARED.params.items()):
        if owner == name:
            del DECLARED.params[key]


def params_of(mode: str) -> dict[str, Param]:
    """The config keys `mode` declares (an unknown mode declares none)."""
    return {p.name: p for p in MODES.get(mode).params} if mode in MODES else {}


def declared_keys() -> dict[str, str]:
    """Every mode-declared config key -> the mode that declared it first."""
    return {key: owner for key, (owner, _) in DECLARED.params.items()}


def as_mode(loss: Mode | LossFn, cfg: TrialConfig, device: torch.device | str = "cpu") -> Mode:
    """A Mode instance, or a bare loss function wrapped as one (`FunctionMode`)."""
    return loss if isinstance(loss, Mode) else FunctionMode(loss, cfg, device)


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
