"""The model zoo's registry (a `tfkd.core.registry.Registry`).

A model family registers each of its variants with one decorated factory,
``@register("resnet18") def resnet18(num_classes: int) -> nn.Module``; callers only ever
use :func:`build` and :func:`names`, so adding a model never touches a list of names.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tfkd.core.registry import Registry

Factory = Callable[[int], nn.Module]

MODELS: Registry[Factory] = Registry("model")
register = MODELS.register
names = MODELS.names


def build(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised model ``name`` whose logits have ``num_classes`` entries.

    Raises ``ValueError`` for an unknown name (the message lists the known ones) and for
    ``num_classes`` that is not an integer >= 2.
    """
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return factory(num_classes)
