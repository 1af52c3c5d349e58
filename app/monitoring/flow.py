"""The state of the flow, read from PostgreSQL and Redis for /metrics.

Relays, consumers and the poller expose no port of their own: what Prometheus needs
of them is visible from here. The outbox backlog and the processed events are in
PostgreSQL; stream lengths, group lag, pending entries and consumer idle times are in
Redis; the relay and poller leaders are the sessions holding their advisory locks.

Reading them costs full-table counts, so the figures are a snapshot refreshed at most
every METRICS_REFRESH_INTERVAL_S, once for all concurrent scrapes, on at most one pooled
connection that is given up after a time-out: a flood of scrapes cannot starve
registrations and webhooks of connections. A store that cannot be read in time keeps
its last figures and is reported down (`market_dependency_up`).

To add a figure: a field on its store's figures, its query in that store's reader,
its family in app.monitoring.metrics. To add a store: its figures, its reader, and
one line in FlowMonitor.refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Final, TypeVar

import asyncpg
import msgspec
import redis.asyncio as redis

from app.db import Connection
from app.inbound.events import EPC_SOURCE
from app.leadership import POLLER_LOCK, RELAY_LOCK, sessions_of
from app.logging import DependencyLog
from app.markets.events import DECISION_OF_EVENT
from app.monitoring.single_flight import SharedRefresh
from app.redis_client import text
from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from outbox.streams import lost_entries_key

log = logging.getLogger(__name__)

STREAMS: Final = (MARKETS_EVENTS, ENTITY_PERMISSIONS_EVENTS, ENTITY_PERMISSIONS_DEAD)
LATENCY_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
WINDOWS: Final = {"30m": "30 minutes", "1h": "1 hour", "24h": "24 hours"}
RELAY_SESSIONS: Final = sessions_of(RELAY_LOCK)
POLLER_SESSIONS: Final = sessions_of(POLLER_LOCK)
# A snapshot waits this long for a pooled connection, then keeps its last figures: while
# the pool is busy, registrations and webhooks have it.
POOL_ACQUIRE_TIMEOUT_S: Final = 1.0
# Each statement of a snapshot, enforced by PostgreSQL (SET LOCAL), so that a slow count
# or a lock wait ends on the server too, not only in this process.
STATEMENT_TIMEOUT_MS: Final = 2000
# The whole read of one store, connection and round trips included.
READ_TIMEOUT_S: Final = 5.0

F = TypeVar("F")


class GroupState(msgspec.Struct, frozen=True):
    stream: str
    group: str
    lag: int
    pending: int
    consumers_idle_s: dict[str, float]
    # Since the oldest entry still pending was delivered (None: nothing pending).
    oldest_pending_idle_s: float | None = None


class Leaders(msgspec.Struct, frozen=True):
    """Processes of one kind (by application_name) and which of them holds the lock."""

    processes: int
    leader: str | None


class PostgresFigures(msgspec.Struct, kw_only=True):
    outbox_backlog: int = 0
    outbox_oldest_age_s: float = 0.0
    processed: dict[tuple[str, str, str], int] = msgspec.field(default_factory=dict)
    recent: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    # Events recorded without being applied, by (reason, window).
    not_applied: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    latency_buckets: list[int] = msgspec.field(default_factory=list)  # cumulative
    latency_count: int = 0
    latency_sum_s: float = 0.0
    poller_last_success: float | None = None
    relay: Leaders = Leaders(0, None)
    poller: Leaders = Leaders(0, None)


class RedisFigures(msgspec.Struct, kw_only=True):
    stream_lengths: dict[str, int] = msgspec.field(default_factory=dict)
    groups: list[GroupState] = msgspec.field(default_factory=list)
    # Entries trimmed before a group read them, by (stream, group), since Redis started.
    lost: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Each store's figures as last read; `up` says whether the latest refresh read it
    (when not, its figures are the previous ones), `read_at` when they were read."""

    postgres: PostgresFigures = msgspec.field(default_factory=PostgresFigures)
    redis: RedisFigures = msgspec.field(default_factory=RedisFigures)
    up: dict[str, bool] = msgspec.field(default_factory=dict)
    read_at: dict[str, float] = msgspec.field(default_factory=dict)  # Unix time


