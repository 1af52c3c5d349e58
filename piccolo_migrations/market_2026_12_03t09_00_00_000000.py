"""What the operator console reads, by index: markets newest first (by status too) and by
name prefix or token symbol, a market's outbox rows, processed events newest first by
status, decisions of the last hour; and who made each replay, for its audit log."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-03T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes for the operator console; event_replays.replayed_by"

FORWARD = [
    "CREATE INDEX markets_created_idx ON markets (created_at DESC, id DESC)",
    "CREATE INDEX markets_status_created_idx ON markets (status, created_at DESC, id DESC)",
    "CREATE INDEX markets_name_prefix_idx ON markets (lower(name) text_pattern_ops)",
    "CREATE INDEX assets_token_symbol_idx ON assets (token_symbol)",
    "CREATE INDEX outbox_aggregate_id_idx ON outbox (aggregate_id)",
    "CREATE INDEX market_approval_events_processed_at_idx"
    " ON market_approval_events (processed_at)",
    # Keyset pages newest first: (received_at, id) with or without a status.
    "CREATE INDEX processed_events_received_id_idx ON processed_events (received_at, id)",
    "CREATE INDEX processed_events_status_received_idx"
    " ON processed_events (processing_status, received_at, id)",
    "DROP INDEX processed_events_received_at_idx",
    "ALTER TABLE event_replays ADD COLUMN replayed_by varchar(255)",
]
BACKWARD = [
    "ALTER TABLE event_replays DROP COLUMN replayed_by",
    "CREATE INDEX processed_events_received_at_idx ON processed_events (received_at)",
    "DROP INDEX processed_events_status_received_idx",
    "DROP INDEX processed_events_received_id_idx",
    "DROP INDEX market_approval_events_processed_at_idx",
    "DROP INDEX outbox_aggregate_id_idx",
    "DROP INDEX assets_token_symbol_idx",
    "DROP INDEX markets_name_prefix_idx",
    "DROP INDEX markets_status_created_idx",
    "DROP INDEX markets_created_idx",
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
