"""The private Litestar API app.openapi extends, pinned: a Litestar upgrade that moves
or reshapes it fails here, naming it, rather than as a subtly wrong OpenAPI document."""

from __future__ import annotations

import importlib
import inspect

import msgspec
import pytest
from litestar.typing import FieldDefinition

PRIVATE_MODULE = "litestar._openapi.schema_generation.plugins.struct"


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    count: int


def test_the_struct_schema_plugin_is_where_app_openapi_imports_it() -> None:
    try:
        module = importlib.import_module(PRIVATE_MODULE)
    except ImportError as error:
        pytest.fail(f"{PRIVATE_MODULE} is gone; app/openapi.py extends its plugin: {error}")
    plugin = getattr(module, "StructSchemaPlugin", None)
    assert plugin is not None, f"{PRIVATE_MODULE}.StructSchemaPlugin is gone (app/openapi.py)"
    parameters = list(inspect.signature(plugin.to_openapi_schema).parameters)
    assert parameters == ["self", "field_definition", "schema_creator"], (
        f"StructSchemaPlugin.to_openapi_schema now takes {parameters}: adapt app/openapi.py"
    )


def test_litestar_still_describes_structs_with_that_plugin() -> None:
    """Ours replaces the one Litestar applies by default; if Litestar used another, ours
    would no longer stand in for it."""
    # Imported here, so that the test above reports a moved module by name.
    plugins = importlib.import_module("litestar._openapi.schema_generation.plugins")
    ours = importlib.import_module("app.openapi").ExactStructSchemaPlugin
    defaults = [type(p).__name__ for p in plugins.openapi_schema_plugins]
    assert "StructSchemaPlugin" in defaults, f"Litestar's default schema plugins: {defaults}"
    assert ours().is_plugin_supported_field(FieldDefinition.from_annotation(_Body))
