"""The torch-backed registries the command line names (modes, datasets, models, recipes),
imported on first use so that argument errors never wait for torch."""

from __future__ import annotations

from tfkd.cli.flags import (
    LazyModule,
)

data = LazyModule("tfkd.core.data")
models = LazyModule("tfkd.core.models")
modes = LazyModule("tfkd.core.modes")
recipe = LazyModule("tfkd.core.recipe")
# The flags whose values name a registry entry, and the registry's module.
