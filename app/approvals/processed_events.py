"""processed_events: every inbound event and what became of it (the repository that
docs/async-approval-flow.md describes).

The unique event_id is the dedup of the whole flow: a row is written in the same
transaction as the change the event causes, so an event changes state at most once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import msgspec

from app.approvals.domain import Reason, Status
from app.db import DELETE_BATCH, Connection, delete_in_batches
from app.wire import WireStruct

_encode = msgspec.json.Encoder().encode

_COLUMNS = (
    "event_id, event_type, source, processing_status, processing_reason, processing_error, "
    "payload, received_at, processed_at, attempts"
)


class ProcessedEvent(WireStruct, frozen=True, kw_only=True):
    """A record as the admin API and the console show it: camelCase on the wire, its
    payload as it arrived."""

    event_id: str
    event_type: str
    source: str
    processing_status: Status
    processing_reason: Reason | None
    processing_error: str | None
    payload: dict[str, Any]
    received_at: datetime
    processed_at: datetime | None
    attempts: int


class ProcessedEventRow(msgspec.Struct, frozen=True, kw_only=True):
    """An outcome to record."""

    event_id: str
    event_type: str
    source: str
    status: Status
    error: str | None
    payload: dict[str, Any]
    reason: Reason | None = None
    attempts: int = 1
    received_at: datetime | None = None  # default: now


class EventCursor(NamedTuple):
    """Where a page newest first ends: its last row's received_at and id."""

    received_at: datetime
    id: int


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which processed events a list shows; unset fields select any."""

    status: Status | None = None
    event_type: str | None = None
    source: str | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before

    def where(self, args: list[Any]) -> str:
        """The SQL condition, its values appended to `args` as parameters. Only the
        filters given are written: `$1 IS NULL OR ...` would cost the planner the index."""
        clauses = []
        for column, operator, value in (
            ("processing_status", "=", self.status.value if self.status else None),
            ("event_type", "=", self.event_type),
            ("source", "=", self.source),
            ("received_at", ">=", self.since),
            ("received_at", "<", self.until),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} {operator} ${len(args)}")
        return " AND ".join(clauses) or "TRUE"


class ProcessedEventRepository:
    def __init__(self, connection: Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def is_event_processed(self, event_id: str) -> bool:
        return bool(await self.processed_among([event_id]))

    async def processed_among(self, event_ids: Sequence[str]) -> set[str]:
        """Those of `event_ids` already recorded."""
        rows = await self._db.fetch(
            "SELECT event_id FROM processed_events WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
        return {row["event_id"] for row in rows}

    async def record_processed_event(self, row: ProcessedEventRow) -> bool:
        """Record an event's outcome; False when its event_id is already recorded."""
        return bool(await self.record_processed_events([row]))

    async def record_processed_events(self, rows: Sequence[ProcessedEventRow]) -> set[str]:
        """Record many outcomes in one statement; returns the event_ids that were new.

        Rows are inserted in event_id order, so that two transactions recording some of
        the same events wait for each other instead of deadlocking.
        """
        ordered = sorted(rows, key=lambda row: row.event_id)
        inserted = await self._db.fetch(
            """
            INSERT INTO processed_events (event_id, event_type, source, processing_status,
                                          processing_reason, processing_error, payload,
                                          received_at, processed_at, attempts)
            SELECT r.event_id, r.event_type, r.source, r.status, r.reason, r.error,
                   r.payload::jsonb, coalesce(r.received_at, now()), now(), r.attempts
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::timestamptz[], $8::int[], $9::text[]) WITH ORDINALITY
                 AS r(event_id, event_type, source, status, error, payload, received_at,
                      attempts, reason, position)
            ORDER BY r.position
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
            """,
            [row.event_id for row in ordered],
            [row.event_type for row in ordered],
            [row.source for row in ordered],
            [row.status.value for row in ordered],
            [row.error for row in ordered],
            [_encode(row.payload).decode() for row in ordered],
            [row.received_at for row in ordered],
            [row.attempts for row in ordered],
            [row.reason for row in ordered],
        )
        return {record["event_id"] for record in inserted}

    async def lock_processed_event(self, event_id: str) -> ProcessedEvent | None:
        """The record of `event_id`, locked until the transaction ends: a replay reads
        it, audits it and takes it away without another replay doing so meanwhile."""
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM processed_events WHERE event_id = $1 FOR UPDATE",  # noqa: S608
            event_id,
        )
        return None if row is None else ProcessedEvent(**dict(row))

    async def record_replay(
        self, event: ProcessedEvent, *, forced: bool, actor: str | None
    ) -> None:
        """Audit a replay in event_replays: what the record said before, whether it was
        forced, and who asked (cut to the column's 255 characters)."""
        await self._db.execute(
            """
            INSERT INTO event_replays (event_id, previous_status, previous_error, forced,
                                       replayed_by)
            VALUES ($1, $2, $3, $4, $5)
            """,
            event.event_id,
            event.processing_status,
            event.processing_error,
            forced,
            actor[:255] if actor else None,
        )

    async def delete_processed_event(self, event_id: str) -> None:
        """Take the record away, so that the event under `event_id` is applied again."""
        await self._db.execute("DELETE FROM processed_events WHERE event_id = $1", event_id)

    async def find_processed_event_by_id(self, event_id: str) -> ProcessedEvent | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM processed_events WHERE event_id = $1",  # noqa: S608
            event_id,
        )
        return None if row is None else ProcessedEvent(**dict(row))

    async def list_processed_events(
        self,
        *,
        status: Status | None = None,
        event_type: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[ProcessedEvent]:
        """Newest first, filtered by any of status, type, source and a received_at window."""
        chosen = EventFilter(
            status=status, event_type=event_type, source=source, since=since, until=until
        )
        args: list[Any] = []
        where = chosen.where(args)
        rows = await self._db.fetch(
            f"""
            SELECT {_COLUMNS} FROM processed_events WHERE {where}
            ORDER BY received_at DESC, id DESC
            LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}
            """,  # noqa: S608 - only constant SQL is interpolated; values are parameters
            *args,
            limit,
            offset,
        )
        return [ProcessedEvent(**dict(row)) for row in rows]

    async def page_processed_events(
        self, chosen: EventFilter, *, before: EventCursor | None = None, limit: int = 50
    ) -> tuple[list[ProcessedEvent], EventCursor | None]:
        """A page newest first, after `before` (keyset: an index range, however deep the
        page); the cursor of the next page, None on the last."""
        args: list[Any] = []
        where = chosen.where(args)
        if before is not None:
            args.extend(before)
            where += f" AND (received_at, id) < (${len(args) - 1}, ${len(args)})"
        rows = await self._db.fetch(
            f"""
            SELECT id, {_COLUMNS} FROM processed_events WHERE {where}
            ORDER BY received_at DESC, id DESC LIMIT ${len(args) + 1}
            """,  # noqa: S608 - only constant SQL is interpolated; values are parameters
            *args,
            limit + 1,
        )
        items = [ProcessedEvent(**{k: v for k, v in row.items() if k != "id"}) for row in rows]
        if len(rows) <= limit:
            return items, None
        last = rows[limit - 1]
        return items[:limit], EventCursor(last["received_at"], last["id"])

    async def count_processed_events(self, chosen: EventFilter) -> int:
        args: list[Any] = []
        where = chosen.where(args)
        count = await self._db.fetchval(
            f"SELECT count(*) FROM processed_events WHERE {where}",  # noqa: S608
            *args,
        )
        return int(count)

    async def event_ids(self, chosen: EventFilter, limit: int) -> list[str]:
        """The ids of the oldest `limit` events `chosen` selects."""
        args: list[Any] = []
        where = chosen.where(args)
        rows = await self._db.fetch(
            f"""
            SELECT event_id FROM processed_events WHERE {where}
            ORDER BY received_at, id LIMIT ${len(args) + 1}
            """,  # noqa: S608 - only constant SQL is interpolated; values are parameters
            *args,
            limit,
        )
        return [row["event_id"] for row in rows]

    async def get_failed_events_count(self, window: timedelta = timedelta(hours=24)) -> int:
        count = await self._db.fetchval(
            """
            SELECT count(*) FROM processed_events
            WHERE processing_status = 'failed' AND processed_at >= $1
            """,
            datetime.now(UTC) - window,
        )
        return int(count)

    async def delete_old_processed_events(
        self,
        older_than: datetime,
        batch: int = DELETE_BATCH,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Delete events received before `older_than`, a small transaction at a time
        until `stop` is set."""
        return await delete_in_batches(
            self._db,
            """
            DELETE FROM processed_events WHERE id IN (
                SELECT id FROM processed_events WHERE received_at < $1 LIMIT $2
            )
            """,
            older_than,
            batch,
            stop,
        )
