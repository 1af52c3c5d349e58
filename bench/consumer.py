"""Consumer figures: decisions applied per second with 1 and 2 processes, and their RSS."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.approvals.consumer import transaction_groups
from app.markets.events import Decided
from app.settings import load_settings
from bench import tools
from bench.support import BenchEnv, peak_rss_mb
from outbox import ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS, new_event
from tests.support.processes import ManagedProcess


async def seed_pending_markets(env: BenchEnv, count: int) -> list[str]:
    rows = await env.db.fetch(
        """
        WITH new AS (
            INSERT INTO markets (id, name, issuer_id, entity_id, status)
            -- Ids pgbench can name too (bench/decisions.sql): market n is md5 of its name.
            SELECT md5('bench-market-' || g)::uuid, 'Bench ' || g, md5('bench-issuer-' || g)::uuid,
                   md5('bench-entity-' || g)::uuid, 'pending_approval'
            FROM generate_series(1, $1) AS g
            RETURNING id
        ), assets AS (
            INSERT INTO assets (id, market_id, asset_type, token_symbol, token_name,
                                total_supply, asset_details)
            SELECT gen_random_uuid(), id, 'real_estate', 'BENCH', 'Bench', 1000000, '{}'
            FROM new
        )
        SELECT id::text AS id FROM new
        """,
        count,
    )
    # A running service's history of earlier decisions, and statistics on it all, as
    # autovacuum keeps them. Without statistics (this server runs without autovacuum)
    # the consumer's prepared statements are planned for empty tables once and for all,
    # and its lookups in processed_events go sequential as the table grows.
    await env.db.execute(
        """
        INSERT INTO processed_events (event_id, event_type, source, processing_status,
                                      payload, received_at, processed_at)
        SELECT 'history-' || g, 'market.approved', 'entity_permissions_core', 'success',
               '{}', now() - interval '1 day', now() - interval '1 day'
        FROM generate_series(1, $1) AS g
        """,
        count,
    )
    await env.db.execute("ANALYZE markets, assets, processed_events")
    return [row["id"] for row in rows]


async def xadd_decisions(env: BenchEnv, market_ids: list[str]) -> None:
    for start in range(0, len(market_ids), 1000):
        async with env.redis.pipeline(transaction=False) as pipe:
            for market_id in market_ids[start : start + 1000]:
                event = new_event(
                    event_type=Decided.APPROVED,
                    source="entity_permissions_core",
                    aggregate_type="market",
                    aggregate_id=market_id,
                    payload={"market_id": market_id, "decision": "approved"},
                    context={"actor_id": "bench-admin"},
                )
                fields: dict[Any, Any] = event.stream_fields(0)  # xadd's types are invariant
                pipe.xadd(ENTITY_PERMISSIONS_EVENTS, fields)
            await pipe.execute()


async def decisions_per_second(
    env: BenchEnv, processes: int, decisions: int, seconds: int
) -> dict[str, Any]:
    """A backlog of `decisions` approvals on the stream, drained by `processes` consumers,
    beside pgbench of the consumer's transaction at the same concurrency."""
    applied = await _consumers_apply(env, processes, decisions)
    limit = await postgres_decisions_limit(env, processes, decisions, seconds)
    return {
        **applied,
        "pgbench_decisions_per_s": limit,
        "ratio": applied["decisions_per_s"] / limit,
    }


async def postgres_decisions_limit(
    env: BenchEnv, processes: int, markets: int, seconds: int
) -> float:
    """pgbench of bench/decisions.sql with as many clients, each applying as many decisions
    per transaction, as `processes` consumers run: each splits a read into parallel
    transactions (transaction_groups). Decisions/s."""
    settings = load_settings()
    groups = transaction_groups(settings.consumer_batch_size, settings.consumer_concurrency)
    per_transaction = -(-settings.consumer_batch_size // groups)
    clients = groups * processes
    await env.reset()
    await seed_pending_markets(env, markets)
    tps = await asyncio.to_thread(
        tools.pgbench,
        env.database_url,
        tools.HERE / "decisions.sql",
        seconds=seconds,
        clients=clients,
        variables={
            "batch": per_transaction,
            "batches": markets // per_transaction,
            "clients": clients,
            "round": 0,
            "stream": MARKETS_EVENTS,
        },
        protocol="prepared",
    )
    return tps * per_transaction


async def _consumers_apply(env: BenchEnv, processes: int, decisions: int) -> dict[str, Any]:
    applied_count = "SELECT count(*) FROM processed_events WHERE event_id NOT LIKE 'history-%'"
    await env.reset()
    markets = await seed_pending_markets(env, decisions)
    await xadd_decisions(env, markets)
    consumers = [
        ManagedProcess(
            f"bench-consumer-{processes}-{slot}",
            ["-m", "app.approvals"],
            env.process_env(CONSUMER_SLOT=str(slot)),
            env.log_dir,
        )
        for slot in range(processes)
    ]
    try:
        deadline = time.monotonic() + 600
        while await env.db.fetchval(applied_count) < decisions:
            assert time.monotonic() < deadline, consumers[0].log_tail()
            await asyncio.sleep(0.2)
        rss = [peak_rss_mb(c.process.pid) for c in consumers]
    finally:
        for consumer in consumers:
            consumer.stop()
    span = await env.db.fetchval(
        "SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM processed_events"
        " WHERE event_id NOT LIKE 'history-%'"
    )
    return {
        "processes": processes,
        "decisions": decisions,
        "seconds": float(span),
        "decisions_per_s": decisions / max(float(span), 1e-3),
        "peak_rss_mb": max(rss),
    }
