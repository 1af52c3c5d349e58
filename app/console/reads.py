"""What the console's pages read beyond the repositories: a market's life, its outbox
rows and their stream entries, stream entries and groups, the outbox's unpublished
rows, the replay audit. Every query is by an index (piccolo_migrations lists them);
every Redis read is bounded in entries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final

import msgspec
import redis.asyncio as redis

from app.approvals.domain import Status
from app.db import Connection
from app.markets.domain import Market
from app.markets.events import Announced
from app.markets.repository import ApprovalRecord
from app.redis_client import entries_of
from outbox import ENTITY_PERMISSIONS_EVENTS

PAGE: Final = 50
# Where to look for a row's stream entry: the relay appends it just after the start of
# the transaction that marks it published (published_at), on another host's clock.
ENTRY_SEARCH_BEFORE: Final = timedelta(seconds=5)
ENTRY_SEARCH_AFTER: Final = timedelta(seconds=60)
ENTRY_SEARCH_MAX: Final = 2000  # entries read at most per row looked up
ENTRY_SEARCH_PAGE: Final = 200
# A market has a handful of rows (registered, approval requested, the decision, its
# announcements); a sender repeating decisions for it must not make its page slow.
MARKET_ROWS_SHOWN: Final = 50
ENTRIES_LOOKED_UP: Final = 12


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    event_id: str
    stream: str
    event_type: str
    aggregate_id: str
    created_at: datetime
    published_at: datetime | None
    attempts: int
    last_error: str | None
    entry_id: str | None = None  # found on its stream


class Step(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    at: datetime | None
    detail: str = ""
    took_s: float | None = None  # since the step before it


class InboundDecision(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    event_type: str
    received_at: datetime | None
    status: Status | None  # None: not processed yet
    reason: str | None
    error: str | None


class StreamEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    fields: dict[str, str]


class ReplayAudit(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    event_id: str
    previous_status: str
    previous_error: str | None
    forced: bool
    replayed_by: str | None
    replayed_at: datetime


_OUTBOX_COLUMNS = (
    "id, event_id, stream, event_type, aggregate_id, created_at, published_at, attempts, last_error"
)


async def outbox_rows_of(connection: Connection, market_id: uuid.UUID) -> list[OutboxRow]:
    rows = await connection.fetch(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE aggregate_id = $1 ORDER BY id LIMIT $2",  # noqa: S608
        str(market_id),
        MARKET_ROWS_SHOWN,
    )
    return [OutboxRow(**dict(row)) for row in rows]


async def inbound_decisions(connection: Connection, rows: list[OutboxRow]) -> list[InboundDecision]:
    """The decisions received for a market (its rows on entity-permissions:events) and
    what became of each."""
    inbound = [row for row in rows if row.stream == ENTITY_PERMISSIONS_EVENTS]
    records = {
        r["event_id"]: r
        for r in await connection.fetch(
            """
            SELECT event_id, processing_status, processing_reason, processing_error,
                   received_at
            FROM processed_events WHERE event_id = ANY($1::text[])
            """,
            [row.event_id for row in inbound],
        )
    }
    decisions = []
    for row in inbound:
        record = records.get(row.event_id)
        decisions.append(
            InboundDecision(
                event_id=row.event_id,
                event_type=row.event_type,
                received_at=record["received_at"] if record else row.created_at,
                status=Status(record["processing_status"]) if record else None,
                reason=record["processing_reason"] if record else None,
                error=record["processing_error"] if record else None,
            )
        )
    return decisions


def timeline(market: Market, rows: list[OutboxRow], approvals: list[ApprovalRecord]) -> list[Step]:
    """registered -> approval requested -> decided -> applied -> announced, each with
    how long it took after the one before."""
    by_type = {row.event_type: row for row in rows}
    requested = by_type.get(Announced.APPROVAL_REQUESTED)
    steps: list[tuple[str, datetime | None, str]] = [
        ("Registered", market.created_at, "market created, pending_approval"),
        (
            "Approval requested",
            requested.published_at if requested else None,
            "on markets:events for Entity Permissions Core"
            if requested and requested.published_at
            else "waiting for the relay"
            if requested
            else "outbox row no longer retained",
        ),
    ]
    decision = approvals[0] if approvals else None
    if decision is None:
        steps.append(("Decided", None, "waiting for a decision in Entity Permissions Core"))
    else:
        announced = by_type.get(
            Announced.ACTIVATED if decision.decision == "approved" else Announced.REJECTED
        )
        steps += [
            (
                "Decided",
                decision.occurred_at,
                f"{decision.decision} by {decision.actor_id or 'an unnamed actor'}"
                + (f": {decision.reason}" if decision.reason else ""),
            ),
            ("Applied", decision.processed_at, f"market {market.status}"),
            (
                "Activated" if decision.decision == "approved" else "Rejected",
                announced.published_at if announced else None,
                f"{announced.event_type} on markets:events"
                if announced and announced.published_at
                else "waiting for the relay"
                if announced
                else "outbox row no longer retained",
            ),
        ]
    result: list[Step] = []
    previous: datetime | None = None
    for label, at, detail in steps:
        took = (at - previous).total_seconds() if at and previous else None
        result.append(Step(label=label, at=at, detail=detail, took_s=took))
        previous = at or previous
    return result


async def find_entries(client: redis.Redis, rows: list[OutboxRow]) -> list[OutboxRow]:
    """Each published row with the id of its entry on its stream, looked for near the
    time it was published (entry ids are Redis's clock, in milliseconds)."""
    found = []
    for number, row in enumerate(rows):
        entry = (
            await _entry_of(client, row)
            if row.published_at and number < ENTRIES_LOOKED_UP
            else None
        )
        found.append(msgspec.structs.replace(row, entry_id=entry))
    return found


async def _entry_of(client: redis.Redis, row: OutboxRow) -> str | None:
    assert row.published_at is not None
    start = f"{int((row.published_at - ENTRY_SEARCH_BEFORE).timestamp() * 1000)}-0"
    end = f"{int((row.published_at + ENTRY_SEARCH_AFTER).timestamp() * 1000)}-0"
    wanted = str(row.id)
    read = 0
    while read < ENTRY_SEARCH_MAX:
        entries = entries_of(await client.xrange(row.stream, start, end, count=ENTRY_SEARCH_PAGE))
        for entry_id, fields in entries:
            if fields.get("outbox_id") == wanted:
                return entry_id
        if len(entries) < ENTRY_SEARCH_PAGE:
            return None
        read += len(entries)
        start = "(" + entries[-1][0]
    return None


async def stream_entries(
    client: redis.Redis, stream: str, before: str | None, count: int = PAGE
) -> tuple[list[StreamEntry], str | None]:
    """Entries newest first, before the entry id `before`; the next page's cursor."""
    raw = await client.xrevrange(stream, f"({before}" if before else "+", "-", count=count + 1)
    entries = [StreamEntry(id=entry_id, fields=fields) for entry_id, fields in entries_of(raw)]
    if len(entries) <= count:
        return entries, None
    return entries[:count], entries[count - 1].id


async def statuses(connection: Connection, event_ids: list[str]) -> dict[str, Status]:
    rows = await connection.fetch(
        "SELECT event_id, processing_status FROM processed_events WHERE event_id = ANY($1::text[])",
        event_ids,
    )
    return {row["event_id"]: Status(row["processing_status"]) for row in rows}


async def unpublished(
    connection: Connection, after: int | None
) -> tuple[list[OutboxRow], int | None]:
    """Unpublished outbox rows oldest first (the relay's order), by its partial index."""
    rows = await connection.fetch(
        f"""
        SELECT {_OUTBOX_COLUMNS} FROM outbox
        WHERE published_at IS NULL AND id > $1 ORDER BY id LIMIT $2
        """,  # noqa: S608 - only the constant column list is interpolated
        after or 0,
        PAGE + 1,
    )
    items = [OutboxRow(**dict(row)) for row in rows[:PAGE]]
    return items, items[-1].id if len(rows) > PAGE else None


async def outbox_row(connection: Connection, event_id: str) -> OutboxRow | None:
    row = await connection.fetchrow(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE event_id = $1",  # noqa: S608
        event_id,
    )
    return OutboxRow(**dict(row)) if row else None


async def republishable(connection: Connection, since: datetime, stream: str | None) -> int:
    """How many rows `make replay SINCE=` would publish again (by the created_at index)."""
    count = await connection.fetchval(
        """
        SELECT count(*) FROM outbox
        WHERE published_at IS NOT NULL AND created_at >= $1
          AND ($2::text IS NULL OR stream = $2)
        """,
        since,
        stream,
    )
    return int(count)


async def replay_audit(
    connection: Connection, *, event_id: str | None = None, before: int | None = None
) -> tuple[list[ReplayAudit], int | None]:
    """The replay audit newest first, of one event or of all (by id, keyset)."""
    rows = await connection.fetch(
        """
        SELECT id, event_id, previous_status, previous_error, forced, replayed_by, replayed_at
        FROM event_replays
        WHERE ($1::text IS NULL OR event_id = $1) AND id < $2
        ORDER BY id DESC LIMIT $3
        """,
        event_id,
        before or 2**62,
        PAGE + 1,
    )
    items = [ReplayAudit(**dict(row)) for row in rows[:PAGE]]
    return items, items[-1].id if len(rows) > PAGE else None
