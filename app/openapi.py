"""The OpenAPI document, as exact as the decoders behind it: the pieces every feature uses.

Litestar derives it from the handlers. Where that is looser than what msgspec accepts
(unknown fields refused, constraints on the members of a union) or cannot see the body
at all (the webhook reads raw bytes, to check signatures first), the schema is msgspec's
own, taken from the types that decode the request. Features describe what is their own
(the webhook's body, admin's security scheme) beside their controllers, with these pieces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec

# Litestar's own struct plugin, extended rather than rewritten: Litestar exports no
# public hook for a struct's schema, and rewriting this one would drift from the schemas
# Litestar writes for everything else. Private, so pinned: tests/test_openapi_pins.py
# fails, naming this import, when a Litestar upgrade moves or changes it.
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from app.errors import ErrorBody

COMPONENTS_REF = "#/components/schemas/{name}"

ERROR_DESCRIPTIONS = {
    400: "Malformed or invalid request; every wrong field is listed",
    401: "Missing or bad credentials",
    403: "Credentials refused",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    413: "Body over the operation's size limit",
    415: "Unsupported Content-Type",
    429: "Rate limit exceeded; Retry-After says when to come back",
    503: "PostgreSQL unavailable: nothing was written, retry after Retry-After",
}


def error_responses(
    *statuses: int, descriptions: Mapping[int, str] | None = None
) -> dict[int, ResponseSpec]:
    """The error statuses an operation can answer, each with the one error body."""
    described = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        status: ResponseSpec(data_container=ErrorBody, description=described[status])
        for status in statuses
    }


# Every JSON Schema key of Litestar's Schema, as spelled on the wire, to its attribute.
_SCHEMA_FIELDS = {
    field.metadata.get("alias", field.name): field.name for field in dataclasses.fields(Schema)
}
_NESTED_ONE = frozenset({"items", "additionalProperties", "not", "contains"})
_NESTED_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})


def from_json_schema(document: Mapping[str, Any]) -> Schema | Reference:
    """A JSON Schema (as msgspec writes it) as Litestar's spec objects."""
    if "$ref" in document:
        return Reference(ref=document["$ref"])
    attributes = {_SCHEMA_FIELDS[key]: _nested(key, value) for key, value in document.items()}
    return Schema(**attributes)


def _nested(key: str, value: Any) -> Any:
    if key == "properties":
        return {name: from_json_schema(member) for name, member in value.items()}
    if key in _NESTED_ONE and isinstance(value, dict):
        return from_json_schema(value)
    if key in _NESTED_LIST:
        return [from_json_schema(member) for member in value]
    return value


def _refers(document: Any) -> bool:
    """Whether a schema points at a component (whose name Litestar may spell otherwise)."""
    if isinstance(document, dict):
        return "$ref" in document or any(_refers(value) for value in document.values())
    return isinstance(document, list) and any(_refers(value) for value in document)


def json_schema_components(*types: type) -> dict[str, dict[str, Any]]:
    _, components = msgspec.json.schema_components(types, ref_template=COMPONENTS_REF)
    return components


class ExactStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's schema of a msgspec struct, tightened to what msgspec decodes.

    Litestar drops `forbid_unknown_fields` and the constraints of a union's members
    (`totalSupply`: a positive integer or its decimal digits); msgspec's schema has both.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct: type[msgspec.Struct] = field_definition.type_
        exact = json_schema_components(struct)[struct.__name__]
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        for name, member in exact.get("properties", {}).items():
            if "anyOf" in member and not _refers(member):
                assert schema.properties is not None
                schema.properties[name] = from_json_schema(member)
        return schema
