"""The seed's snake_case event, as the webhook receives it and the polling feed serves it,
and the readers of everything that claims to be one: a feed event, a stream entry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from app.approvals.domain import DECISION_OF_EVENT
from app.json_limits import MAX_NESTING, NestingTooDeep, holds_marker, within
from app.validation import FieldError, RequestValidationError, convert_object
from outbox import EventEnvelope, new_event

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
# The source Entity Permissions Core's events name (the poller records its own with it).
EPC_SOURCE: Final = "entity_permissions_core"
# An event from the feed, as the webhook bounds its body: a decision is a few hundred bytes.
MAX_EVENT_BYTES: Final = 256 * 1024
_TEXT_FIELDS: Final = ("event_id", "event_type", "source")  # varchar(255) wherever stored
# occurred_at within what every store and every reader holds: a time in year 1 with an
# offset east of UTC is in year 0 in UTC, which PostgreSQL refuses (a 500, a stuck feed).
EARLIEST_OCCURRED_AT: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_OCCURRED_AT: Final = datetime(2200, 1, 1, tzinfo=UTC)
_decode_any = msgspec.json.Decoder().decode


class UnreadableEntry(ValueError):
    """A stream entry that cannot be read as an event; the message says why."""


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
    if event.occurred_at is not None and not (
        EARLIEST_OCCURRED_AT <= event.occurred_at < LATEST_OCCURRED_AT
    ):
        raise RequestValidationError.single(
            "occurred_at",
            f"out of range: from {EARLIEST_OCCURRED_AT:%Y-%m-%d} to before "
            f"{LATEST_OCCURRED_AT:%Y-%m-%d}",
        )
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


def read_event_json(raw: bytes, *, capped: bool = False) -> EventEnvelope:
    """An event from the polling feed, as raw JSON; RequestValidationError naming why not.

    The webhook's rules (read_event), after what only a feed can serve: an event over
    MAX_EVENT_BYTES, JSON that does not decode, or a value the page's nesting cap dropped
    (the cap leaves each event at most MAX_NESTING deep, so nothing recursive below
    overflows; `capped`: the page was capped, so the cap's marker means a dropped value).
    Admin replay reads a stored event document with this same function.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise RequestValidationError.single("event", f"larger than {MAX_EVENT_BYTES} bytes")
    if not within(raw, MAX_NESTING):
        raise RequestValidationError.single("event", str(NestingTooDeep(MAX_NESTING)))
    try:
        document = _decode_any(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise RequestValidationError.single("event", f"malformed JSON: {error}") from None
    if capped and holds_marker(document):
        raise RequestValidationError.single(
            "event", f"{NestingTooDeep(MAX_NESTING)}: the deeper values were dropped"
        )
    return read_event(document)


def read_stream_entry(fields: dict[str, str]) -> EventEnvelope:
    """An entry of entity-permissions:events as an event; UnreadableEntry naming why not.

    Everything on the stream came through read_event at intake, so an entry that fails
    here was written by something else: it is recorded, never applied, never a crash.
    payload and context are measured before they are decoded (a decoder overflows on a
    few hundred levels), and the texts stored as varchar(255) are checked for fit.
    """
    if not all(_is_utf8(name) and _is_utf8(value) for name, value in fields.items()):
        raise UnreadableEntry("a field name or value is not UTF-8")
    for name in ("payload", "context"):
        if not within(fields.get(name, "{}").encode(), MAX_NESTING):
            raise UnreadableEntry(f"{name}: {NestingTooDeep(MAX_NESTING)}")
    try:
        envelope = EventEnvelope.from_stream_fields(fields)
    except msgspec.DecodeError as error:  # ValidationError included
        raise UnreadableEntry(str(error)) from None
    for name in _TEXT_FIELDS:
        value = getattr(envelope, name)
        if not 0 < len(value) <= 255 or "\x00" in value:
            raise UnreadableEntry(f"{name}: not a text of 1 to 255 characters without NUL")
    return envelope


def _is_utf8(text: str) -> bool:
    """False for text holding the surrogates that stand for bytes that were not UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