class FlowMonitor:
    """The flow's snapshot, refreshed at most every `refresh_interval_s` (single-flight)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: redis.Redis,
        refresh_interval_s: float,
        addresses: Mapping[str, str],
    ) -> None:
        self._pool = pool
        self._client = client
        self._log = DependencyLog(log, "metrics snapshot", addresses)
        self._snapshots = SharedRefresh(self.refresh, Snapshot(), refresh_interval_s)

    async def snapshot(self, *, wait: bool = True) -> Snapshot:
        """The latest snapshot; `wait=False` does not wait for a refresh that is due,
        unless no snapshot has been read yet."""
        never_read = not self._snapshots.value.read_at
        return await self._snapshots.latest(wait=wait or never_read)

    async def refresh(self) -> Snapshot:
        """Read every store at once; one that fails keeps its last figures."""
        last = self._snapshots.value
        postgres, redis_figures = await asyncio.gather(
            self._read("postgres", read_postgres(self._pool)),
            self._read("redis", read_redis(self._client)),
        )
        up = {"postgres": postgres is not None, "redis": redis_figures is not None}
        now = now_s()
        return Snapshot(
            postgres=last.postgres if postgres is None else postgres,
            redis=last.redis if redis_figures is None else redis_figures,
            up=up,
            read_at={**last.read_at, **{name: now for name, ok in up.items() if ok}},
        )

    async def _read(self, dependency: str, reader: Awaitable[F]) -> F | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                figures = await reader
        # Whatever stops a read (refused, timed out, cancelled by the server, a reply not
        # understood) is reported the same way: the store is down for this snapshot.
        except Exception as error:
            self._log.down(dependency, error)
            return None
        self._log.up(dependency)
        return figures


async def read_postgres(pool: asyncpg.Pool) -> PostgresFigures:
    """One read-only transaction (one MVCC snapshot for every figure) with a statement
    time-out, on a connection the pool must give within POOL_ACQUIRE_TIMEOUT_S."""
    figures = PostgresFigures()
    async with (
        pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        await connection.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        await _query_postgres(connection, figures)
    return figures


async def _query_postgres(connection: Connection, figures: PostgresFigures) -> None:
    row = await connection.fetchrow(
        """
        SELECT count(*) AS backlog,
               coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
        FROM outbox WHERE published_at IS NULL
        """
    )
    assert row is not None
    figures.outbox_backlog = row["backlog"]
    figures.outbox_oldest_age_s = float(row["oldest"])
    # Event types and sources are the sender's words: any others are counted as `other`,
    # so that no sender can add series to the scrape.
    for record in await connection.fetch(
        """
        SELECT processing_status,
               CASE WHEN event_type = ANY($1::text[]) THEN event_type ELSE 'other' END
                   AS event_type,
               CASE WHEN source = $2 THEN source ELSE 'other' END AS source,
               count(*) AS n
        FROM processed_events GROUP BY 1, 2, 3
        """,
        sorted(DECISION_OF_EVENT),
        EPC_SOURCE,
    ):
        key = (record["processing_status"], record["event_type"], record["source"])
        figures.processed[key] = record["n"]
    for window, interval in WINDOWS.items():
        for record in await connection.fetch(
            """
            SELECT processing_status, processing_reason, count(*) AS n FROM processed_events
            WHERE received_at >= now() - $1::text::interval GROUP BY 1, 2
            """,
            interval,
        ):
            status = (record["processing_status"], window)
            figures.recent[status] = figures.recent.get(status, 0) + record["n"]
            if record["processing_reason"] is not None:
                figures.not_applied[(record["processing_reason"], window)] = record["n"]
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
    figures.latency_count = latency["n"]
    figures.latency_sum_s = float(latency["total"])
    figures.latency_buckets = list(latency["buckets"])
    updated = await connection.fetchval(
        "SELECT updated_at FROM poller_cursors WHERE source = $1", EPC_SOURCE
    )
    figures.poller_last_success = updated.timestamp() if updated else None
    figures.relay = await _leaders(connection, RELAY_SESSIONS)
    figures.poller = await _leaders(connection, POLLER_SESSIONS)


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


async def read_redis(client: redis.Redis) -> RedisFigures:
    figures = RedisFigures()
    for stream in STREAMS:
        if not await client.exists(stream):
            continue
        figures.stream_lengths[stream] = int(await client.xlen(stream))
        for group in await client.xinfo_groups(stream):
            name = text(group["name"])
            consumers = await client.xinfo_consumers(stream, name)
            pending = int(group["pending"])
            oldest = (
                await client.xpending_range(stream, name, min="-", max="+", count=1)
                if pending
                else []
            )
            figures.groups.append(
                GroupState(
                    stream=stream,
                    group=name,
                    lag=int(group.get("lag") or 0),
                    pending=pending,
                    consumers_idle_s={text(c["name"]): int(c["idle"]) / 1000 for c in consumers},
                    oldest_pending_idle_s=int(oldest[0]["time_since_delivered"]) / 1000
                    if oldest
                    else None,
                )
            )
        for reader, count in (await client.hgetall(lost_entries_key(stream))).items():
            figures.lost[(stream, text(reader))] = int(count)
    return figures


def now_s() -> float:
    return datetime.now(UTC).timestamp()
