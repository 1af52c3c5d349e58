"""Relay figures: drain rate of a backlog, and commit -> XADD latency at a steady rate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from app.markets.events import Announced
from app.redis_client import entries_of
from app.settings import load_settings
from bench import tools
from bench.support import BenchEnv, percentile
from outbox import MARKETS_EVENTS, enqueue, new_event
from relay.outbox_relay import MARK_PUBLISHED_SQL, SELECT_BATCH_SQL
from tests.support.outbox import seed_outbox
from tests.support.processes import start_relay


async def seed_backlog(env: BenchEnv, rows: int) -> None:
    """`rows` unpublished rows, analysed as autovacuum would have analysed a backlog that
    built up (it is off on some servers; stale statistics make the drain sort the whole
    backlog for each batch), and flushed so that the seeding's writes are not measured."""
    await env.reset()
    await seed_outbox(env.db, rows, markets=1000)
    await env.db.execute("ANALYZE outbox")
    await env.db.execute("CHECKPOINT")


async def drain_with_limits(env: BenchEnv, rows: int) -> dict[str, Any]:
    """The relay's drain beside its two limits, each measured alone: PostgreSQL (pgbench of
    the drain's SQL) and Redis (redis-benchmark of the same XADDs). The relay needs both, so
    the lower one bounds it: `ratio` is to that one."""
    drain = await drain_rate(env, rows)
    pgbench = await postgres_drain_limit(env, rows, load_settings().outbox_batch_size)
    rate = drain["events_per_s"]
    return {
        **drain,
        "pgbench_events_per_s": pgbench,
        "ratio_to_pgbench": rate / pgbench,
        "ratio_to_redis": rate / drain["redis_xadd_limit_per_s"],
        "ratio": rate / min(pgbench, drain["redis_xadd_limit_per_s"]),
    }


async def drain_rate(env: BenchEnv, rows: int) -> dict[str, Any]:
    """Seed `rows` unpublished rows, start a relay, time first to last XADD."""
    await seed_backlog(env, rows)
    relay = start_relay(env.process_env(), env.log_dir, "bench-relay-drain")
    try:
        deadline = time.monotonic() + 600
        while await env.db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            assert time.monotonic() < deadline, relay.log_tail()
            await asyncio.sleep(0.1)
    finally:
        relay.stop()
    [(first_id, fields)] = entries_of(await env.redis.xrange(MARKETS_EVENTS, count=1))
    [(last_id, _)] = entries_of(await env.redis.xrevrange(MARKETS_EVENTS, count=1))
    span_ms = _entry_ms(last_id) - _entry_ms(first_id)
    xadd_limit = await asyncio.to_thread(
        tools.redis_xadd_limit, env.redis_server.port, min(rows, 200_000), fields
    )
    return {
        "rows": rows,
        "seconds": span_ms / 1000,
        "events_per_s": rows / max(span_ms, 1) * 1000,
        "redis_xadd_limit_per_s": xadd_limit,
    }


def drain_script(batch: int) -> str:
    """pgbench script of the relay's drain, built from the relay's own two statements so
    that it cannot drift from them: lock and read a batch, mark it published, commit.

    The relay sends the ids it read back as an array; here they are the ids pgbench knows
    the batch holds (a fresh backlog numbers its rows from 1, one client drains it in id
    order), counted by the client's `round` variable, which persists between transactions.
    """
    batch_ids = "ARRAY(SELECT generate_series(:first::bigint, :last::bigint))"
    return "\n".join(
        [
            "\\set round :round + 1",
            "\\set first (:round - 1) * :batch + 1",
            "\\set last :round * :batch",
            "BEGIN;",
            # The one relay leads with the newest term.
            SELECT_BATCH_SQL.replace("$1", ":batch")
            .replace("$2::bigint", "(SELECT last_value FROM outbox_relay_terms)")
            .strip()
            + ";",
            MARK_PUBLISHED_SQL.replace("$1::bigint[]", batch_ids + "::bigint[]").strip() + ";",
            "COMMIT;",
        ]
    )


async def postgres_drain_limit(env: BenchEnv, rows: int, batch: int) -> float:
    """pgbench of the drain over the same backlog, one client like the one leading relay:
    what PostgreSQL alone allows on this machine; events/s."""
    await seed_backlog(env, rows)
    script = env.log_dir / "drain.sql"
    script.write_text(drain_script(batch))
    tps = await asyncio.to_thread(
        tools.pgbench,
        env.database_url,
        script,
        transactions=rows // batch,
        clients=1,
        # The simple protocol: in prepared mode pgbench would take the colons of to_char's
        # format (HH24:MI:SS) for variables.
        variables={"batch": batch, "round": 0},
    )
    left = await env.db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    assert left == rows % batch, f"the pgbench drain left {left} rows: ids not 1..{rows}?"
    return tps * batch


async def commit_to_xadd_latency(env: BenchEnv, rate: int, seconds: float) -> dict[str, Any]:
    """Commit one event per transaction at `rate`/s; latency = XADD time - commit time."""
    await env.reset()
    relay = start_relay(env.process_env(), env.log_dir, "bench-relay-latency")
    try:
        relay.wait_for_log("leading")
        committed = await _produce(env.database_url, rate, seconds)
        deadline = time.monotonic() + 60
        while await env.redis.xlen(MARKETS_EVENTS) < len(committed):
            assert time.monotonic() < deadline, relay.log_tail()
            await asyncio.sleep(0.1)
    finally:
        relay.stop()
    latencies = []
    for entry_id, fields in entries_of(await env.redis.xrange(MARKETS_EVENTS)):
        commit_ms = committed[fields["event_id"]]
        latencies.append(max(0.0, _entry_ms(entry_id) - commit_ms))
    return {
        "rate_per_s": rate,
        "events": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


async def _produce(database_url: str, rate: int, seconds: float) -> dict[str, float]:
    connection = await asyncpg.connect(database_url)
    committed: dict[str, float] = {}
    start = time.monotonic()
    try:
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = new_event(
                event_type=Announced.REGISTERED,
                source="bench",
                aggregate_type="market",
                aggregate_id=f"market-{n % 100}",
                payload={"n": n},
            )
            async with connection.transaction():
                await enqueue(connection, MARKETS_EVENTS, [event])
            committed[event.event_id] = time.time() * 1000
    finally:
        await connection.close()
    return committed


def _entry_ms(entry_id: str) -> float:
    return float(entry_id.split("-", maxsplit=1)[0])
