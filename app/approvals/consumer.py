"""`make consume`: apply the decisions on entity-permissions:events, each exactly once.

Any number of these processes may run, each a consumer of group `market-approvals`
named `<host>-<slot>`. Each turn of the loop first claims entries another consumer
(or a previous life of this one) left idle for CLAIM_IDLE_MS, then reads new ones; on
start it first re-reads its own pending entries. An entry is acknowledged only after
the transaction that applied it commits. One that keeps failing is, after
MAX_DELIVERIES, recorded `failed` (committed), then copied to
entity-permissions:events:dead, then acknowledged: a dead letter always has its record,
and an entry whose dead letter was never appended stays pending until it is.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, cast

import asyncpg
import msgspec
import redis.asyncio as redis
from opentelemetry.trace import Span, SpanKind

from app import tracing
from app.approvals import service
from app.approvals.domain import REFUSALS, Reason, Status
from app.approvals.service import Delivery, Outcome
from app.backoff import Backoff
from app.db import RETRYABLE_ERRORS, TRANSIENT_ERRORS, create_pool, storable
from app.inbound.events import UnreadableEntry, read_stream_entry
from app.inbound.unreadable import UNREADABLE_ENTRY, label, printable, stream_entry_key
from app.markets.cache import MarketViewCache
from app.process import stop_on_signals
from app.redis_client import connect_redis, read_group
from app.settings import Settings
from app.unit_of_work import UnitOfWork
from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, EventEnvelope
from outbox.streams import APPROVALS_GROUP, entry_time, lost_entries_key

log = logging.getLogger("approvals.consumer")

GROUP: Final = APPROVALS_GROUP
STREAM: Final = ENTITY_PERMISSIONS_EVENTS
DEAD_LETTER_PAGE: Final = 100

# Worth retrying in place, without counting a delivery: the database is away or busy.
BATCH_ERRORS: Final[tuple[type[Exception], ...]] = (redis.RedisError, *RETRYABLE_ERRORS)
RETRY_IN_PLACE: Final[tuple[type[Exception], ...]] = (
    *TRANSIENT_ERRORS,
    service.ConcurrentlyRecorded,
)


class Entry(msgspec.Struct):
    id: str
    fields: dict[str, str] | None  # None: the entry was trimmed or deleted from the stream
    deliveries: int = 1


class ApprovalConsumer:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, client: redis.Redis, stop: asyncio.Event
    ) -> None:
        self.settings = settings
        self.name = settings.consumer_name or f"{socket.gethostname()}-{settings.consumer_slot}"
        self._pool = pool
        self._redis = client
        self._stop = stop
        self._market_cache = MarketViewCache(
            client,
            pending_ttl_s=settings.market_cache_pending_ttl_s,
            decided_ttl_s=settings.market_cache_ttl_s,
            enabled=settings.market_cache,
        )
        self._redis_backoff = Backoff("Redis", log)
        self._postgres_backoff = Backoff("PostgreSQL", log)
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self.applied: defaultdict[str, int] = defaultdict(int)

    async def run(self) -> None:
        log.info("consuming %s as %s in group %s", STREAM, self.name, GROUP)
        # After a restart, first (once) what this consumer was given and never acked;
        # what fails again stays pending and comes back through XAUTOCLAIM.
        own_pending: str | None = "0"
        while not self._stop.is_set():
            try:
                if own_pending is not None:
                    entries = await self._read(own_pending)
                    own_pending = entries[-1].id if entries else None
                else:
                    entries = await self._claim_idle() or await self._read(">")
                self._redis_backoff.succeeded()
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self._create_group(recreated=True)
                continue
            except redis.RedisError as error:
                await self._redis_backoff.wait_after(error, self._stop)
                continue
            if entries:
                try:
                    with consuming_span(entries) if tracing.enabled() else nullcontext():
                        await self._process(entries)
                except BATCH_ERRORS as error:
                    # Nothing acknowledged is lost: the entries stay pending and come back.
                    log.warning("batch left pending: %r", error)
                    await self._redis_backoff.wait_after(error, self._stop)
        log.info("stopped", extra={"applied": dict(self.applied)})

    async def ensure_group(self) -> None:
        while not self._stop.is_set():
            try:
                await self._create_group(recreated=False)
                self._redis_backoff.succeeded()
                return
            except redis.RedisError as error:
                await self._redis_backoff.wait_after(error, self._stop)

    async def _create_group(self, *, recreated: bool) -> None:
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
            return
        if recreated:
            log.warning("group %s was missing (Redis lost its data?); created it again at 0", GROUP)

    async def _read(self, start: str) -> list[Entry]:
        block = None if start != ">" else self.settings.consumer_block_ms
        messages = await read_group(
            self._redis,
            STREAM,
            GROUP,
            self.name,
            start,
            count=self.settings.consumer_batch_size,
            block_ms=block,
        )
        entries = [Entry(entry_id, fields or None) for entry_id, fields in messages]
        if start != ">":
            await self._count_deliveries(entries)
        return entries

    async def _claim_idle(self) -> list[Entry]:
        """Entries idle in any consumer for CLAIM_IDLE_MS: their consumer died or failed."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + min(1.0, self.settings.claim_idle_ms / 2000)
        cursor, messages, deleted = await self._redis.xautoclaim(
            STREAM,
            GROUP,
            self.name,
            min_idle_time=self.settings.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.settings.consumer_batch_size,
        )
        self._claim_cursor = cursor
        if deleted:
            await self._count_lost(deleted)
        entries = [Entry(entry_id, fields or None) for entry_id, fields in messages]
        await self._count_deliveries(entries)
        return entries

    async def _count_lost(self, entry_ids: list[str]) -> None:
        """Pending entries gone from the stream (deleted by hand: trimming never removes
        what a group of ours has not acknowledged). Their decisions are still in the
        outbox, for as long as its retention keeps them."""
        log.error(
            "%d entries pending in group %s are gone from %s, unapplied: %s; re-publish "
            "them from the outbox (make replay SINCE=... STREAM=%s)",
            len(entry_ids),
            GROUP,
            STREAM,
            " ".join(entry_ids),
            STREAM,
            extra={"lost": len(entry_ids)},
        )
        await self._redis.hincrby(lost_entries_key(STREAM), GROUP, len(entry_ids))

    async def _count_deliveries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        # Claimed or re-read entries belong to this consumer now: ask only about ours.
        pending = await self._redis.xpending_range(
            STREAM,
            GROUP,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries),
            consumername=self.name,
        )
        counts = {item["message_id"]: item["times_delivered"] for item in pending}
        for entry in entries:
            entry.deliveries = int(counts.get(entry.id, entry.deliveries))

    async def _process(self, entries: list[Entry]) -> None:
        """Apply a batch: groups of markets in parallel, each market's entries in order."""
        gone = [entry.id for entry in entries if entry.fields is None]
        if gone:
            await self._count_lost(gone)
        done: list[str] = list(gone)  # acknowledged: nothing is left to apply
        owed = await self._owed_dead_letters(entries)
        readable: list[tuple[Entry, Delivery]] = []
        for entry in entries:
            if entry.fields is None:
                continue
            if entry.id in owed:
                if await self._dead_letter_once(entry, owed[entry.id]):
                    done.append(entry.id)
                continue
            try:
                envelope = read_stream_entry(entry.fields)
            except UnreadableEntry as error:
                delivery = Delivery(_unreadable(entry, error), entry.deliveries)
                if await self._record_failure(
                    delivery, Reason.UNREADABLE, UNREADABLE_ENTRY + printable(str(error))
                ):
                    done.append(entry.id)
                continue
            readable.append((entry, Delivery(envelope, entry.deliveries)))
        # One market's entries always fall in the same group, in stream order.
        groups = transaction_groups(len(readable), self.settings.consumer_concurrency)
        partitions: list[list[tuple[Entry, Delivery]]] = [[] for _ in range(groups)]
        for item in readable:
            partitions[hash(item[1].envelope.aggregate_id) % groups].append(item)
        for acked in await asyncio.gather(*(self._apply(part) for part in partitions if part)):
            done.extend(acked)
        await self._ack(done)

    async def _apply(self, items: list[tuple[Entry, Delivery]]) -> list[str]:
        """Apply entries in one transaction; returns the ids that may be acknowledged.

        Should the transaction fail for a reason other than the database being away, the
        entries are applied one by one, to set aside the one that fails.
        """
        deliveries = [delivery for _, delivery in items]
        try:
            outcomes = await self._retrying(deliveries)
        except Exception as error:
            log.debug("batch of %d failed (%r); applying one by one", len(items), error)
            return await self._apply_one_by_one(items)
        if outcomes is None:
            return []  # stopping: left pending for the next consumer
        self._report(deliveries, outcomes)
        if not await self._invalidate(deliveries, outcomes):
            return []
        return [entry.id for entry, _ in items]

    async def _apply_one_by_one(self, items: list[tuple[Entry, Delivery]]) -> list[str]:
        acked: list[str] = []
        blocked: set[str] = set()  # markets whose earlier entry must be applied first
        for entry, delivery in items:
            market = delivery.envelope.aggregate_id
            if market in blocked:
                continue
            try:
                outcomes = await self._retrying([delivery])
            except Exception as error:
                if await self._poisoned(entry, delivery, error):
                    acked.append(entry.id)
                else:
                    blocked.add(market)
                continue
            if outcomes is None:
                break
            self._report([delivery], outcomes)
            if not await self._invalidate([delivery], outcomes):
                break
            acked.append(entry.id)
        return acked

    async def _invalidate(self, deliveries: list[Delivery], outcomes: list[Outcome | None]) -> bool:
        """Before any of these entries is acknowledged, the cached views of the markets
        they decided stop being served (app/markets/cache.py); False when Redis failed
        that: the entries are left pending and, delivered again, found recorded and
        marked again. Returned, not raised, so that the other transaction groups of
        the read finish and are acknowledged as usual."""
        try:
            await self._market_cache.decided(service.markets_decided_by(deliveries, outcomes))
        except redis.RedisError as error:
            log.warning("decided markets not marked in the cache, left pending: %r", error)
            return False
        return True

    async def _retrying(self, deliveries: list[Delivery]) -> list[Outcome | None] | None:
        """apply_events, retried in place while PostgreSQL is away; None when stopping."""
        while not self._stop.is_set():
            try:
                outcomes = await service.apply_events(UnitOfWork(self._pool), deliveries)
            except RETRY_IN_PLACE as error:
                await self._postgres_backoff.wait_after(error, self._stop)
                continue
            self._postgres_backoff.succeeded()
            return outcomes
        return None

    def _report(self, deliveries: list[Delivery], outcomes: list[Outcome | None]) -> None:
        """Count what became of each event; log each refusal, once (duplicates have none)."""
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            if outcome is None:
                self.applied["duplicate"] += 1
                continue
            self.applied[outcome.status.value] += 1
            if outcome.reason is not None:
                log_not_applied(delivery.envelope, outcome.status, outcome.reason, outcome.error)
            else:
                log.debug(
                    "event %s applied to market %s",
                    delivery.envelope.event_id,
                    delivery.envelope.aggregate_id,
                    extra=_ids_of(delivery.envelope),
                )

    async def _poisoned(self, entry: Entry, delivery: Delivery, error: Exception) -> bool:
        """An entry failed: True once it is dead-lettered (then it may be acknowledged)."""
        reason = f"{type(error).__name__}: {error}"
        log.warning(
            "entry %s failed (delivery %d of %d): %s",
            entry.id,
            entry.deliveries,
            self.settings.max_deliveries,
            reason,
            extra={
                "event_id": delivery.envelope.event_id,
                "market_id": delivery.envelope.aggregate_id,
                "outbox_id": (entry.fields or {}).get("outbox_id"),
            },
        )
        if entry.deliveries < self.settings.max_deliveries:
            return False
        # The record first: a dead letter always has one. Should the append fail or the
        # process stop before it, the entry stays pending and its next delivery finds it
        # recorded, which _owed_dead_letters turns into the dead letter still owed.
        if not await self._record_failure(delivery, Reason.DEAD_LETTERED, reason):
            return False
        return await self._dead_letter_once(entry, reason)

    async def _owed_dead_letters(self, entries: list[Entry]) -> dict[str, str]:
        """Of entries delivered more than MAX_DELIVERIES times, those whose event is
        recorded dead-lettered, with the error recorded: an earlier delivery recorded it
        and did not get to append the dead letter, or to acknowledge the entry."""
        by_event: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.fields is None or entry.deliveries <= self.settings.max_deliveries:
                continue
            try:
                by_event[read_stream_entry(entry.fields).event_id].append(entry.id)
            except UnreadableEntry:
                continue  # recorded under a key of its own, never dead-lettered
        if not by_event:
            return {}
        recorded = await service.dead_lettered_among(UnitOfWork(self._pool), list(by_event))
        return {entry: error for event, error in recorded.items() for entry in by_event[event]}

    async def _dead_letter_once(self, entry: Entry, reason: str) -> bool:
        """Append the entry's dead letter unless a delivery before this one did; True
        once it is on the dead-letter stream (then the entry may be acknowledged)."""
        try:
            if not await self._dead_lettered_before(entry.id):
                await self._dead_letter(entry, reason)
        except redis.RedisError as unavailable:
            log.warning("could not dead-letter %s yet: %r", entry.id, unavailable)
            return False  # still pending: dead-lettered on a later delivery
        return True

    async def _dead_lettered_before(self, entry_id: str) -> bool:
        """Whether the dead-letter stream holds this entry: its dead letter can only be
        newer than the entry, so only that end of the stream is read."""
        newest = "+"
        while True:
            # Read as text: this client decodes responses.
            page = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrevrange(
                    ENTITY_PERMISSIONS_DEAD, max=newest, min=entry_id, count=DEAD_LETTER_PAGE
                ),
            )
            if any(fields.get("original_id") == entry_id for _, fields in page):
                return True
            if len(page) < DEAD_LETTER_PAGE:
                return False
            newest = "(" + page[-1][0]

    async def _dead_letter(self, entry: Entry, reason: str) -> None:
        fields: dict[Any, Any] = {
            **(entry.fields or {}),
            "original_id": entry.id,
            "delivery_count": str(entry.deliveries),
            "last_error": reason,
            "consumer": self.name,
        }
        await self._redis.xadd(ENTITY_PERMISSIONS_DEAD, fields)
        log.error(
            "entry %s dead-lettered after %d deliveries: %s", entry.id, entry.deliveries, reason
        )

    async def _record_failure(self, delivery: Delivery, reason: Reason, error: str) -> bool:
        clean = Delivery(storable(delivery.envelope, EventEnvelope), delivery.attempts)
        while not self._stop.is_set():
            try:
                recorded = await service.record_failure(
                    UnitOfWork(self._pool), clean, reason, error
                )
            except TRANSIENT_ERRORS as unavailable:
                await self._postgres_backoff.wait_after(unavailable, self._stop)
                continue
            except asyncpg.PostgresError as refused:
                # Something it carried PostgreSQL will not store: recorded without it, so
                # that one entry never holds up those behind it.
                if clean.envelope.payload.get("unstorable"):
                    log.error(
                        "cannot record entry %s as failed: %s", clean.envelope.event_id, refused
                    )
                    return False
                clean = Delivery(_without_content(clean.envelope, refused), clean.attempts)
                continue
            self.applied["failed"] += 1
            if recorded:
                log_not_applied(clean.envelope, Status.FAILED, reason, error)
            return True
        return False

    async def _ack(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self._redis.xack(STREAM, GROUP, *ids)
        except redis.RedisError as error:
            # Not acknowledged: redelivered later, then dropped as duplicates.
            log.warning("could not acknowledge %d entries: %r", len(ids), error)


def _without_content(envelope: EventEnvelope, refused: Exception) -> EventEnvelope:
    """The envelope of a failure record, its content replaced by why it was refused."""
    return msgspec.structs.replace(
        envelope,
        event_id=envelope.event_id[:255],
        event_type=envelope.event_type[:255],
        source=envelope.source[:255],
        aggregate_id=envelope.aggregate_id[:255],
        payload={"unstorable": printable(str(refused))[:1000]},
        context={},
    )


def log_not_applied(
    envelope: EventEnvelope, status: Status, reason: Reason, error: str | None
) -> None:
    """One line per event recorded without being applied: WARNING for a refusal (an
    approver may be waiting on it), INFO for an event that asks nothing of us."""
    log.log(
        logging.WARNING if reason in REFUSALS else logging.INFO,
        "event %s for market %s recorded %s (%s): %s",
        envelope.event_id,
        envelope.aggregate_id,
        status.value,
        reason.value,
        error,
        extra={
            "event_id": envelope.event_id,
            "market_id": envelope.aggregate_id,
            "reason": reason.value,
        },
    )


def consuming_span(entries: list[Entry]) -> AbstractContextManager[Span]:
    """The span of one batch read from the stream (docs/design.md, Trace context):
    CONSUMER, linked to the trace context of each entry; the events its transactions
    write carry its own."""
    attributes: dict[str, Any] = {
        "messaging.system": "redis",
        "messaging.destination.name": STREAM,
        "messaging.consumer.group.name": GROUP,
        "messaging.operation.type": "process",
        "messaging.batch.message_count": len(entries),
    }
    if len(entries) == 1:
        attributes["messaging.message.id"] = entries[0].id
        fields = entries[0].fields or {}
        for name in ("event_id", "aggregate_id"):
            if isinstance(fields.get(name), str):
                attributes[f"market.{name}"] = fields[name][:255]
    contexts = [
        tracing.span_context_of_json((entry.fields or {}).get("context")) for entry in entries
    ]
    return tracing.batch_span(f"process {STREAM}", SpanKind.CONSUMER, contexts, attributes)


def _ids_of(envelope: EventEnvelope) -> dict[str, str]:
    return {"event_id": envelope.event_id, "market_id": envelope.aggregate_id}


def transaction_groups(entries: int, concurrency: int) -> int:
    """How many transactions, run in parallel, apply a read of `entries` entries: enough
    entries per transaction to share its commit, as many transactions as allowed."""
    return min(concurrency, max(1, entries // 32))


def _unreadable(entry: Entry, error: Exception) -> EventEnvelope:
    """An envelope for the record of an entry that could not be read as one.

    Its key is its own (unreadable:<digest of the fields>), never the event_id the entry
    claims, which stays free for a readable copy; its fields are kept whole, shown
    printable, for the operator and for admin replay (app/inbound/unreadable.py).
    """
    fields = {printable(name): printable(value) for name, value in (entry.fields or {}).items()}
    return EventEnvelope(
        event_id=stream_entry_key(fields),
        event_type=label(fields.get("event_type"), "unknown"),
        source=label(fields.get("source"), "unknown"),
        aggregate_type="stream-entry",
        aggregate_id=entry.id,
        occurred_at=entry_time(entry.id),
        payload={"fields": fields, "error": printable(str(error))},
    )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or stop_on_signals()
    pool = await create_pool(settings, max_size=settings.consumer_concurrency + 2)
    # BLOCK stays well below the socket time-out, so a blocking read is never cut.
    client = connect_redis(
        settings.redis_url,
        "approvals",
        socket_timeout=settings.consumer_block_ms / 1000 + 5,
        decode_responses=True,
    )
    # An entry whose bytes are not UTF-8 would fail every read that returns it (and so
    # the consumer, at each restart): its bytes come back as surrogates instead, and
    # read_stream_entry finds it unreadable.
    client.connection_pool.connection_kwargs["encoding_errors"] = "surrogateescape"
    consumer = ApprovalConsumer(settings, pool, client, stop)
    try:
        await consumer.ensure_group()
        await consumer.run()
    finally:
        await client.aclose()
        await pool.close()
