"""The event envelope: one shape for the outbox row, the stream entry and the consumer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, Any]).decode


# The fields of every stream entry (docs/design.md, Streams), all flat strings.
STREAM_FIELDS = (
    "event_id",
    "event_type",
    "source",
    "aggregate_type",
    "aggregate_id",
    "occurred_at",
    "payload",
    "context",
    "outbox_id",
)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`, as every stream entry carries it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    event_type: str
    source: str
    aggregate_type: str
    aggregate_id: str
    occurred_at: datetime
    payload: dict[str, Any]
    context: dict[str, Any] = msgspec.field(default_factory=dict)

    def stream_fields(self, outbox_id: int) -> dict[str, str]:
        """Flat string fields (docs/design.md, Streams), readable with `redis-cli XRANGE`."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "source": self.source,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "occurred_at": format_timestamp(self.occurred_at),
            "payload": _json_encode(self.payload).decode(),
            "context": _json_encode(self.context).decode(),
            "outbox_id": str(outbox_id),
        }

    @classmethod
    def from_stream_fields(cls, fields: dict[str, str]) -> EventEnvelope:
        """The inverse of stream_fields; raises msgspec.ValidationError on a malformed entry."""
        return msgspec.convert(
            {
                **fields,
                "payload": _json_decode(fields.get("payload", "{}")),
                "context": _json_decode(fields.get("context", "{}")),
            },
            cls,
            strict=False,
        )


def new_event(
    *,
    event_type: str,
    source: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: dict[str, Any],
    context: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> EventEnvelope:
    """An envelope with a fresh id and the current time unless the sender supplied them."""
    return EventEnvelope(
        event_id=event_id or str(uuid.uuid4()),
        event_type=event_type,
        source=source,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        occurred_at=occurred_at or datetime.now(UTC),
        payload=payload,
        context=context or {},
    )
