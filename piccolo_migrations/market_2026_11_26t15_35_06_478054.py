"""Retention and replay select outbox rows by creation time, not publication time:
a replayed row is published again, and must still leave when its window ends."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T15:35:06:478054"
VERSION = "1.38.0"
DESCRIPTION = "outbox retention and replay by creation time"

FORWARD = [
    "DROP INDEX outbox_published_at_idx",
    "CREATE INDEX outbox_created_at_idx ON outbox (created_at)",
]
BACKWARD = [
    "DROP INDEX outbox_created_at_idx",
    "CREATE INDEX outbox_published_at_idx ON outbox (published_at)"
    " WHERE published_at IS NOT NULL",
]


async def _run(statements: list[str]) -> None:
    engine = engine_finder()
    assert engine is not None
    for statement in statements:
        await engine.run_ddl(statement)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="market", description=DESCRIPTION)

    async def run() -> None:
        await _run(FORWARD)

    async def run_backwards() -> None:
        await _run(BACKWARD)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
