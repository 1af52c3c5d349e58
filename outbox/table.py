"""Piccolo definition of the outbox table; the schema itself lives in piccolo_migrations/."""

from piccolo.columns import JSONB, BigSerial, Integer, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class Outbox(Table, tablename="outbox"):
    id = BigSerial(primary_key=True)
    event_id = Varchar(length=255, unique=True)
    stream = Varchar(length=255)
    event_type = Varchar(length=255)
    source = Varchar(length=255)
    aggregate_type = Varchar(length=255)
    aggregate_id = Varchar(length=255)
    payload = JSONB()
    context = JSONB()
    occurred_at = Timestamptz()
    created_at = Timestamptz(default=TimestamptzNow())
    published_at = Timestamptz(null=True, default=None)
    attempts = Integer(default=0)
    last_error = Text(null=True, default=None)
