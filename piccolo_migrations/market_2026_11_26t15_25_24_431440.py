"""Indexes and checks the Piccolo column types cannot express."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T15:25:24:431440"
VERSION = "1.38.0"
DESCRIPTION = "indexes for the relay, the consumer and monitoring"

FORWARD = [
    # The relay's drain scans only what is still to publish.
    "CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL",
    # Retention and replay walk published rows by time.
    "CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL",
    # Monitoring: failures and success rate over a window.
    "CREATE INDEX processed_events_status_time_idx"
    " ON processed_events (processing_status, processed_at)",
    "CREATE INDEX processed_events_received_at_idx ON processed_events (received_at)",
    "ALTER TABLE markets ADD CONSTRAINT markets_status_check"
    " CHECK (status IN ('pending_approval', 'active', 'rejected'))",
    "ALTER TABLE processed_events ADD CONSTRAINT processed_events_status_check"
    " CHECK (processing_status IN ('success', 'failed', 'skipped'))",
    "ALTER TABLE assets ADD CONSTRAINT assets_total_supply_check"
    " CHECK (total_supply > 0 AND total_supply = trunc(total_supply))",
]

BACKWARD = [
    "ALTER TABLE assets DROP CONSTRAINT assets_total_supply_check",
    "ALTER TABLE processed_events DROP CONSTRAINT processed_events_status_check",
    "ALTER TABLE markets DROP CONSTRAINT markets_status_check",
    "DROP INDEX processed_events_received_at_idx",
    "DROP INDEX processed_events_status_time_idx",
    "DROP INDEX outbox_published_at_idx",
    "DROP INDEX outbox_unpublished_idx",
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
