"""Writing to the outbox: events inside the caller's transaction, retained rows made
unpublished again for the relay to publish once more, and rows deleted (one event's, for
a replay under its own id; published ones past the retention window)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import asyncpg
import msgspec

from app import tracing
from app.db import DELETE_BATCH, Connection, delete_in_batches
from outbox.envelope import EventEnvelope

# The relay LISTENs on this channel; PostgreSQL delivers a NOTIFY only when the
# transaction that sent it commits, and folds repeats within one transaction.
NOTIFY_CHANNEL: Final = "outbox"

_encode = msgspec.json.Encoder().encode

_INSERT = """
WITH inserted AS (
    INSERT INTO outbox (event_id, stream, event_type, source, aggregate_type, aggregate_id,
                        payload, context, occurred_at)
    SELECT e.event_id, e.stream, e.event_type, e.source, e.aggregate_type, e.aggregate_id,
           e.payload::jsonb, e.context::jsonb, e.occurred_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::timestamptz[]) WITH ORDINALITY
         AS e(event_id, stream, event_type, source, aggregate_type, aggregate_id,
              payload, context, occurred_at, position)
    ORDER BY e.position  -- ids follow the caller's order: the relay publishes by id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
SELECT event_id, pg_notify($10, '') FROM inserted
"""


async def enqueue(connection: Connection, stream: str, events: Sequence[EventEnvelope]) -> set[str]:
    """Add events for `stream` in the connection's open transaction, in the order given.

    Returns the event ids actually inserted: an id already in the outbox is left alone,
    which is how an inbound event delivered twice is recognised. Each event's context is
    stored with the trace context of the span current now, if any (app/tracing).
    """
    if not connection.is_in_transaction():
        raise RuntimeError("outbox.enqueue must run inside the caller's transaction")
    rows = await connection.fetch(
        _INSERT,
        [e.event_id for e in events],
        [stream] * len(events),
        [e.event_type for e in events],
        [e.source for e in events],
        [e.aggregate_type for e in events],
        [e.aggregate_id for e in events],
        [_encode(e.payload).decode() for e in events],
        [_encode(tracing.with_trace_context(e.context)).decode() for e in events],
        [e.occurred_at for e in events],
        NOTIFY_CHANNEL,
    )
    return {row["event_id"] for row in rows}


async def mark_for_republish(
    connection: Connection, since: datetime, stream: str | None = None
) -> int:
    """Make retained rows created since `since` unpublished again, and wake the relay.

    The relay then publishes them like any other rows, in id order, before anything
    newer: which is how both `make replay` and the refill of an emptied Redis work.
    """
    async with connection.transaction():
        status = await connection.execute(
            """
            UPDATE outbox SET published_at = NULL
            WHERE published_at IS NOT NULL AND created_at >= $1
              AND ($2::text IS NULL OR stream = $2)
            """,
            since,
            stream,
        )
        await connection.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return int(status.split()[-1])


async def delete_event(connection: Connection, event_id: str) -> None:
    """Delete the row of `event_id`, published or not, in the caller's transaction: an
    event replayed under its own id is enqueued again, which its old row would refuse."""
    await connection.execute("DELETE FROM outbox WHERE event_id = $1", event_id)


async def delete_published_before(
    db: Connection | asyncpg.Pool,
    older_than: datetime,
    batch: int = DELETE_BATCH,
    stop: asyncio.Event | None = None,
) -> int:
    """Delete published rows created before `older_than`, a small transaction at a time
    until `stop` is set; unpublished rows stay, however old."""
    return await delete_in_batches(
        db,
        """
        DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox
            WHERE created_at < $1 AND published_at IS NOT NULL
            ORDER BY id LIMIT $2
        )
        """,
        older_than,
        batch,
        stop,
    )
