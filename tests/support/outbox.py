"""Outbox rows and stream entries for relay tests: seed fast, read back, check."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as redis

from app.redis_client import entries_of


async def seed_outbox(
    db: asyncpg.Connection,
    rows: int,
    markets: int = 100,
    stream: str = "markets:events",
    age: str = "0 seconds",
    published: bool = False,
) -> None:
    """Insert rows straight into the outbox, round-robin over `markets` aggregates."""
    await db.execute(
        """
        INSERT INTO outbox (event_id, stream, event_type, source, aggregate_type, aggregate_id,
                            payload, context, occurred_at, created_at, published_at)
        SELECT gen_random_uuid()::text, $3, 'market.registered', 'market_backend', 'market',
               'market-' || (g % $2), jsonb_build_object('n', g), '{}'::jsonb,
               now() - $4::text::interval, now() - $4::text::interval,
               CASE WHEN $5 THEN now() - $4::text::interval END
        FROM generate_series(1, $1) AS g
        """,
        rows,
        markets,
        stream,
        age,
        published,
    )


async def write_steadily(db: asyncpg.Connection, stop: asyncio.Event) -> None:
    """20 rows every 10 ms over 10 markets, each transaction with its NOTIFY, until `stop`."""
    while not stop.is_set():
        await seed_outbox(db, 20, markets=10)
        await db.execute("NOTIFY outbox")
        await asyncio.sleep(0.01)


async def unpublished(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll until `condition` holds; fail with `what` rather than hang."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def read_stream(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    start = "-"
    while True:
        page = entries_of(await client.xrange(stream, min=start, count=10_000))
        if not page:
            return entries
        entries.extend(fields for _, fields in page)
        start = "(" + page[-1][0]


class StreamReport:
    def __init__(self, entries: int, distinct: int) -> None:
        self.entries = entries
        self.distinct = distinct
        self.duplicates = entries - distinct


async def check_stream_against_outbox(
    db: asyncpg.Connection, client: redis.Redis, stream: str = "markets:events"
) -> StreamReport:
    """Every outbox row of `stream` is on it, and each market's events in id order.

    Duplicates are allowed (at-least-once); order is judged on each event's first
    appearance, which is what a consumer that drops repeats acts on.
    """
    entries = await read_stream(client, stream)
    ids = {row["id"] for row in await db.fetch("SELECT id FROM outbox WHERE stream = $1", stream)}
    seen: set[int] = set()
    per_market: dict[str, list[int]] = defaultdict(list)
    for fields in entries:
        outbox_id = int(fields["outbox_id"])
        if outbox_id not in seen:
            seen.add(outbox_id)
            per_market[fields["aggregate_id"]].append(outbox_id)
    missing = ids - seen
    assert not missing, f"{len(missing)} outbox rows never reached {stream}: {sorted(missing)[:10]}"
    for market, order in per_market.items():
        assert order == sorted(order), f"{market}: events out of commit order"
    return StreamReport(len(entries), len(seen))
