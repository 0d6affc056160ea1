"""Name -> factory registry for the model zoo.

A model family registers each of its variants with one decorated factory,
``@register("resnet18") def resnet18(num_classes: int) -> nn.Module``; callers only ever
use :func:`build` and :func:`names`, so adding a model never touches a list of names.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Factory = Callable[[int], nn.Module]

_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator that registers ``fn(num_classes) -> nn.Module`` under ``name``.

    Raises ``ValueError`` if ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is already registered")

    def decorator(fn: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = fn
        return fn

    return decorator


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_FACTORIES)


def build(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised model ``name`` whose logits have ``num_classes`` entries.

    Raises ``ValueError`` for an unknown name (the message lists the known ones) and for
    ``num_classes`` that is not an integer >= 2.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return factory(num_classes)
