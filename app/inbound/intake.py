"""Accept inbound events durably: dedup and the outbox rows in the caller's transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec

from app.unit_of_work import UnitOfWork
from outbox import ENTITY_PERMISSIONS_EVENTS, EventEnvelope

log = logging.getLogger("inbound")


class Receipt(msgspec.Struct, frozen=True):
    status: Literal["accepted", "already_processed"]
    event_id: str


async def enqueue_new(uow: UnitOfWork, events: Sequence[EventEnvelope]) -> set[str]:
    """Enqueue, in the open transaction, the events never seen before; returns their ids.

    Seen before means already applied (processed_events) or already waiting to be (the
    outbox's unique event_id): an event that arrives by webhook and by polling, or
    twice by either, is written once.
    """
    processed = await uow.processed_events.processed_among([e.event_id for e in events])
    fresh = [event for event in events if event.event_id not in processed]
    if not fresh:
        return set()
    return await uow.enqueue(ENTITY_PERMISSIONS_EVENTS, fresh)


async def accept(uow: UnitOfWork, event: EventEnvelope) -> Receipt:
    """`accepted` once the event is safe in PostgreSQL; `already_processed` for any repeat."""
    async with uow:
        inserted = await enqueue_new(uow, [event])
        await uow.commit()
    status: Literal["accepted", "already_processed"] = (
        "accepted" if inserted else "already_processed"
    )
    log.info(
        "inbound event %s: %s",
        event.event_id,
        status,
        extra={"event_id": event.event_id, "market_id": event.aggregate_id},
    )
    return Receipt(status, event.event_id)
