"""The names the command line checks before torch is imported (tfkd.core.catalog) are exactly
the registries' names, for every kind; a name registered at run time counts once its registry
is imported."""

from __future__ import annotations

import ast
import textwrap

import pytest

from tfkd.core import catalog


@pytest.mark.parametrize("kind", sorted(catalog.SOURCES))
def test_the_names_read_from_the_source_are_the_registrys(kind):
    assert catalog.declared(kind) == catalog.registered(kind)


def test_a_name_registered_at_run_time_counts_once_its_registry_is_imported():
    from tfkd.core import models

    models.register("catalog_test_model")(lambda num_classes: None)
    try:
        assert "catalog_test_model" in catalog.names("model")
        assert "catalog_test_model" not in catalog.declared("model")
    finally:
        models.MODELS.remove("catalog_test_model")


def test_registrations_are_read_from_constants_loops_and_classes(tmp_path):
    source = textwrap.dedent(
        """
        PREFIX = "tv_"
        ARCHS = ("a", "b")
        for _arch in ARCHS:
            register(PREFIX + _arch)(make(_arch))

        @register("plain")
        def plain(n): ...

        @register
        class Mode(Base):
            name = "from_class"

        class Unregistered(Base):
            name = "not_me"

        register(computed_at_run_time())(f)
        LOADERS.add("other_registry", object)
        """
    )
    path = tmp_path / "module.py"
    path.write_text(source)
    ast.parse(source)  # valid Python, as a registering module is
    assert sorted(catalog._names_in(path, "register")) == ["from_class", "plain", "tv_a", "tv_b"]
    assert list(catalog._names_in(path, "LOADERS.add")) == ["other_registry"]
