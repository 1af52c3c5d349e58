"""Why an inbound event was not applied, as a code the metrics and alerts can count by
(processing_error keeps the words)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-29T20:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "processed_events.processing_reason"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="market", description=DESCRIPTION)
    manager.add_column(
        table_class_name="ProcessedEvent",
        tablename="processed_events",
        column_name="processing_reason",
        db_column_name="processing_reason",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )
    return manager
