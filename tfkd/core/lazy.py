"""The torch-backed registries (modes, datasets, models, recipes) as modules imported on first
use, so that the command line checks its flags, and a sweep its plan, before torch is imported."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported when one of its names is first used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


data = LazyModule("tfkd.core.data")
models = LazyModule("tfkd.core.models")
modes = LazyModule("tfkd.core.modes")
recipe = LazyModule("tfkd.core.recipe")
