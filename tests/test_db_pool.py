"""The pool every process opens: warmed at start, and never refused for its bounds."""

from __future__ import annotations

import gc
import uuid

import asyncpg

from app.db import WARM_CONNECTIONS, create_pool
from app.process import settle_heap
from app.settings import load_settings
from tests.conftest import DATABASE_URL, service_env
from tests.support.processes import free_port


async def sessions_named(name: str) -> int:
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
        )
    finally:
        await connection.close()


async def test_a_new_pool_has_its_first_connections_open() -> None:
    """The first events after a start would otherwise each wait for a connection and a
    new server backend of their own."""
    settings = load_settings(service_env(), dotenv=None)
    assert settings.database_pool_min == 0
    name = f"warm-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings, max_size=10, application_name=name)
    try:
        assert pool.get_size() == WARM_CONNECTIONS > 0
        assert pool.get_idle_size() == WARM_CONNECTIONS  # every one given back
        assert await sessions_named(name) == WARM_CONNECTIONS
    finally:
        await pool.close()


async def test_a_pool_smaller_than_the_warm_count_opens_only_its_own() -> None:
    name = f"warm-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(
        load_settings(service_env(), dotenv=None), max_size=2, application_name=name
    )
    try:
        assert await sessions_named(name) == 2
    finally:
        await pool.close()


async def test_a_minimum_above_a_process_s_own_maximum_is_capped_not_refused() -> None:
    """DATABASE_POOL_MIN=5 with the relay's pool of 3: asyncpg alone would refuse to start."""
    settings = load_settings(service_env(DATABASE_POOL_MIN="5"), dotenv=None)
    pool = await create_pool(settings, max_size=3)
    try:
        assert pool.get_max_size() == 3
        assert pool.get_min_size() == 3
    finally:
        await pool.close()


async def test_a_database_that_is_away_still_gives_a_pool() -> None:
    """Warming is best effort: the process starts, and /ready says the database is down."""
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/marketdb"
    pool = await create_pool(load_settings(service_env(DATABASE_URL=away), dotenv=None))
    try:
        assert pool.get_size() == 0
    finally:
        await pool.close()


def test_settling_the_heap_freezes_what_the_process_has_built() -> None:
    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
