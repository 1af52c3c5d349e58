"""The state of the flow, read from PostgreSQL and Redis when asked (at each scrape).

Relays, consumers and the poller expose no port of their own: what Prometheus needs
of them is visible from here. The outbox backlog and the processed events are in
PostgreSQL; stream lengths, group lag, pending entries and consumer idle times are in
Redis; the relay and poller leaders are the sessions holding their advisory locks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import asyncpg
import msgspec
import redis.asyncio as redis

from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from outbox.writer import Connection

STREAMS: Final = (MARKETS_EVENTS, ENTITY_PERMISSIONS_EVENTS, ENTITY_PERMISSIONS_DEAD)
LATENCY_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
WINDOWS: Final = {"30m": "30 minutes", "1h": "1 hour", "24h": "24 hours"}
RELAY_SESSIONS: Final = "market-backend:outbox-relay:"
POLLER_SESSIONS: Final = "market-backend:epc-poller:"


class GroupState(msgspec.Struct, frozen=True):
    stream: str
    group: str
    lag: int
    pending: int
    consumers_idle_s: dict[str, float]


class Leaders(msgspec.Struct, frozen=True):
    """Processes of one kind (by application_name) and which of them holds the lock."""

    processes: int
    leader: str | None


class Snapshot(msgspec.Struct, kw_only=True):
    postgres_up: bool = False
    redis_up: bool = False
    outbox_backlog: int = 0
    outbox_oldest_age_s: float = 0.0
    processed: dict[tuple[str, str, str], int] = msgspec.field(default_factory=dict)
    recent: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    latency_buckets: list[int] = msgspec.field(default_factory=list)  # cumulative
    latency_count: int = 0
    latency_sum_s: float = 0.0
    poller_last_success: float | None = None
    relay: Leaders = Leaders(0, None)
    poller: Leaders = Leaders(0, None)
    stream_lengths: dict[str, int] = msgspec.field(default_factory=dict)
    groups: list[GroupState] = msgspec.field(default_factory=list)


async def read_snapshot(pool: asyncpg.Pool, client: redis.Redis) -> Snapshot:
    snapshot = Snapshot()
    try:
        async with pool.acquire() as connection:
            await _read_postgres(connection, snapshot)
        snapshot.postgres_up = True
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        pass
    try:
        await _read_redis(client, snapshot)
        snapshot.redis_up = True
    except redis.RedisError:
        pass
    return snapshot


async def _read_postgres(connection: Connection, snapshot: Snapshot) -> None:
    row = await connection.fetchrow(
        """
        SELECT count(*) AS backlog,
               coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
        FROM outbox WHERE published_at IS NULL
        """
    )
    assert row is not None
    snapshot.outbox_backlog = row["backlog"]
    snapshot.outbox_oldest_age_s = float(row["oldest"])
    for record in await connection.fetch(
        """
        SELECT processing_status, event_type, source, count(*) AS n
        FROM processed_events GROUP BY 1, 2, 3
        """
    ):
        key = (record["processing_status"], record["event_type"], record["source"])
        snapshot.processed[key] = record["n"]
    for window, interval in WINDOWS.items():
        for record in await connection.fetch(
            """
            SELECT processing_status, count(*) AS n FROM processed_events
            WHERE received_at >= now() - $1::text::interval GROUP BY 1
            """,
            interval,
        ):
            snapshot.recent[(record["processing_status"], window)] = record["n"]
    latency = await connection.fetchrow(
        """
        WITH latencies AS (
            SELECT extract(epoch FROM processed_at - occurred_at) AS seconds
            FROM market_approval_events WHERE processed_at >= now() - interval '24 hours'
        )
        SELECT (SELECT count(*) FROM latencies) AS n,
               (SELECT coalesce(sum(seconds), 0) FROM latencies) AS total,
               array(SELECT (SELECT count(*) FROM latencies WHERE seconds <= bound)
                     FROM unnest($1::float8[]) AS bound) AS buckets
        """,
        list(LATENCY_BUCKETS),
    )
    assert latency is not None
    snapshot.latency_count = latency["n"]
    snapshot.latency_sum_s = float(latency["total"])
    snapshot.latency_buckets = list(latency["buckets"])
    updated = await connection.fetchval(
        "SELECT updated_at FROM poller_cursors WHERE source = 'entity_permissions_core'"
    )
    snapshot.poller_last_success = updated.timestamp() if updated else None
    snapshot.relay = await _leaders(connection, RELAY_SESSIONS)
    snapshot.poller = await _leaders(connection, POLLER_SESSIONS)


async def _leaders(connection: Connection, prefix: str) -> Leaders:
    rows = await connection.fetch(
        """
        SELECT a.application_name,
               EXISTS (SELECT 1 FROM pg_locks l
                       WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) AS leads
        FROM pg_stat_activity a
        WHERE a.application_name LIKE $1 || '%' AND a.datname = current_database()
        """,
        prefix,
    )
    leader = next((r["application_name"] for r in rows if r["leads"]), None)
    return Leaders(len(rows), leader.removeprefix(prefix) if leader else None)


async def _read_redis(client: redis.Redis, snapshot: Snapshot) -> None:
    for stream in STREAMS:
        if not await client.exists(stream):
            continue
        snapshot.stream_lengths[stream] = int(await client.xlen(stream))
        for group in await client.xinfo_groups(stream):
            name = _text(group["name"])
            consumers = await client.xinfo_consumers(stream, name)
            snapshot.groups.append(
                GroupState(
                    stream=stream,
                    group=name,
                    lag=int(group.get("lag") or 0),
                    pending=int(group["pending"]),
                    consumers_idle_s={_text(c["name"]): int(c["idle"]) / 1000 for c in consumers},
                )
            )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_s() -> float:
    return datetime.now(UTC).timestamp()
