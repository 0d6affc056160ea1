"""One registry type for every name -> thing table of tfkd (models, modes, datasets, loaders, ...).

    MODELS = Registry("model")

    @MODELS.register("resnet18")
    def resnet18(num_classes: int) -> nn.Module: ...

    MODELS.get("resnet18"); MODELS.names()

A name is registered once (a second registration is an error, so two modules can never silently
replace each other's entry); an unknown name raises one line that lists the known names. Adding a
model, mode or dataset is one decorated function in one file: nothing else keeps a list of names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind, with `names()` and a helpful unknown-name error.

    `kind` is the word used in messages ("model" -> "unknown model 'x'; known models: ...");
    `error` is the exception an unknown name raises (a ValueError subclass, e.g. DataError).
    """

    def __init__(self, kind: str, error: type[ValueError] = ValueError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; an empty or taken name raises ValueError."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`; a taken name fails at once, before the decoration."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def remove(self, name: str) -> None:
        """Forget a name (tests that register temporary entries clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
