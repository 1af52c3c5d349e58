"""Registration against pgbench, and webhook -> market active end to end."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from bench import tools
from bench.consumer import seed_pending_markets
from bench.http_load import paced_posts
from bench.support import BenchEnv, api_peak_rss_mb, peak_rss_mb, percentile
from tests.support.processes import ManagedProcess, free_port

WEBHOOK = "/api/v1/webhooks/entity-permissions"


# The production default: one API worker per CPU this process may run on.
API_WORKERS = len(os.sched_getaffinity(0))


def start_api(
    env: BenchEnv, name: str, workers: int = API_WORKERS, **overrides: str
) -> tuple[ManagedProcess, str]:
    """The API on a free port, returned once every worker has started; the database
    connections of one worker at 32 shared among the workers."""
    port = free_port()
    process = ManagedProcess(
        name,
        ["-m", "app"],
        env.process_env(
            HTTP_PORT=str(port),
            API_WORKERS=str(workers),
            DATABASE_POOL_MAX=str(max(4, 32 // workers)),
            WEBHOOK_RATE_LIMIT_PER_MINUTE="10000000",
            **overrides,
        ),
        env.log_dir,
    )
    base_url = f"http://127.0.0.1:{port}"
    process.wait_http_ok(f"{base_url}/health")
    deadline = time.monotonic() + 60
    while process.log_text().count("Application startup complete") < workers:
        assert time.monotonic() < deadline, process.log_tail()
        time.sleep(0.05)
    return process, base_url


async def register(env: BenchEnv, seconds: int) -> dict[str, Any]:
    """wrk at concurrency 32 against the API; pgbench of the same transaction, same run."""
    await env.reset()
    api, base_url = start_api(env, "bench-api-register")
    try:
        load = await asyncio.to_thread(tools.wrk, f"{base_url}/api/v1/markets/register", seconds)
        rss = api_peak_rss_mb(api.process.pid)
    finally:
        api.stop()
    await env.reset()
    tps = await asyncio.to_thread(
        tools.pgbench, env.database_url, tools.HERE / "register.sql", seconds=seconds
    )
    return {
        **load,
        "pgbench_tps": tps,
        "ratio": load["requests_per_s"] / tps,
        "api_workers": API_WORKERS,
        "api_peak_rss_mb": rss,
    }


async def webhook_to_active(env: BenchEnv, rate: int, seconds: int) -> dict[str, Any]:
    """Decisions posted to the webhook at `rate`/s; latency until the market is active."""
    await env.reset()
    markets = await seed_pending_markets(env, rate * seconds)
    api, base_url = start_api(env, "bench-api-e2e")
    relay = ManagedProcess("bench-relay-e2e", ["-m", "relay"], env.process_env(), env.log_dir)
    consumer = ManagedProcess(
        "bench-consumer-e2e", ["-m", "app.approvals"], env.process_env(), env.log_dir
    )
    try:
        relay.wait_for_log("leading")
        consumer.wait_for_log("consuming")
        rows = await env.db.fetch("SELECT id::text AS id, entity_id::text AS entity FROM markets")
        sent = await _post_decisions(base_url, {r["id"]: r["entity"] for r in rows}, rate)
        deadline = time.monotonic() + 120
        while await env.db.fetchval("SELECT count(*) FROM markets WHERE status = 'active'") < len(
            markets
        ):
            assert time.monotonic() < deadline, consumer.log_tail()
            await asyncio.sleep(0.2)
        rss = {
            "api": api_peak_rss_mb(api.process.pid),
            "relay": peak_rss_mb(relay.process.pid),
            "consumer": peak_rss_mb(consumer.process.pid),
        }
    finally:
        for process in (consumer, relay, api):
            process.stop()
    rows = await env.db.fetch(
        """
        SELECT m.id::text AS id, m.decided_at, o.created_at AS accepted, o.published_at
        FROM markets m JOIN outbox o ON o.aggregate_id = m.id::text
        WHERE o.stream = 'entity-permissions:events'
        """
    )
    latencies = [(row["decided_at"].timestamp() - sent[row["id"]]) * 1000 for row in rows]
    # Where the time goes: POST -> accepted (outbox row), -> on the stream, -> decided.
    stages = {
        "webhook_ms": [(row["accepted"].timestamp() - sent[row["id"]]) * 1000 for row in rows],
        "relay_ms": [
            (row["published_at"] - row["accepted"]).total_seconds() * 1000 for row in rows
        ],
        "consumer_ms": [
            (row["decided_at"] - row["published_at"]).total_seconds() * 1000 for row in rows
        ],
    }
    return {
        "rate_per_s": rate,
        "decisions": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "stages_p50_p99_ms": {
            name: [percentile(values, 50), percentile(values, 99)]
            for name, values in stages.items()
        },
        "peak_rss_mb": rss,
    }


async def _post_decisions(base_url: str, markets: dict[str, str], rate: int) -> dict[str, float]:
    """An approval of each market (id to its entity_id), as the webhook requires it."""
    bodies = [
        (market_id, approval(market_id, entity_id)) for market_id, entity_id in markets.items()
    ]
    return await paced_posts(base_url, WEBHOOK, bodies, rate)


def approval(market_id: str, entity_id: str) -> bytes:
    """The webhook body approving one market (its entity_id as the market has it)."""
    return json.dumps(
        {
            "event_id": f"bench-{market_id}",
            "event_type": "market.approved",
            "source": "entity_permissions_core",
            "payload": {"market_id": market_id, "entity_id": entity_id, "decision": "approved"},
            "context": {"actor_id": "bench-admin"},
        }
    ).encode()


KNEE_P99_MS = 100.0


async def knee(env: BenchEnv, seconds: int, rates: tuple[int, ...]) -> dict[str, Any]:
    """webhook_to_active at each rate in turn until p99 passes KNEE_P99_MS: the highest
    rate that stayed within it is the capacity a reader can plan with."""
    points = []
    for rate in rates:
        result = await webhook_to_active(env, rate, seconds)
        points.append(
            {
                "rate_per_s": rate,
                "p50_ms": result["p50_ms"],
                "p99_ms": result["p99_ms"],
                "stages_p50_p99_ms": result["stages_p50_p99_ms"],
            }
        )
        if result["p99_ms"] > KNEE_P99_MS:
            break
    within = [p["rate_per_s"] for p in points if p["p99_ms"] <= KNEE_P99_MS]
    return {
        "limit_p99_ms": KNEE_P99_MS,
        "rate_per_s": max(within) if within else None,
        "points": points,
    }
