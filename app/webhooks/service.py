"""Accept an inbound event durably: dedup and the outbox row in one transaction."""

from __future__ import annotations

from app.unit_of_work import UnitOfWork
from app.webhooks.schemas import Receipt
from outbox import ENTITY_PERMISSIONS_EVENTS, EventEnvelope


async def accept(uow: UnitOfWork, event: EventEnvelope) -> Receipt:
    """`accepted` once the event is safe in PostgreSQL; `already_processed` for any repeat.

    A repeat is an event_id already applied (processed_events) or already waiting to
    be (the outbox's unique event_id): either way nothing is written twice.
    """
    async with uow:
        if await uow.processed_events.is_event_processed(event.event_id):
            return Receipt("already_processed", event.event_id)
        inserted = await uow.enqueue(ENTITY_PERMISSIONS_EVENTS, [event])
        await uow.commit()
    return Receipt("accepted" if inserted else "already_processed", event.event_id)
