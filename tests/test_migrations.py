"""`make migrate`: one history that builds every table, and a second run changes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from scripts.services import with_database
from tests.conftest import DATABASE_URL, run_migrations
from tests.support.migrations import make_migrate
from tests.support.processes import ROOT

# Named after the test database, so that suites run side by side on one server (each with
# a DATABASE_URL of its own) never drop each other's scratch database.
SCRATCH = urlsplit(DATABASE_URL).path.lstrip("/") + "_migration_check"

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
    await admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{SCRATCH}"')
    try:
        yield with_database(DATABASE_URL, SCRATCH)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
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


MIGRATIONS = len(list(Path(ROOT, "piccolo_migrations").glob("market_*.py")))


async def test_make_migrate_says_in_one_line_what_it_applied_then_that_nothing_is_pending(
    scratch_url: str,
) -> None:
    migrations = MIGRATIONS
    first = make_migrate(scratch_url)
    second = make_migrate(scratch_url)

    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == f"migrate: {migrations} applied, now up to date ({migrations})\n"
    assert second.stdout == f"migrate: up to date ({migrations}), nothing to apply\n"
    assert first.stderr == second.stderr == ""
    assert await schema_of(scratch_url) != []


def test_make_migrate_that_cannot_reach_the_database_fails_naming_it() -> None:
    failed = make_migrate("postgresql://postgres@127.0.0.1:1/nowhere")

    assert failed.returncode == 1
    assert "migrate: failed on 127.0.0.1:1/nowhere:" in failed.stderr
    assert failed.stdout == ""


def test_the_readme_quotes_what_make_migrate_prints() -> None:
    """The README tells a newcomer what `make migrate` says; the count must be today's."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"migrate: {MIGRATIONS} applied, now up to date ({MIGRATIONS})" in readme
    assert f"migrate: up to date ({MIGRATIONS}), nothing to apply" in readme
    assert set(re.findall(r"migrate: (?:up to date \()?(\d+)", readme)) == {str(MIGRATIONS)}
