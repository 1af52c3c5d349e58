"""Replay an inbound event: the consumer applies it again, as if it had just arrived.

Every kind of failed record replays, each read again by the reader it first failed
(app/inbound/unreadable.py describes what each keeps):
- a decision the consumer read but could not apply (a domain failure, a dead letter):
  its event rebuilt from the record, read as the webhook and the feed read events;
- an event on the feed that could not be read: its document;
- a stream entry that could not be read: its fields.
One that still cannot be read is refused (StillUnreadable, naming why). A replay never
applies a decision twice: an event replayed under its own record's id goes through the
consumer's usual rules (a market already decided is not decided again, hence `force`
for a success); one recorded as unreadable replays only while its own event_id is
recorded nowhere, since otherwise a copy of it has already arrived.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec

import outbox
from app.app_error import AppError, FieldError
from app.approvals.domain import Status
from app.approvals.processed_events import ProcessedEvent, ProcessedEventRepository
from app.inbound.events import UnreadableEntry, read_event_json, read_stream_entry
from app.inbound.intake import enqueue_new
from app.inbound.unreadable import kept_document, kept_entry_fields
from app.unit_of_work import UnitOfWork
from app.validation import RequestValidationError
from outbox import EventEnvelope

_encode = msgspec.json.Encoder().encode


class NotReplayable(Exception):
    """Only failed events replay, unless forced; nothing already applied replays again."""


class UnknownEvent(LookupError):
    pass


class StillUnreadable(AppError):
    """The recorded event still cannot be read; `errors` say why."""

    status_code = HTTPStatus.UNPROCESSABLE_ENTITY.value

    def __init__(self, event_id: str, errors: list[FieldError]) -> None:
        super().__init__(
            f"{event_id} still cannot be read as an event; nothing was replayed", errors=errors
        )


async def replay(
    uow: UnitOfWork, event_id: str, *, force: bool = False, actor: str | None = None
) -> str:
    """Re-enqueue a recorded event through the outbox, with an audit record naming
    `actor` (who asked), in one transaction; returns the event_id the consumer will
    apply it under. The admin API and the operator console both replay through here."""
    async with uow:
        records = ProcessedEventRepository(uow.connection)
        record = await records.lock_processed_event(event_id)
        if record is None:
            raise UnknownEvent(event_id)
        if record.processing_status == Status.SUCCESS and not force:
            raise NotReplayable(f"{event_id} succeeded; replay it only with force=true")
        event = reread(record)
        await records.record_replay(record, forced=force, actor=actor)
        # The record gives way to the replayed event's own; so does the retained outbox
        # row of an event replayed under its own id.
        await records.delete_processed_event(event_id)
        if event.event_id == event_id:
            await outbox.delete_event(uow.connection, event_id)
        replayed = msgspec.structs.replace(event, context={**event.context, "replayed": True})
        intake = await enqueue_new(uow, [replayed])
        if not intake.accepted:
            raise NotReplayable(
                f"{event_id} holds event {event.event_id}, which is already recorded"
                f"{' with other content' if intake.conflicts else ''}: a copy of it arrived"
                " since; replay that one if need be"
            )
        await uow.commit()
    return event.event_id


def reread(record: ProcessedEvent) -> EventEnvelope:
    """The event a failed record holds, read again; StillUnreadable naming why not."""
    # The column is jsonb, whatever the struct's annotation says: any document may be there.
    payload: object = record.payload
    kept: dict[str, Any] = payload if isinstance(payload, dict) else {}
    try:
        return _read_kept(record, kept)
    except RequestValidationError as invalid:
        raise StillUnreadable(record.event_id, invalid.errors) from None
    except UnreadableEntry as unreadable:
        raise StillUnreadable(record.event_id, [FieldError("entry", str(unreadable))]) from None


def _read_kept(record: ProcessedEvent, kept: dict[str, Any]) -> EventEnvelope:
    is_feed_event, document = kept_document(kept)
    if is_feed_event:
        if document is None:
            reason = f"not kept: {record.processing_error}"
            raise RequestValidationError.single("document", reason)
        # Kept as its page was read: a value the page's nesting cap dropped is still
        # missing, and replaying the rest would apply another event than the one sent.
        return read_event_json(_encode(document), capped=True)
    fields = kept_entry_fields(kept, record.processing_error)
    if fields is not None:
        return read_stream_entry(fields)
    rebuilt = {
        "event_id": record.event_id,
        "event_type": record.event_type,
        "source": record.source,
        "payload": kept.get("payload"),
        "context": kept.get("context", {}),
    }
    # The record of an event the consumer could not apply: one accepted before.
    return read_event_json(_encode(rebuilt), accepted=True)
