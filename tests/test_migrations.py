"""`make migrate`: one history that builds every table, and a second run changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from scripts.services import with_database
from tests.conftest import DATABASE_URL, run_migrations

SCRATCH = "marketdb_migration_check"

SCHEMA = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type AS item
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    admin = await asyncpg.connect(with_database(DATABASE_URL, "postgres"))
    await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {SCRATCH}")
    try:
        yield with_database(DATABASE_URL, SCRATCH)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        await admin.close()


async def schema_of(url: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(url)
    try:
        return [(row["kind"], row["item"]) for row in await connection.fetch(SCHEMA)]
    finally:
        await connection.close()


async def test_migrations_build_every_table_and_a_second_run_changes_nothing(
    scratch_url: str,
) -> None:
    first = run_migrations(scratch_url)
    schema = await schema_of(scratch_url)
    second = run_migrations(scratch_url)

    assert "No migrations need to be run" in second.stdout, first.stdout + second.stdout
    assert await schema_of(scratch_url) == schema
    tables = {item.split(".")[0] for kind, item in schema if kind == "column"}
    assert {
        "markets",
        "assets",
        "outbox",
        "processed_events",
        "market_approval_events",
        "poller_cursors",
    } <= tables
    indexes = " ".join(item for kind, item in schema if kind == "index")
    assert "outbox_unpublished_idx" in indexes and "WHERE (published_at IS NULL)" in indexes
    assert "processed_events_status_time_idx" in indexes
