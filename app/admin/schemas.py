"""The admin API's bodies, camelCase like the rest of the public API (app.wire).

A processed event is shown as the repository reads it: its record is a WireStruct.
"""

from __future__ import annotations

from typing import Literal

from app.admin.figures import Alert
from app.approvals.processed_events import ProcessedEvent
from app.wire import WireStruct


class ProcessedEventPage(WireStruct, frozen=True):
    items: list[ProcessedEvent]
    limit: int
    offset: int


class ReplayReceipt(WireStruct, frozen=True):
    status: Literal["replayed"]
    event_id: str
    forced: bool
    # The event's own id, under which the consumer applies it: the record's id, but for
    # a record of an unreadable delivery (unreadable:...), the id its event claimed.
    replayed_as: str


class AlertList(WireStruct, frozen=True):
    alerts: list[Alert]
