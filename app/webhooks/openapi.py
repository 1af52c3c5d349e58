"""The webhook's operation in the OpenAPI document: the body and headers it reads itself.

The handler reads raw bytes, to check signatures before decoding, so Litestar cannot see
the body; it is described here from the types that decode it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from app.inbound.events import DecisionContext, DecisionPayload, InboundEvent
from app.markets.events import DECISION_OF_EVENT
from app.openapi import from_json_schema, json_schema_components
from app.webhooks.sns import SnsMessage


def webhook_body() -> Schema:
    """The direct event, exact for decisions, or the SNS envelope.

    msgspec describes InboundEvent's payload and context as any objects; read_event
    further requires, for market.approved and market.rejected, a DecisionPayload agreeing
    with the event type and a DecisionContext (so a context, which is otherwise optional).
    """
    schemas = json_schema_components(InboundEvent, DecisionPayload, DecisionContext, SnsMessage)
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
