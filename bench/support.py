"""What every benchmark shares: a database and a Redis of its own, process logs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Self

import asyncpg
import redis.asyncio as redis

from app.settings import load_settings
from scripts.services import bench_database_url
from tests.conftest import TABLES, run_migrations, service_env
from tests.support.processes import memory_mb
from tests.support.redis_server import RedisServer


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    return memory_mb(pid, "VmHWM")


def worker_pids(pid: int) -> list[int]:
    """An API's serving processes: with several workers, the supervisor's children."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


def api_peak_rss_mb(pid: int) -> float:
    """The largest peak RSS among an API's workers: the figure the per-worker limit is
    about (the supervisor only waits)."""
    return max(peak_rss_mb(worker) for worker in worker_pids(pid))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


class BenchEnv:
    """Benchmarks write to the bench database (BENCH_DATABASE_URL, default DATABASE_URL's
    name + `_bench`, which `make services` creates) and a Redis server started for the run:
    a benchmark empties its tables freely, so it must not share them with a test run."""

    database_url = bench_database_url(load_settings().database_url)

    def __init__(self) -> None:
        self.redis_server = RedisServer()
        self.log_dir = Path(tempfile.mkdtemp(prefix="market-bench-"))
        self.db: asyncpg.Connection
        self.redis: redis.Redis

    async def __aenter__(self) -> Self:
        run_migrations(self.database_url)
        self.redis_server.start()
        self.db = await asyncpg.connect(self.database_url)
        self.redis = redis.Redis.from_url(self.redis_server.url)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.redis.aclose()
        await self.db.close()
        self.redis_server.stop()

    def process_env(self, **overrides: str) -> dict[str, str]:
        return service_env(
            DATABASE_URL=self.database_url, REDIS_URL=self.redis_server.url, **overrides
        )

    async def reset(self) -> None:
        await self.db.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        await self.db.execute("VACUUM ANALYZE outbox")
        # Flush the previous figure's writes now, not in the middle of the next one.
        await self.db.execute("CHECKPOINT")
        await self.redis.flushall()
