"""Replay an inbound event: the consumer applies it again, as if it had just arrived."""

from __future__ import annotations

from typing import Any

from app.approvals.domain import Status
from app.inbound.intake import enqueue_new
from app.unit_of_work import UnitOfWork
from outbox import new_event


class NotReplayable(Exception):
    """Only failed events replay, unless forced."""


class UnknownEvent(LookupError):
    pass


async def replay(uow: UnitOfWork, event_id: str, *, force: bool = False) -> None:
    """Re-enqueue a recorded event through the outbox, with an audit record, in one transaction.

    Its processed_events row is removed so that the consumer applies it again; the
    consumer's rules keep that safe: a market already decided is not decided twice,
    which is why a `success` is replayed only when forced.
    """
    async with uow:
        row = await uow.connection.fetchrow(
            """
            SELECT event_id, event_type, source, processing_status, processing_error, payload
            FROM processed_events WHERE event_id = $1 FOR UPDATE
            """,
            event_id,
        )
        if row is None:
            raise UnknownEvent(event_id)
        if row["processing_status"] == Status.SUCCESS and not force:
            raise NotReplayable(f"{event_id} succeeded; replay it only with force=true")
        recorded: dict[str, Any] = row["payload"] or {}
        payload = recorded.get("payload") if isinstance(recorded.get("payload"), dict) else {}
        context = recorded.get("context") if isinstance(recorded.get("context"), dict) else {}
        await uow.connection.execute(
            """
            INSERT INTO event_replays (event_id, previous_status, previous_error, forced)
            VALUES ($1, $2, $3, $4)
            """,
            event_id,
            row["processing_status"],
            row["processing_error"],
            force,
        )
        await uow.connection.execute("DELETE FROM processed_events WHERE event_id = $1", event_id)
        # The retained outbox row, if any, gives way to the new one.
        await uow.connection.execute("DELETE FROM outbox WHERE event_id = $1", event_id)
        await enqueue_new(
            uow,
            [
                new_event(
                    event_id=event_id,
                    event_type=row["event_type"],
                    source=row["source"],
                    aggregate_type="market",
                    aggregate_id=str((payload or {}).get("market_id", event_id)),
                    payload=payload or {},
                    context={**(context or {}), "replayed": True},
                )
            ],
        )
        await uow.commit()
