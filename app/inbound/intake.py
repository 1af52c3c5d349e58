"""Accept inbound events durably: dedup and the outbox rows in the caller's transaction.

**The same event.** An event_id already recorded (waiting in the outbox, or applied
and in processed_events) names the same event when event_type, source and payload are
equal: payload compared as JSON values (PostgreSQL's jsonb equality: key order, white
space and the spelling of a number such as 100 or 1e2 do not count; true is not 1).
context and occurred_at may differ: they describe a delivery (the actor, a request id,
a time filled in when the sender gave none), not the decision. The same event again is
a repeat, dropped; another under a recorded id is a conflict, reported and dropped too:
the first copy stands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Final, Literal

import msgspec

from app.app_error import AppError, FieldError
from app.unit_of_work import UnitOfWork
from outbox import ENTITY_PERMISSIONS_EVENTS, EventEnvelope

log = logging.getLogger("inbound")

_encode = msgspec.json.Encoder().encode

# Per event offered (by position), how it compares with every copy recorded under its
# event_id: in the outbox (any stream: an inbound id may not reuse an outbound event's)
# or in processed_events (whose payload keeps the event's payload under "payload"; a
# record that kept none, such as one written before this rule, has nothing to compare).
_COMPARE_WITH_RECORDED: Final = """
WITH offered AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
        AS o(event_id, event_type, source, payload, position)
), recorded AS (
    SELECT event_id, event_type, source, payload FROM outbox WHERE event_id = ANY($1)
    UNION ALL
    SELECT event_id, event_type, source, payload -> 'payload'
    FROM processed_events WHERE event_id = ANY($1)
)
SELECT o.position,
       bool_and(r.event_type = o.event_type) AS same_event_type,
       bool_and(r.source = o.source) AS same_source,
       bool_and(r.payload IS NULL OR r.payload = o.payload::jsonb) AS same_payload
FROM offered o JOIN recorded r USING (event_id)
GROUP BY o.position
"""
_COMPARED: Final = ("event_type", "source", "payload")


class Receipt(msgspec.Struct, frozen=True):
    status: Literal["accepted", "already_processed"]
    event_id: str


class Conflict(msgspec.Struct, frozen=True):
    """An event offered under an event_id recorded with other content."""

    event_id: str
    differing: list[str]  # of event_type, source, payload

    def __str__(self) -> str:
        return (
            f"event {self.event_id} differs from the copy already received under this "
            f"event_id ({', '.join(self.differing)}); the first copy stands"
        )


class Intake(msgspec.Struct, frozen=True):
    accepted: set[str]  # event_ids enqueued now
    conflicts: list[Conflict]  # the rest are repeats of recorded events


class EventConflict(AppError):
    """The webhook's answer to a conflict: 409, nothing written; the sender must hear of it."""

    status_code = HTTPStatus.CONFLICT.value

    def __init__(self, conflict: Conflict) -> None:
        reason = "differs from the copy already received under this event_id"
        super().__init__(
            str(conflict), errors=[FieldError(field, reason) for field in conflict.differing]
        )
        self.conflict = conflict


async def enqueue_new(uow: UnitOfWork, events: Sequence[EventEnvelope]) -> Intake:
    """Enqueue, in the open transaction, the events never seen before.

    Seen before means recorded under the same event_id, applied or waiting to be: an
    event that arrives by webhook and by polling, or twice by either, is written once,
    and one whose content differs from the recorded copy is a conflict.
    """
    recorded = await _compare(uow, events)
    known = {position for position, _ in recorded}
    fresh = [(n, event) for n, event in enumerate(events) if n not in known]
    accepted = (
        await uow.enqueue(ENTITY_PERMISSIONS_EVENTS, [e for _, e in fresh]) if fresh else set()
    )
    # Recorded meanwhile by a concurrent transaction (the insert waited for it, and
    # this statement sees it), or earlier in this batch: compared with that copy.
    beaten = _not_inserted(fresh, accepted)
    recorded += [
        (beaten[n][0], differing) for n, differing in await _compare(uow, [e for _, e in beaten])
    ]
    conflicts = [
        Conflict(events[position].event_id, differing)
        for position, differing in sorted(recorded)
        if differing
    ]
    return Intake(accepted, conflicts)


def _not_inserted(
    fresh: list[tuple[int, EventEnvelope]], accepted: set[str]
) -> list[tuple[int, EventEnvelope]]:
    """The events of `fresh` whose row is another copy's: a concurrent one, or an
    earlier one in the batch with the same event_id."""
    beaten: list[tuple[int, EventEnvelope]] = []
    taken: set[str] = set()
    for position, event in fresh:
        if event.event_id not in accepted or event.event_id in taken:
            beaten.append((position, event))
        taken.add(event.event_id)
    return beaten


async def _compare(uow: UnitOfWork, events: Sequence[EventEnvelope]) -> list[tuple[int, list[str]]]:
    """For each event with a recorded copy: its position and the fields that differ."""
    if not events:
        return []
    rows = await uow.connection.fetch(
        _COMPARE_WITH_RECORDED,
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.source for e in events],
        [_encode(e.payload).decode() for e in events],
    )
    return [
        (row["position"] - 1, [name for name in _COMPARED if not row[f"same_{name}"]])
        for row in rows
    ]


async def accept(uow: UnitOfWork, event: EventEnvelope) -> Receipt:
    """`accepted` once the event is safe in PostgreSQL; `already_processed` for a repeat.

    Raises EventConflict, writing nothing, for another event under a recorded event_id.
    """
    async with uow:
        intake = await enqueue_new(uow, [event])
        if intake.conflicts:
            log_conflict(intake.conflicts[0], "webhook")
            raise EventConflict(intake.conflicts[0])
        await uow.commit()
    status: Literal["accepted", "already_processed"] = (
        "accepted" if intake.accepted else "already_processed"
    )
    log.info(
        "inbound event %s: %s",
        event.event_id,
        status,
        extra={"event_id": event.event_id, "market_id": event.aggregate_id},
    )
    return Receipt(status, event.event_id)


def log_conflict(conflict: Conflict, path: str) -> None:
    log.warning(
        "%s (by %s)",
        conflict,
        path,
        extra={"event_id": conflict.event_id, "differing": conflict.differing},
    )
