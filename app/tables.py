"""Piccolo definitions of the service's tables; the schema itself lives in piccolo_migrations/."""

from piccolo.columns import (
    JSONB,
    UUID,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Numeric,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class Market(Table, tablename="markets"):
    id = UUID(primary_key=True)
    name = Varchar(length=200)
    issuer_id = UUID(index=True)
    entity_id = UUID()
    status = Varchar(length=32, default="pending_approval", index=True)
    rejection_reason = Text(null=True, default=None)
    decided_by = Varchar(length=255, null=True, default=None)
    decided_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class Asset(Table, tablename="assets"):
    id = UUID(primary_key=True)
    market_id = ForeignKey(references=Market, unique=True, null=False)
    asset_type = Varchar(length=32)
    token_symbol = Varchar(length=11)
    token_name = Varchar(length=200)
    total_supply = Numeric()  # no precision: exact integers of any size
    asset_details = JSONB()


class ProcessedEvent(Table, tablename="processed_events"):
    id = BigSerial(primary_key=True)
    event_id = Varchar(length=255, unique=True)
    event_type = Varchar(length=255)
    source = Varchar(length=255)
    processing_status = Varchar(length=16)
    processing_reason = Varchar(length=64, null=True, default=None)
    processing_error = Text(null=True, default=None)
    payload = JSONB()
    received_at = Timestamptz(default=TimestamptzNow())
    processed_at = Timestamptz(null=True, default=None)
    attempts = Integer(default=1)


class MarketApprovalEvent(Table, tablename="market_approval_events"):
    id = BigSerial(primary_key=True)
    market_id = UUID(index=True)
    event_id = Varchar(length=255, unique=True)
    decision = Varchar(length=16)
    actor_id = Varchar(length=255, null=True, default=None)
    reason = Text(null=True, default=None)
    occurred_at = Timestamptz()
    processed_at = Timestamptz(default=TimestamptzNow())


class PollerCursor(Table, tablename="poller_cursors"):
    source = Varchar(length=255, primary_key=True)
    cursor = Text(null=True, default=None)
    updated_at = Timestamptz(default=TimestamptzNow())


class EventReplay(Table, tablename="event_replays"):
    """Audit of the replays of inbound events (admin API and operator console)."""

    id = BigSerial(primary_key=True)
    event_id = Varchar(length=255, index=True)
    previous_status = Varchar(length=16)
    previous_error = Text(null=True, default=None)
    forced = Boolean(default=False)
    replayed_by = Varchar(length=255, null=True, default=None)  # the console's operator
    replayed_at = Timestamptz(default=TimestamptzNow())


class IdempotencyKey(Table, tablename="idempotency_keys"):
    """The first response to a request sent with an Idempotency-Key header."""

    key = Varchar(length=255, primary_key=True)
    request_fingerprint = Varchar(length=64)
    response_status = Integer()
    response_body = JSONB()
    created_at = Timestamptz(default=TimestamptzNow())
