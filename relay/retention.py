"""Retention: old rows deleted in small transactions, so tables stay bounded.

Published outbox rows past OUTBOX_RETENTION_HOURS (the replay and refill window),
processed_events past PROCESSED_EVENTS_RETENTION_DAYS, and Idempotency-Key responses
past IDEMPOTENCY_KEY_RETENTION_HOURS. The leading relay applies it every minute;
`make cleanup` applies it once. Unpublished outbox rows are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
import msgspec

from app.approvals.processed_events import ProcessedEventRepository
from app.db import delete_in_batches
from app.settings import Settings

log = logging.getLogger("relay.retention")

BATCH: Final = 1000


class Deleted(msgspec.Struct, frozen=True):
    outbox: int
    processed_events: int
    idempotency_keys: int

    @property
    def total(self) -> int:
        return self.outbox + self.processed_events + self.idempotency_keys


async def delete_expired_outbox(
    pool: asyncpg.Pool, older_than: datetime, stop: asyncio.Event | None = None
) -> int:
    """Delete published rows created before `older_than`, a small transaction at a time."""
    return await delete_in_batches(
        pool,
        """
        DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox
            WHERE created_at < $1 AND published_at IS NOT NULL
            ORDER BY id LIMIT $2
        )
        """,
        older_than,
        BATCH,
        stop,
    )


async def _vacuum(pool: asyncpg.Pool, deleted: Deleted) -> None:
    """Make the deleted rows' space reusable now rather than whenever autovacuum comes
    (if it is on at all): the outbox's every row is also dead once, when it is marked
    published, so without this it grows with all traffic ever sent, not the window."""
    tables = [
        table
        for table, count in (
            ("outbox", deleted.outbox),
            ("processed_events", deleted.processed_events),
            ("idempotency_keys", deleted.idempotency_keys),
        )
        if count
    ]
    if tables:
        await pool.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")


async def apply_retention(
    pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event | None = None
) -> Deleted:
    now = datetime.now(UTC)
    outbox = await delete_expired_outbox(
        pool, now - timedelta(hours=settings.outbox_retention_hours), stop
    )
    processed = await ProcessedEventRepository(pool).delete_old_processed_events(
        now - timedelta(days=settings.processed_events_retention_days), BATCH
    )
    keys = await delete_in_batches(
        pool,
        """
        DELETE FROM idempotency_keys WHERE key IN (
            SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT $2
        )
        """,
        now - timedelta(hours=settings.idempotency_key_retention_hours),
        BATCH,
        stop,
    )
    deleted = Deleted(outbox, processed, keys)
    await _vacuum(pool, deleted)
    if deleted.total:
        log.info(
            "retention: deleted %d outbox rows, %d processed events, %d idempotency keys",
            outbox,
            processed,
            keys,
            extra=msgspec.structs.asdict(deleted),
        )
    return deleted
