"""Leadership terms: each relay that takes the lead draws the next number, and Redis
refuses appends from any lower term (a fence against a leader that paused past its
lock)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-29T20:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "outbox relay leadership terms"

FORWARD = ["CREATE SEQUENCE outbox_relay_terms AS bigint"]
BACKWARD = ["DROP SEQUENCE outbox_relay_terms"]


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
