"""Market reads: GET /api/v1/markets/{id} against /health, cached and not; and how soon
after a decision is applied a read shows it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench import tools
from bench.consumer import seed_pending_markets
from bench.flow import API_WORKERS, WEBHOOK, approval, start_api
from bench.http_load import KeepAliveConnection
from bench.support import BenchEnv, api_peak_rss_mb, percentile
from tests.support.processes import ManagedProcess

READ_MARKETS = 1000
# Reads of a market after the first that answered active, over any connection (so any
# worker): each must answer active too.
AFTER_ACTIVE = 5


async def market_read(env: BenchEnv, seconds: int) -> dict[str, Any]:
    """wrk at concurrency 32: /health; GETs of 1,000 decided markets picked at random
    (most of a marketplace's markets, for most of their lives), then of 1,000 pending
    ones; then the same mix with the cache off (another API)."""
    await env.reset()
    ids = await seed_pending_markets(env, 2 * READ_MARKETS)
    decided, pending = ids[:READ_MARKETS], ids[READ_MARKETS:]
    await env.db.execute(
        "UPDATE markets SET status = 'active', decided_by = 'bench-admin', decided_at = now()"
        " WHERE id = ANY($1::uuid[])",
        decided,
    )
    scripts = {
        "decided": _random_reads(env, "decided", decided),
        "pending": _random_reads(env, "pending", pending),
        "both": _random_reads(env, "both", ids),
    }
    api, base_url = start_api(env, "bench-api-read")
    try:
        health = await asyncio.to_thread(tools.wrk, f"{base_url}/health", seconds, script=None)
        cached = {
            kind: await asyncio.to_thread(tools.wrk, base_url, seconds, script=scripts[kind])
            for kind in ("decided", "pending")
        }
        rss = api_peak_rss_mb(api.process.pid)
    finally:
        api.stop()
    api, base_url = start_api(env, "bench-api-read-uncached", MARKET_CACHE="false")
    try:
        uncached = await asyncio.to_thread(tools.wrk, base_url, seconds, script=scripts["both"])
    finally:
        api.stop()
    for load in (health, *cached.values(), uncached):
        assert load["non_2xx"] == 0, load
    return {
        "workers": API_WORKERS,
        "markets": READ_MARKETS,
        "requests_per_s": cached["decided"]["requests_per_s"],
        "p50_ms": cached["decided"]["p50_ms"],
        "p99_ms": cached["decided"]["p99_ms"],
        "health_requests_per_s": health["requests_per_s"],
        "ratio": cached["decided"]["requests_per_s"] / health["requests_per_s"],
        "pending_requests_per_s": cached["pending"]["requests_per_s"],
        "pending_p99_ms": cached["pending"]["p99_ms"],
        "uncached_requests_per_s": uncached["requests_per_s"],
        "uncached_p99_ms": uncached["p99_ms"],
        "peak_rss_mb": rss,
    }


def _random_reads(env: BenchEnv, name: str, ids: list[str]) -> Path:
    script = env.log_dir / f"market_read_{name}.lua"
    script.write_text(
        f"-- wrk: GET one of the bench's {name} markets at random (make bench, market reads).\n"
        f"local ids = {{{', '.join(json.dumps(i) for i in ids)}}}\n"
        "request = function()\n"
        '  return wrk.format("GET", "/api/v1/markets/" .. ids[math.random(#ids)])\n'
        "end\n"
    )
    return script


async def read_after_decision(env: BenchEnv, decisions: int, rate: int) -> dict[str, Any]:
    """Each market read once (its pending view cached), then its approval posted to the
    webhook at `rate`/s and the market read again and again, each read on whichever of
    16 connections is free (so by any worker), until it is active.

    Staleness of a market: from its decision's transaction to the start of the last read
    that still answered pending (0 when none did after it); an upper bound, since the
    transaction commits a little after its timestamp. Also counted: a read answering
    pending after an earlier read of the same market answered active (a status going
    back), which must never happen."""
    await env.reset()
    ids = await seed_pending_markets(env, decisions)
    api, base_url = start_api(env, "bench-api-staleness")
    relay = ManagedProcess("bench-relay-staleness", ["-m", "relay"], env.process_env(), env.log_dir)
    consumer = ManagedProcess(
        "bench-consumer-staleness", ["-m", "app.approvals"], env.process_env(), env.log_dir
    )
    watcher = _Watcher()
    try:
        relay.wait_for_log("leading")
        consumer.wait_for_log("consuming")
        await watcher.open(base_url, 16)
        rows = await env.db.fetch("SELECT id::text AS id, entity_id::text AS entity FROM markets")
        entities = {row["id"]: row["entity"] for row in rows}
        for market_id in ids:
            await watcher.status(market_id)
        tasks = []
        start = time.monotonic()
        for n, market_id in enumerate(ids):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = approval(market_id, entities[market_id])
            tasks.append(asyncio.create_task(watcher.decide_and_watch(market_id, body)))
        await asyncio.gather(*tasks)
    finally:
        watcher.close()
        for process in (consumer, relay, api):
            process.stop()
    decided = {
        row["id"]: row["decided_at"].timestamp()
        for row in await env.db.fetch("SELECT id::text AS id, decided_at FROM markets")
    }
    stale_ms = [
        max(0.0, (watcher.last_pending.get(market_id, 0.0) - decided[market_id]) * 1000)
        for market_id in ids
    ]
    return {
        "decisions": decisions,
        "rate_per_s": rate,
        "stale_p50_ms": percentile(stale_ms, 50),
        "stale_p99_ms": percentile(stale_ms, 99),
        "stale_max_ms": max(stale_ms),
        "went_back": watcher.went_back,
    }


class _Watcher:
    """Reads of markets over a pool of connections, remembering per market when the last
    read answering pending started, and counting reads that went back to pending."""

    def __init__(self) -> None:
        self._pool: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()
        self.last_pending: dict[str, float] = {}
        self.went_back = 0

    async def open(self, base_url: str, connections: int) -> None:
        for _ in range(connections):
            self._pool.put_nowait(await KeepAliveConnection.open(base_url))

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().close()

    async def status(self, market_id: str) -> tuple[float, str]:
        """When the read started (time.time()) and the status it answered."""
        connection = await self._pool.get()
        try:
            started = time.time()
            code, body = await connection.get(f"/api/v1/markets/{market_id}")
            assert code == 200, body
            current: str = json.loads(body)["market"]["status"]
            return started, current
        finally:
            self._pool.put_nowait(connection)

    async def decide_and_watch(self, market_id: str, approval_body: bytes) -> None:
        """Post the approval, then read until it answers active, and AFTER_ACTIVE times
        more, each of which must still answer active."""
        connection = await self._pool.get()
        try:
            code = await connection.post_json(WEBHOOK, approval_body)
            assert code < 300, code
        finally:
            self._pool.put_nowait(connection)
        active_reads = 0
        while active_reads <= AFTER_ACTIVE:
            started, current = await self.status(market_id)
            if current != "pending_approval":
                active_reads += 1
            elif active_reads:
                self.went_back += 1
                return
            else:
                self.last_pending[market_id] = started
            await asyncio.sleep(0.002)
