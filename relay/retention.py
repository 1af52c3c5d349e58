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

import asyncpg
import msgspec

import outbox
from app.approvals.processed_events import ProcessedEventRepository
from app.idempotency import IdempotencyRepository
from app.settings import Settings

log = logging.getLogger("relay.retention")


class Deleted(msgspec.Struct, frozen=True):
    outbox: int
    processed_events: int
    idempotency_keys: int

    @property
    def total(self) -> int:
        return self.outbox + self.processed_events + self.idempotency_keys


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
    # Each table's repository deletes through one batching loop (app.db.delete_in_batches),
    # which checks `stop` before every batch: once set, none of the three deletes more.
    outbox_rows = await outbox.delete_published_before(
        pool, now - timedelta(hours=settings.outbox_retention_hours), stop=stop
    )
    processed = await ProcessedEventRepository(pool).delete_old_processed_events(
        now - timedelta(days=settings.processed_events_retention_days), stop=stop
    )
    keys = await IdempotencyRepository(pool).delete_keys_created_before(
        now - timedelta(hours=settings.idempotency_key_retention_hours), stop=stop
    )
    deleted = Deleted(outbox_rows, processed, keys)
    await _vacuum(pool, deleted)
    if deleted.total:
        log.info(
            "retention: deleted %d outbox rows, %d processed events, %d idempotency keys",
            outbox_rows,
            processed,
            keys,
            extra=msgspec.structs.asdict(deleted),
        )
    return deleted
