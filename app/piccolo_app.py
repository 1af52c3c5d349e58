"""The one Piccolo app: every table, one migration history in piccolo_migrations/."""

from pathlib import Path

from piccolo.conf.apps import AppConfig

from app.tables import (
    Asset,
    EventReplay,
    IdempotencyKey,
    Market,
    MarketApprovalEvent,
    PollerCursor,
    ProcessedEvent,
)
from outbox.table import Outbox

APP_CONFIG = AppConfig(
    app_name="market",
    migrations_folder_path=str(Path(__file__).resolve().parent.parent / "piccolo_migrations"),
    table_classes=[
        Market,
        Asset,
        Outbox,
        ProcessedEvent,
        MarketApprovalEvent,
        PollerCursor,
        IdempotencyKey,
        EventReplay,
    ],
    migration_dependencies=[],
    commands=[],
)
