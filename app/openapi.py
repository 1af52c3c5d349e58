"""The OpenAPI document, as exact as the decoders behind it.

Litestar derives it from the handlers. Where that is looser than what msgspec accepts
(unknown fields refused, constraints on the members of a union) or cannot see the body
at all (the webhook reads raw bytes, to check signatures first), the schema is msgspec's
own, taken from the types that decode the request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec

# Litestar's own struct plugin, extended rather than rewritten (it is not re-exported).
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.typing import FieldDefinition

from app.errors import ErrorBody
from app.inbound.events import DecisionContext, DecisionPayload, InboundEvent
from app.markets.events import DECISION_OF_EVENT
from app.webhooks.sns import SnsMessage

COMPONENTS_REF = "#/components/schemas/{name}"
ADMIN_SECURITY = "AdminToken"

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


def _components(*types: type) -> dict[str, dict[str, Any]]:
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
        exact = _components(struct)[struct.__name__]
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        for name, member in exact.get("properties", {}).items():
            if "anyOf" in member and not _refers(member):
                assert schema.properties is not None
                schema.properties[name] = from_json_schema(member)
        return schema


ADMIN_COMPONENTS = Components(
    security_schemes={
        ADMIN_SECURITY: SecurityScheme(
            type="http", scheme="bearer", description="Authorization: Bearer <ADMIN_TOKEN>"
        )
    }
)


def webhook_body() -> Schema:
    """The direct event, exact for decisions, or the SNS envelope.

    msgspec describes InboundEvent's payload and context as any objects; read_event
    further requires, for market.approved and market.rejected, a DecisionPayload agreeing
    with the event type and a DecisionContext (so a context, which is otherwise optional).
    """
    schemas = _components(InboundEvent, DecisionPayload, DecisionContext, SnsMessage)
    event, payload = schemas["InboundEvent"], schemas["DecisionPayload"]
    decisions = [
        {
            "allOf": [
                event,
                {
                    "properties": {
                        "event_type": {"const": event_type},
                        "payload": {
                            "allOf": [payload, {"properties": {"decision": {"const": decision}}}]
                        },
                        "context": schemas["DecisionContext"],
                    },
                    "required": ["context"],
                },
            ]
        }
        for event_type, decision in DECISION_OF_EVENT.items()
    ]
    other_types = {"properties": {"event_type": {"not": {"enum": list(DECISION_OF_EVENT)}}}}
    documents: list[dict[str, Any]] = [
        *decisions,
        {"allOf": [event, other_types]},
        schemas["SnsMessage"],
    ]
    return Schema(one_of=[from_json_schema(document) for document in documents])


# The headers the webhook reads from the request itself, documented (so that clients,
# and schemathesis, see them) but not declared as handler parameters: Litestar would
# then validate or coerce them before the signature is checked on the raw values.
WEBHOOK_HEADERS = {
    "webhook-id": "Standard Webhooks: the message id, printable ASCII; signed with the body.",
    "webhook-timestamp": "Standard Webhooks: Unix time in seconds, 1 to 15 digits, within "
    "5 minutes of ours.",
    "webhook-signature": "Standard Webhooks: space-separated `v1,<base64>` HMAC-SHA256 "
    "signatures of `id.timestamp.body`, one per secret the sender holds.",
    "x-amz-sns-message-type": "Set by Amazon SNS (Notification, SubscriptionConfirmation, "
    "UnsubscribeConfirmation). Informational: the body decides, an object with SNS's Type "
    "field being an SNS envelope.",
    "x-forwarded-for": "Believed only from TRUSTED_PROXIES: every line, in order, read "
    "right to left; hops written `ip`, `ip:port` or `[ipv6]:port`.",
}


@dataclasses.dataclass
class WebhookOperation(Operation):
    """The webhook's operation, with the body and headers it reads itself documented."""

    def __post_init__(self) -> None:
        self.parameters = [
            *(self.parameters or []),
            *(
                Parameter(
                    name=name,
                    param_in="header",
                    required=False,
                    schema=Schema(type=OpenAPIType.STRING),
                    description=description,
                )
                for name, description in WEBHOOK_HEADERS.items()
            ),
        ]
        # Inline: Litestar rebuilds components/schemas from the types it has seen itself.
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=webhook_body())},
            required=True,
            description="An Entity Permissions event, or an SNS envelope carrying one in "
            "Message; SNS posts it as text/plain, which is accepted too.",
        )
