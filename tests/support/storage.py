"""What a refused request must not have left behind: rows, stream entries, Redis keys."""

from __future__ import annotations

import asyncpg
import redis.asyncio as redis

# The rate limiter counts every request, refused or not: the one key a refusal may leave.
RATE_LIMIT_PREFIX = "ratelimit:"


async def row_counts(db: asyncpg.Connection) -> dict[str, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM outbox) AS outbox,"
        " (SELECT count(*) FROM processed_events) AS processed_events,"
        " (SELECT count(*) FROM market_approval_events) AS market_approval_events,"
        " (SELECT count(*) FROM markets) AS markets"
    )
    assert row is not None
    return dict(row)


async def redis_keys(client: redis.Redis) -> list[str]:
    return sorted(key for key in await client.keys("*") if not key.startswith(RATE_LIMIT_PREFIX))


async def assert_nothing_stored(db: asyncpg.Connection, client: redis.Redis) -> None:
    assert await row_counts(db) == dict.fromkeys(
        ("outbox", "processed_events", "market_approval_events", "markets"), 0
    )
    assert await redis_keys(client) == []
