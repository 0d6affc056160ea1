"""The names in tfkd's torch-backed registries, read from the source that registers them.

The command line checks --mode, --model, --dataset and --set before torch is imported, so that a
mistake is answered at once. A registry fills as its modules are imported, and they import
torch; this module reads the same registrations from those modules' source (Python's `ast`,
nothing imported): the string a `register(...)` or `X.add(...)` call is given (evaluated from
the module's constants, loops over a constant tuple included), the `name` of a class decorated
with a bare `@register`, the name a `Param(...)` declares. A registry already imported answers
for itself, so that names registered at run time count too.

tests/test_catalog.py checks that every kind's names read here are its registry's: a
registration this module cannot read fails there, never in a user's hands.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent  # tfkd/


@dataclass(frozen=True)
class Source:
    """Where one kind of name is registered, and the registry that holds them."""

    module: str  # the registry's module
    names: str  # what lists its names there: "MODES.names", "declared_keys"
    files: tuple[str, ...]  # the registering modules, as globs under tfkd/
    call: str  # the callable whose first argument is a name: "register", "LOADERS.add"


SOURCES = {
    "mode": Source("tfkd.core.modes", "names", ("core/modes/*.py",), "register"),
    "mode key": Source("tfkd.core.modes", "declared_keys", ("core/modes/*.py",), "Param"),
    "model": Source("tfkd.core.models", "names", ("core/models/*.py",), "register"),
    "dataset": Source(
        "tfkd.core.data", "names", ("core/data/sources.py", "core/data/folders.py"), "register"
    ),
    "loader": Source("tfkd.core.data", "LOADERS.names", ("core/data/loaders.py",), "LOADERS.add"),
    "semantics": Source(
        "tfkd.core.losses", "KL_REDUCTIONS.names", ("core/losses.py",), "KL_REDUCTIONS.add"
    ),
}


def names(kind: str) -> list[str]:
    """The names registered for `kind` (a key of SOURCES), sorted: the registry's own once its
    module is imported, else the ones its source declares."""
    if SOURCES[kind].module in sys.modules:
        return registered(kind)
    return declared(kind) or registered(kind)  # no source to read (compiled files only)


def registered(kind: str) -> list[str]:
    """The registry's names (imports its module, and torch with it)."""
    source = SOURCES[kind]
    found: Any = importlib.import_module(source.module)
    for attribute in source.names.split("."):
        found = getattr(found, attribute)
    return sorted(found())


@functools.cache
def declared(kind: str) -> list[str]:
    """The names the registering modules' source declares (nothing imported)."""
    source = SOURCES[kind]
    files = sorted({path for pattern in source.files for path in PACKAGE.glob(pattern)})
    return sorted({name for path in files for name in _names_in(path, source.call)})


class _NotConstant(Exception):
    """An expression that is not built from the module's constants."""


def _names_in(path: Path, call: str) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    yield from _statements(tree.body, {}, call)


def _statements(body: list[ast.stmt], constants: dict[str, Any], call: str) -> Iterator[str]:
    """The names registered by `body`, given the constants assigned before it."""
    for statement in body:
        if isinstance(statement, ast.For) and isinstance(statement.target, ast.Name):
            for value in _value_or(statement.iter, constants, ()):
                yield from _statements(
                    statement.body, {**constants, statement.target.id: value}, call
                )
            continue
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                constants[target.id] = _value_or(statement.value, constants, None)
        for node in ast.walk(statement):
            yield from _registered_by(node, constants, call)


def _registered_by(node: ast.AST, constants: dict[str, Any], call: str) -> Iterator[str]:
    if isinstance(node, ast.Call) and _dotted(node.func) == call and node.args:
        name = _value_or(node.args[0], constants, None)
        if isinstance(name, str):
            yield name
    if isinstance(node, ast.ClassDef) and call in map(_dotted, node.decorator_list):
        yield from _class_name(node)


def _class_name(node: ast.ClassDef) -> Iterator[str]:
    """`name = "..."` in a class body."""
    for statement in node.body:
        if (
            isinstance(statement, ast.Assign)
            and [_dotted(t) for t in statement.targets] == ["name"]
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            yield statement.value.value


def _dotted(node: ast.AST) -> str:
    """`register` or `LOADERS.add` for a name or an attribute of a name, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ""


def _value_or(node: ast.expr, constants: dict[str, Any], default: Any) -> Any:
    try:
        return _value(node, constants)
    except _NotConstant:
        return default


def _value(node: ast.expr, constants: dict[str, Any]) -> Any:
    """A string, number or tuple built from literals, the module's constants and `+`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and constants.get(node.id) is not None:
        return constants[node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_value(element, constants) for element in node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        try:
            return _value(node.left, constants) + _value(node.right, constants)
        except TypeError:
            raise _NotConstant from None
    raise _NotConstant
