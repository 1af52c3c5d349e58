"""The seed's snake_case event, as the webhook receives it and the polling feed serves it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.approvals.domain import DECISION_OF_EVENT
from app.validation import FieldError, RequestValidationError, convert_object
from outbox import EventEnvelope, new_event

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class InboundEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An Entity Permissions event. payload and context are the sender's objects."""

    event_id: Text
    event_type: Text
    source: Text
    payload: dict[str, Any]
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class DecisionPayload(msgspec.Struct, frozen=True, kw_only=True):
    """What market.approved and market.rejected carry."""

    market_id: uuid.UUID
    decision: Literal["approved", "rejected"]
    entity_id: uuid.UUID | None = None
    reason: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


def read_event(document: Any, *, default_event_id: str | None = None) -> EventEnvelope:
    """Validate a decoded event, reporting every wrong field; the envelope to enqueue.

    Decisions (market.approved, market.rejected) must carry a well-formed payload;
    other event types are taken as they are, for the consumer to record `skipped`.
    """
    if isinstance(document, dict) and default_event_id and "event_id" not in document:
        document = {**document, "event_id": default_event_id}
    event = convert_object(document, InboundEvent)
    aggregate_id = event.event_id
    expected = DECISION_OF_EVENT.get(event.event_type)
    if expected is not None:
        try:
            decision = convert_object(event.payload, DecisionPayload)
        except RequestValidationError as invalid:
            raise RequestValidationError(
                [FieldError(f"payload.{e.field}", e.reason) for e in invalid.errors]
            ) from None
        if decision.decision != expected:
            raise RequestValidationError(
                [
                    FieldError(
                        "payload.decision", f"{decision.decision!r} contradicts {event.event_type}"
                    )
                ]
            )
        aggregate_id = str(decision.market_id)
    return new_event(
        event_id=event.event_id,
        event_type=event.event_type,
        source=event.source,
        aggregate_type="market",
        aggregate_id=aggregate_id,
        payload=event.payload,
        context=event.context,
        occurred_at=event.occurred_at,
    )
