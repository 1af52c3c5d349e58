"""Relay figures: drain rate of a backlog, and commit -> XADD latency at a steady rate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench import tools
from bench.support import BenchEnv, percentile
from outbox import MARKETS_EVENTS, enqueue, new_event
from relay.outbox_relay import MARK_PUBLISHED_SQL, SELECT_BATCH_SQL
from tests.support.outbox import seed_outbox
from tests.support.processes import start_relay


async def drain_rate(env: BenchEnv, rows: int) -> dict[str, Any]:
    """Seed `rows` unpublished rows, start a relay, time first to last XADD."""
    await env.reset()
    await seed_outbox(env.db, rows, markets=1000)
    relay = start_relay(env.process_env(), env.log_dir, "bench-relay-drain")
    try:
        deadline = time.monotonic() + 600
        while await env.db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            assert time.monotonic() < deadline, relay.log_tail()
            await asyncio.sleep(0.1)
    finally:
        relay.stop()
    first = await env.redis.xrange(MARKETS_EVENTS, count=1)
    last = await env.redis.xrevrange(MARKETS_EVENTS, count=1)
    span_ms = _entry_ms(last[0][0]) - _entry_ms(first[0][0])
    fields = {k.decode(): v.decode() for k, v in first[0][1].items()}
    xadd_limit = await asyncio.to_thread(
        tools.redis_xadd_limit, env.redis_server.port, min(rows, 200_000), fields
    )
    return {
        "rows": rows,
        "seconds": span_ms / 1000,
        "events_per_s": rows / max(span_ms, 1) * 1000,
        "redis_xadd_limit_per_s": xadd_limit,
    }


async def postgres_drain_limit(env: BenchEnv, rows: int) -> dict[str, Any]:
    """The relay's own SQL (lock a batch, mark it published, commit) with no Redis at all:
    what PostgreSQL alone allows on this machine, one batch after another."""
    await env.reset()
    await seed_outbox(env.db, rows, markets=1000)
    started = time.perf_counter()
    while True:
        async with env.db.transaction():
            batch = await env.db.fetch(SELECT_BATCH_SQL, 500)
            if not batch:
                break
            await env.db.execute(MARK_PUBLISHED_SQL, [row["id"] for row in batch])
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "events_per_s": rows / seconds}


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
    for entry_id, fields in await env.redis.xrange(MARKETS_EVENTS):
        commit_ms = committed[fields[b"event_id"].decode()]
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
                event_type="market.registered",
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


def _entry_ms(entry_id: bytes) -> float:
    return float(entry_id.split(b"-")[0])
