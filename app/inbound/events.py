"""The snake_case event of docs/async-approval-flow.md, as the webhook receives it and
the polling feed serves it, and the readers of everything that claims to be one: a feed
event, a stream entry."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from app import tracing
from app.app_error import FieldError
from app.json_limits import MAX_NESTING, NestingTooDeep, holds_marker, within
from app.markets.events import AGGREGATE_TYPE, DECISION_OF_EVENT
from app.validation import RequestValidationError, convert_object
from outbox import EventEnvelope, new_event

T = TypeVar("T", bound=msgspec.Struct)

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
# The source Entity Permissions Core's events name (the poller records its own with it).
EPC_SOURCE: Final = "entity_permissions_core"
# An event from the feed, as the webhook bounds its body: a decision is a few hundred bytes.
MAX_EVENT_BYTES: Final = 256 * 1024
_TEXT_FIELDS: Final = ("event_id", "event_type", "source")  # varchar(255) wherever stored
# occurred_at as RFC 3339 writes it, in the years 1970 to 2199 as written: whatever the
# offset, within what every store and every reader holds (a time in year 1 with an
# offset east of UTC is in year 0 in UTC, which PostgreSQL refuses: a 500, a stuck feed).
# A pattern, so that the OpenAPI document states the range as exactly as it is checked.
_OCCURRED_AT: Final = (
    r"(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
_OCCURRED_AT_WRITTEN: Final = re.compile(_OCCURRED_AT)
OCCURRED_AT_RULE: Final = (
    "an RFC 3339 date-time (date T time, with Z or a ±hh:mm offset) in the years 1970 to 2199"
)
OccurredAt = Annotated[
    datetime,
    msgspec.Meta(
        tz=True, description=OCCURRED_AT_RULE, extra_json_schema={"pattern": f"^{_OCCURRED_AT}$"}
    ),
]
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
    occurred_at: OccurredAt | None = None


class AcceptedDecisionPayload(msgspec.Struct, frozen=True, kw_only=True):
    """What market.approved and market.rejected carry, as the consumer reads it: the rule
    decisions were first accepted under (entity_id optional, reason unbounded).

    Decisions accepted under it may still wait in the outbox or on the stream, and were
    answered 200; they are applied as they were accepted (the entity check when entity_id
    is given, decided_by null without an actor). More keys are the sender's.
    """

    market_id: uuid.UUID
    entity_id: uuid.UUID | None = None
    decision: Literal["approved", "rejected"]
    reason: str | None = None


class DecisionPayload(AcceptedDecisionPayload, frozen=True, kw_only=True):
    """What intake requires of a decision, as Entity Permissions Core sends it: entity_id,
    so that the consumer can check it is the market's (entity_mismatch) for every
    decision, and a reason of at most 2,000 characters."""

    entity_id: uuid.UUID
    reason: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


def contradiction(event_type: str, decision: Any) -> str | None:
    """Why a decision disagrees with its event type (market.approved saying "rejected");
    None when it agrees, or when it is not a decision at all (another check names that)."""
    expected = DECISION_OF_EVENT.get(event_type)
    if expected is None or decision not in DECISION_OF_EVENT.values() or decision == expected:
        return None
    return f"{decision!r} contradicts {event_type}"


class DecisionContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a decision's context must say: who decided (the market's decided_by, the
    approval history's actor_id); more keys are the sender's."""

    actor_id: Text


def read_event(
    document: Any, *, default_event_id: str | None = None, accepted: bool = False
) -> EventEnvelope:
    """Validate a decoded event, reporting every wrong field at once; the envelope to enqueue.

    Decisions (market.approved, market.rejected) must carry a DecisionPayload agreeing
    with the event type and a DecisionContext; other event types are taken as they are,
    for the consumer to record `skipped`. `accepted`: the event was accepted once (a
    failed record replayed), so its decision is read as the consumer reads it: without
    the entity_id and actor_id an event accepted before they were required may lack.
    """
    if isinstance(document, dict) and default_event_id and "event_id" not in document:
        document = {**document, "event_id": default_event_id}
    event, errors = _converted(document, InboundEvent)
    market_id = None
    if isinstance(document, dict):
        errors += _occurred_at_errors(document.get("occurred_at"))
        market_id, found = _read_decision(document, accepted=accepted)
        errors += found
    if errors:
        raise RequestValidationError(errors)
    assert event is not None  # converted without errors
    return new_event(
        event_id=event.event_id,
        event_type=event.event_type,
        source=event.source,
        aggregate_type=AGGREGATE_TYPE,
        aggregate_id=event.event_id if market_id is None else str(market_id),
        payload=event.payload,
        # Trace context in an event is the outbox's to write, never the sender's.
        context=tracing.without_trace_context(event.context),
        occurred_at=event.occurred_at,
    )


def _converted(document: Any, struct_type: type[T]) -> tuple[T | None, list[FieldError]]:
    try:
        return convert_object(document, struct_type), []
    except RequestValidationError as invalid:
        return None, list(invalid.errors)


def _occurred_at_errors(value: Any) -> list[FieldError]:
    """A time that reads as one but is not written as the rule says (out of range)."""
    if not isinstance(value, str) or _OCCURRED_AT_WRITTEN.fullmatch(value):
        return []
    try:
        msgspec.convert(value, OccurredAt)
    except msgspec.ValidationError:
        return []  # not a time at all: InboundEvent's own check says so
    return [FieldError("occurred_at", f"{value[:64]!r} is not {OCCURRED_AT_RULE}")]


def _read_decision(
    document: dict[str, Any], *, accepted: bool
) -> tuple[uuid.UUID | None, list[FieldError]]:
    """A decision's market and every wrong field of its payload and context; nothing for
    other event types.

    Read beside the event's own fields, so that one answer lists the wrong ones of all
    three; a payload or context that is not an object is named by the event's check.
    """
    event_type = document.get("event_type")
    if not isinstance(event_type, str) or event_type not in DECISION_OF_EVENT:
        return None, []
    market_id: uuid.UUID | None = None
    errors: list[FieldError] = []
    payload = document.get("payload")
    if isinstance(payload, dict):
        rule = AcceptedDecisionPayload if accepted else DecisionPayload
        read, found = _converted(payload, rule)
        market_id = None if read is None else read.market_id
        errors += _within("payload", found)
        if disagreement := contradiction(event_type, payload.get("decision")):
            errors.append(FieldError("payload.decision", disagreement))
    context = document.get("context", {})
    if isinstance(context, dict) and not accepted:
        errors += _within("context", _converted(context, DecisionContext)[1])
    return (market_id if not errors else None), errors


def _within(name: str, errors: list[FieldError]) -> list[FieldError]:
    return [FieldError(f"{name}.{e.field}", e.reason) for e in errors]


def read_event_json(raw: bytes, *, capped: bool = False, accepted: bool = False) -> EventEnvelope:
    """An event from the polling feed, as raw JSON; RequestValidationError naming why not.

    The webhook's rules (read_event), after what only a feed can serve: an event over
    MAX_EVENT_BYTES, JSON that does not decode, or a value the page's nesting cap dropped
    (the cap leaves each event at most MAX_NESTING deep, so nothing recursive below
    overflows; `capped`: the page was capped, so the cap's marker means a dropped value).
    Admin replay reads a stored event document with this same function (`accepted`, see
    read_event, for the record of an event the consumer could not apply).
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
    return read_event(document, accepted=accepted)


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
