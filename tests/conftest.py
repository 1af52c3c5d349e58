"""Fixtures against the real PostgreSQL and Redis that `make services` ensures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from app.settings import load_settings
from scripts.services import test_database_url
from tests.support.flow import Flow
from tests.support.postgres_server import PostgresServer
from tests.support.processes import ROOT, ManagedProcess, start_api
from tests.support.redis_server import RedisServer

_settings = load_settings()
DATABASE_URL = test_database_url(_settings.database_url)
# Tests own a Redis logical database of their own and empty it freely.
REDIS_URL = os.environ.get(
    "TEST_REDIS_URL", urlunsplit(urlsplit(_settings.redis_url)._replace(path="/15"))
)
TABLES = (
    "markets, assets, outbox, processed_events, market_approval_events, poller_cursors, "
    "idempotency_keys, event_replays"
)


def service_env(**overrides: str) -> dict[str, str]:
    """The environment of a process under test: the test database and Redis."""
    return {
        "APP_ENV": "test",
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "LOG_LEVEL": "INFO",
        **overrides,
    }


def run_migrations(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piccolo.main", "migrations", "forwards", "market"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.fixture(scope="session", autouse=True)
def migrated_database() -> None:
    run_migrations(DATABASE_URL)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@asynccontextmanager
async def emptied_database(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, on the database at `url`, emptied first."""
    connection = await asyncpg.connect(url)
    await connection.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def migrated(server: PostgresServer) -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of a test's own, started and migrated; destroyed after."""
    await server.start()
    run_migrations(server.url)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
async def db() -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, on the test database emptied before the test."""
    async with emptied_database(DATABASE_URL) as connection:
        yield connection


@pytest.fixture
async def redis_client() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def api(log_dir: Path) -> Iterator[str]:
    """The API as a real process on a free port; yields its base URL."""
    process, base_url = start_api(service_env(), log_dir)
    try:
        yield base_url
    finally:
        process.stop()


@pytest.fixture
async def client(api: str, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        yield http


__all__ = ["ManagedProcess", "emptied_database", "migrated", "run_migrations", "service_env"]


@pytest.fixture(scope="module")
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of the module's own, migrated, which its tests may restart."""
    async with migrated(PostgresServer()) as server:
        yield server


@pytest.fixture
async def flow(db: asyncpg.Connection, log_dir: Path) -> AsyncIterator[Flow]:
    """The test database, a Redis server of the test's own, and the processes it starts."""
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    harness = Flow(db, server, client, log_dir, service_env())
    try:
        yield harness
    finally:
        for process in harness.processes:
            process.kill()
        await client.aclose()
        server.destroy()
