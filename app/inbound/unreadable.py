"""Records of deliveries that could not be read as events.

An unreadable delivery (an event on the feed, an entry on the stream) is recorded
`failed` under a key of its own, `unreadable:<sha256 of what was delivered>`, never
under the event_id it claims: that id stays free for a readable copy of the event (by
webhook, or on the feed once Entity Permissions Core fixes it), which is then applied
as usual. The same bad delivery read twice (a page stored again after a crash, an entry
published again) has the same key and is recorded once.

What processed_events.payload keeps, for the operator and for admin replay:
- a feed event: {"document": <the event as decoded>}, or {"document": null, "excerpt":
  <its first KiB>} when it was not JSON we can decode or was over MAX_EVENT_BYTES;
- a stream entry: {"payload": {"fields": <its fields>, "error": <why>}, "context": {}},
  recorded by the consumer as any failure is, with an error starting UNREADABLE_ENTRY.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from app.approvals.domain import Reason, Status
from app.approvals.processed_events import ProcessedEventRow
from app.db import storable
from app.inbound.events import MAX_EVENT_BYTES
from app.json_limits import MAX_NESTING, within
from app.validation import RequestValidationError

UNREADABLE_PREFIX: Final = "unreadable:"
UNREADABLE_ENTRY: Final = "unreadable entry: "  # how a stream entry's record's error starts
EXCERPT_BYTES: Final = 1024
MAX_REASON_CHARS: Final = 4000  # a spoilt event can name thousands of unknown fields
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder(order="sorted").encode


def unreadable_key(kind: str, delivered: bytes) -> str:
    """The processed_events key of an unreadable delivery of `kind` ("feed", "stream-entry")."""
    return UNREADABLE_PREFIX + hashlib.sha256(kind.encode() + b"\n" + delivered).hexdigest()


def printable(text: str) -> str:
    """Text fit for PostgreSQL and a log line: NUL and bytes that were not UTF-8 (the
    surrogates Redis replies decode them to) shown as escapes, \\u0000 and \\xff."""
    visible = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return visible.replace("\x00", "\\u0000")


def label(value: Any, default: str) -> str:
    """A claimed event_type or source, fit for its varchar(255) column; `default` when
    it is missing or no text."""
    if not isinstance(value, str) or not value:
        return default
    return printable(value)[:255]


def reason(error: Exception) -> str:
    """Why a delivery could not be read, as recorded: bounded, and storable as text."""
    if isinstance(error, RequestValidationError):
        text = f"invalid event: {error}"
    else:  # anything else one event can raise is its own failure too
        text = f"unreadable event: {type(error).__name__}: {error}"
    return printable(text)[:MAX_REASON_CHARS]


def feed_event_record(raw: bytes, error: Exception, source: str) -> ProcessedEventRow:
    """The `failed` record of an event on the feed that could not be read."""
    document = _decoded(raw)
    kept: dict[str, Any] = {"document": document}
    if document is None:
        kept["excerpt"] = raw[:EXCERPT_BYTES].decode("utf-8", "replace")
    claimed = document if isinstance(document, dict) else {}
    return ProcessedEventRow(
        event_id=unreadable_key("feed", raw),
        event_type=label(claimed.get("event_type"), "unknown"),
        source=source,
        status=Status.FAILED,
        error=reason(error),
        reason=Reason.UNREADABLE,
        payload=storable(kept, dict[str, Any]),
    )


def stream_entry_key(fields: dict[str, str]) -> str:
    """The key of an unreadable stream entry's record, from its fields (printable ones)."""
    return unreadable_key("stream-entry", _encode(fields))


def kept_document(kept: dict[str, Any]) -> tuple[bool, Any]:
    """(True, the feed event kept) for a feed event's record; None when it was not kept."""
    if "document" not in kept:
        return False, None
    return True, kept["document"]


def kept_entry_fields(kept: dict[str, Any], error: str | None) -> dict[str, str] | None:
    """The fields of the stream entry a record was made of, or None for other records."""
    inner = kept.get("payload")
    if not (error or "").startswith(UNREADABLE_ENTRY) or not isinstance(inner, dict):
        return None
    fields = inner.get("fields")
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        return None
    return fields


def _decoded(raw: bytes) -> Any:
    """The event as JSON, or None when it cannot be kept as such."""
    if len(raw) > MAX_EVENT_BYTES or not within(raw, MAX_NESTING):
        return None
    try:
        return _decode_any(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
