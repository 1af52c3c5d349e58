"""`make soak MINUTES=10`: the whole service under steady mixed load for a while.

Every process runs as it would be deployed (API, relay, two consumers, poller, simulator
pushing signed webhooks; APP_ENV=test) on a database of its own (SOAK_DATABASE_URL,
default DATABASE_URL's name + `_soak`, created by `make services`) and a Redis server
started for the run, with retention windows of a few minutes so that the tables must
level off within the run. Every SAMPLE_EVERY_S it prints each process's RSS and the
sizes of the outbox and processed_events tables; at the end it counts every market,
decision and stream entry against what was accepted, exactly as the fault matrix does.
It exits 1 if anything was lost or applied twice, or if a table or a process kept
growing once retention had run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

from app.settings import load_settings
from scripts.services import soak_database_url
from tests.conftest import TABLES, run_migrations
from tests.support.load import SteadyLoad
from tests.support.outbox import wait_until
from tests.support.processes import memory_mb
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack
from tests.support.tally import count_everything, settled

REGISTRATIONS_PER_S = 20.0
RETENTION_MINUTES = 2.0
SAMPLE_EVERY_S = 30.0
# Retention runs every minute: by then the tables hold the window and no more.
LEVEL_AFTER_MINUTES = RETENTION_MINUTES + 1.5
PROCESSES = ("api", "relay", "consumer-0", "consumer-1", "poller")


async def sample(stack: Stack, db: asyncpg.Connection, started: float) -> dict[str, Any]:
    sizes = await db.fetchrow(
        """
        SELECT (SELECT count(*) FROM outbox) AS outbox_rows,
               (SELECT count(*) FROM processed_events) AS processed_events_rows,
               (SELECT count(*) FROM markets) AS markets,
               pg_total_relation_size('outbox') AS outbox_bytes,
               pg_total_relation_size('processed_events') AS processed_events_bytes
        """
    )
    assert sizes is not None
    return {
        "minute": round((time.monotonic() - started) / 60, 1),
        **{
            f"rss_mb_{name}": round(memory_mb(stack.processes[name].process.pid))
            for name in PROCESSES
        },
        **dict(sizes),
    }


def levelled(rows: list[dict[str, Any]], key: str, after_minute: float) -> bool:
    """Whether `key` stopped growing: past `after_minute` (retention has run by then), its
    peak in the later half of the samples is within 20 % of its peak in the earlier half."""
    steady = [row[key] for row in rows if row["minute"] >= after_minute]
    half = len(steady) // 2
    if half < 2:
        return True  # too short a run to judge; the summary says so
    return bool(max(steady[half:]) <= 1.2 * max(steady[:half]))


def print_row(row: dict[str, Any]) -> None:
    rss = " ".join(f"{row[f'rss_mb_{name}']:>5}" for name in PROCESSES)
    print(
        f"{row['minute']:>6} {rss}  {row['outbox_rows']:>8} {row['outbox_bytes'] / 2**20:>7.1f}"
        f" {row['processed_events_rows']:>8} {row['processed_events_bytes'] / 2**20:>7.1f}"
        f" {row['markets']:>8}",
        flush=True,
    )


def soak_stack(database_url: str, redis_url: str) -> Stack:
    """The service with retention windows short enough to level the tables off in the run."""
    retention_hours = str(RETENTION_MINUTES / 60)
    return Stack(
        database_url,
        redis_url,
        Path(tempfile.mkdtemp(prefix="market-soak-")),
        env={
            "OUTBOX_RETENTION_HOURS": retention_hours,
            "IDEMPOTENCY_KEY_RETENTION_HOURS": retention_hours,
            "PROCESSED_EVENTS_RETENTION_DAYS": str(RETENTION_MINUTES / 60 / 24),
        },
    )


async def run_sampled(
    stack: Stack, load: SteadyLoad, db: asyncpg.Connection, client: redis.Redis, minutes: float
) -> list[dict[str, Any]]:
    """The load for `minutes`, then until everything settled; a sample row every interval."""
    rows: list[dict[str, Any]] = []
    started = time.monotonic()

    async def sampler() -> None:
        while True:
            rows.append(await sample(stack, db, started))
            print_row(rows[-1])
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampling = asyncio.create_task(sampler())
    try:
        await load.run(minutes * 60)

        async def done() -> bool:
            return await settled(db, client, load.accepted)

        await wait_until(done, 300, "every decision applied and every row published")
    finally:
        sampling.cancel()
    rows.append(await sample(stack, db, started))
    print_row(rows[-1])
    return rows


def still_growing(rows: list[dict[str, Any]]) -> list[str]:
    # Retention runs every minute and deletes what is older than its window.
    keys = (
        "outbox_rows",
        "outbox_bytes",
        "processed_events_rows",
        "processed_events_bytes",
        *(f"rss_mb_{name}" for name in PROCESSES),
    )
    return [key for key in keys if not levelled(rows, key, LEVEL_AFTER_MINUTES)]


async def soak(minutes: float) -> dict[str, Any] | None:
    """The run's figures, or None when something was lost or kept growing (reason printed)."""
    # `make services` (which `make soak` runs first) creates it, beside the test database.
    database_url = soak_database_url(load_settings().database_url)
    run_migrations(database_url)
    db = await asyncpg.connect(database_url)
    await db.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    redis_server = RedisServer()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    stack = soak_stack(database_url, redis_server.url)
    load = SteadyLoad(
        stack.api_url,
        stack.epc_url,
        random.Random(20261127),
        registrations_per_s=REGISTRATIONS_PER_S,
    )
    autovacuum = await db.fetchval("SHOW autovacuum")
    print(
        f"soak: {minutes:g} min at {REGISTRATIONS_PER_S:g} registrations/s, each decided by "
        f"webhook and poller; retention {RETENTION_MINUTES:g} min; PostgreSQL autovacuum "
        f"{autovacuum}; logs in {stack.log_dir}"
    )
    print(
        "minute "
        + " ".join(f"{name[:5]:>5}" for name in PROCESSES)
        + "  outbox  (MiB) processed  (MiB)  markets   <- RSS in MB, then table sizes"
    )
    try:
        stack.start_all()
        rows = await run_sampled(stack, load, db, client, minutes)
        tally = await count_everything(db, client, load.accepted, outbox_kept=False)
    except AssertionError as error:
        print(f"soak: FAILED: {error}", file=sys.stderr)
        return None
    finally:
        peaks = {
            name: round(memory_mb(stack.processes[name].process.pid, "VmHWM"))
            for name in PROCESSES
            if name in stack.processes
        }
        stack.stop_all()
        await load.aclose()
        await client.aclose()
        await db.close()
        redis_server.stop()
    if growing := still_growing(rows):
        print(f"soak: FAILED: still growing after minute {LEVEL_AFTER_MINUTES:g}: {growing}")
        return None
    levels = (
        f"table sizes and RSS level off after minute {LEVEL_AFTER_MINUTES:g}"
        if minutes >= 2 * LEVEL_AFTER_MINUTES
        else f"too short a run to judge levelling (needs {2 * LEVEL_AFTER_MINUTES:g} min)"
    )
    print(
        f"soak: nothing lost: {tally.markets} markets, {tally.decisions} decisions each "
        f"applied once, {tally.stream_entries} stream entries; {levels}; peak RSS (MB) {peaks}"
    )
    return {
        "minutes": minutes,
        "registrations_per_s": REGISTRATIONS_PER_S,
        "autovacuum": autovacuum,
        "markets": tally.markets,
        "decisions": tally.decisions,
        "stream_entries": tally.stream_entries,
        "stream_duplicates": tally.stream_duplicates,
        "retried_requests": load.accepted.retries,
        "peak_rss_mb": peaks,
        "samples": rows,
    }


def main() -> int:
    summary = asyncio.run(soak(float(os.environ.get("MINUTES") or 10)))
    if summary is None:
        return 1
    out = Path(os.environ.get("SOAK_OUT") or tempfile.mkstemp(prefix="soak-", suffix=".json")[1])
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"soak: figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
