"""The outbox relay: committed outbox rows onto their Redis streams, in id order.

One relay leads (advisory lock); others wait as hot standbys. The leader wakes on the
NOTIFY sent at commit, or every OUTBOX_POLL_INTERVAL_S in case one was lost, and
drains in batches: lock rows (FOR UPDATE SKIP LOCKED), XADD them in one atomic script,
mark them published in the transaction that locked them, commit. A crash between XADD
and commit publishes a batch again (duplicates, which consumers drop by event_id); it
never loses one.

Batches overlap by one: while batch N is marked and committed, batch N+1 (rows N's
locks made it skip) is read and appended. XADDs stay in id order; if N's commit fails,
N is appended again later, after N+1, so each event's first appearance keeps order.

Taking the lead is fenced: the new leader draws a term (a PostgreSQL sequence), claims
it in Redis so that the append script refuses every lower term, then ends the batch
sessions of earlier leaders (their row locks would otherwise make it skip their rows
and publish newer ones first). A leader that paused past the end of its lock wakes up
to a refused append and steps down: two relays never append at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import redis.asyncio as redis
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction
from opentelemetry.trace import Span, SpanKind

from app import tracing
from app.backoff import Backoff
from app.db import RETRYABLE_ERRORS, create_pool
from app.leadership import RELAY_LOCK, Leadership
from app.process import stop_on_signals
from app.redis_client import connect_redis
from app.settings import Settings
from outbox import NOTIFY_CHANNEL, mark_for_republish
from outbox.streams import TRIMMED_STREAMS, entry_time
from relay.publisher import GroupLoss, RedisLostData, RelayFenced, StreamLost, StreamPublisher
from relay.retention import apply_retention

log = logging.getLogger("relay.outbox")

TERM_SEQUENCE: Final = "outbox_relay_terms"
# The relay's pooled sessions (its batch transactions) are named with this prefix, so
# that a new leader can end those of an earlier one.
BATCH_SESSIONS: Final = "market-backend:outbox-relay-batch:"
# Approximate trimming leaves a stream up to a few of Redis's nodes (100 entries each)
# over its length: only beyond this is a stream held back by a group.
HELD_BACK_SLACK: Final = 1000
REDIS_CHECK_EVERY_S: Final = 1.0
RETENTION_EVERY_S: Final = 60.0
SUMMARY_EVERY_S: Final = 10.0
STORE_ERRORS: Final[tuple[type[Exception], ...]] = (redis.RedisError, *RETRYABLE_ERRORS)

# Columns named as the stream entry fields, formatted as they go on the stream: the
# relay hands them to Redis without decoding or re-encoding anything.
SELECT_BATCH_SQL = """
SELECT id, stream, event_id, event_type, source, aggregate_type, aggregate_id,
       to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS occurred_at,
       payload::text AS payload, context::text AS context, id::text AS outbox_id
FROM outbox
WHERE published_at IS NULL
  -- A fence in PostgreSQL too: a leader whose term a newer one has drawn since locks
  -- nothing, so that its rows are never what makes the new leader skip ahead.
  AND $2::bigint >= (SELECT last_value FROM outbox_relay_terms)
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED_SQL = """
UPDATE outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[])
"""
RECORD_FAILURE_SQL = """
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])
"""
# Each session is waited for, up to 5 s, until it has exited and released its locks.
END_EARLIER_BATCHES_SQL = """
SELECT count(*) FILTER (WHERE ended) AS ended, count(*) FILTER (WHERE NOT ended) AS lingering
FROM (SELECT pg_terminate_backend(pid, 5000) AS ended FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE $1 || '%'
        AND application_name <> $2) AS earlier
"""


def publishing_span(rows: Sequence[Any]) -> AbstractContextManager[Span]:
    """The span of one batch's append (docs/design.md, Trace context): PRODUCER, linked
    to the trace context each event was written in, never one span per event."""
    streams = sorted({row["stream"] for row in rows})
    attributes: dict[str, Any] = {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.operation.name": "xadd",
        "messaging.batch.message_count": len(rows),
    }
    if len(streams) == 1:
        attributes["messaging.destination.name"] = streams[0]
    else:
        attributes["market.streams"] = streams  # one append writes to several streams
    if len(rows) == 1:
        attributes["market.event_id"] = rows[0]["event_id"]
        attributes["market.outbox_id"] = rows[0]["id"]
    name = f"send {streams[0]}" if len(streams) == 1 else "send"
    contexts = [tracing.span_context_of_json(row["context"]) for row in rows]
    return tracing.batch_span(name, SpanKind.PRODUCER, contexts, attributes)


def _event_of(rows: Sequence[Any]) -> dict[str, str]:
    """The event_id and market_id of a batch of one, for its log line."""
    if len(rows) != 1:
        return {}
    row = rows[0]
    market = {"market_id": row["aggregate_id"]} if row["aggregate_type"] == "market" else {}
    return {"event_id": row["event_id"], **market}


def batch_session_name() -> str:
    """This process's batch sessions' application_name; unique even if cut to 63 bytes."""
    return f"{BATCH_SESSIONS}{os.getpid()}:{uuid.uuid4().hex[:8]}:{socket.gethostname()}"[:63]


class OutboxRelay:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: StreamPublisher,
        stop: asyncio.Event,
        session_name: str,
    ) -> None:
        """`session_name`: the application_name of `pool`'s sessions (batch_session_name)."""
        self._settings = settings
        self._pool = pool
        self._session_name = session_name
        self._leadership: Leadership | None = None
        self._term = 0
        self._claimed = False
        self._publisher = publisher
        self._stop = stop
        self._wake = asyncio.Event()
        self._postgres = Backoff("PostgreSQL", log)
        self._redis = Backoff("Redis", log)
        self._streams_written: set[str] = set()
        self._held_back: set[str] = set()
        self._run_id: str | None = None
        self._next_redis_check = 0.0
        self._next_retention = 0.0
        self._next_summary = time.monotonic() + SUMMARY_EVERY_S
        self._published = self._batches = 0
        self._committing: asyncio.Task[BaseException | None] | None = None

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self._settings.outbox_retention_hours)

    async def lead(self, leadership: Leadership) -> None:
        """Publish until told to stop or the lock's session is lost.

        Raises RelayFenced when a relay of a higher term has taken over meanwhile.
        """
        await leadership.listen(NOTIFY_CHANNEL, self._wake.set)
        self._leadership = leadership
        self._term = leadership.term
        self._claimed = False
        self._run_id = None
        while not self._stopping(leadership):
            self._wake.clear()
            if not self._claimed:
                await self._take_over()
                continue
            again = await self.drain_batch()
            await self._maintain()
            if not again:
                await self._settle_commit()
                await self._wait_for_work(leadership)
        await self._settle_commit()
        self._log_summary(force=True)

    async def _take_over(self) -> None:
        """Claim this term in Redis, then end earlier leaders' batches; back off on failure."""
        try:
            await self._claim_term()
            ended = await self._end_earlier_batches()
        except STORE_ERRORS as error:
            backoff = self._redis if isinstance(error, redis.RedisError) else self._postgres
            await backoff.wait_after(error, self._stop)
            return
        self._claimed = True
        if ended:
            log.warning(
                "ended %d batch sessions of an earlier leader; their rows go out again", ended
            )
        log.info("term %d claimed", self._term, extra={"term": self._term})

    async def _claim_term(self) -> None:
        """Claim our term in Redis. A higher one there while we hold the lock comes from
        another life of the database (a restored backup): our sequence moves past it."""
        try:
            await self._publisher.claim(self._term)
        except RelayFenced as fenced:
            if self._leadership is None:
                raise
            self._term = await self._leadership.draw_term_above(fenced.claimed_term)
            log.warning(
                "Redis held term %d, above the database's; leading as term %d",
                fenced.claimed_term,
                self._term,
            )
            await self._publisher.claim(self._term)

    async def _end_earlier_batches(self) -> int:
        """End every batch session of an earlier leader and wait until each has exited: a
        first read beside one of them would skip its locked rows and publish newer ones.
        Sessions it opens later lock nothing (SELECT_BATCH_SQL's term check)."""
        async with self._pool.acquire() as connection:
            try:
                row = await connection.fetchrow(
                    END_EARLIER_BATCHES_SQL, BATCH_SESSIONS, self._session_name
                )
            except asyncpg.InsufficientPrivilegeError as refused:
                # Another role's sessions: their rows wait for the server's time-outs.
                log.error("cannot end an earlier leader's batch sessions: %s", refused)
                return 0
        assert row is not None
        if row["lingering"]:
            raise asyncpg.ObjectInUseError(f"{row['lingering']} earlier batch sessions linger")
        return int(row["ended"])

    async def drain_batch(self) -> bool:
        """Lock and append one batch, leaving its commit to run beside the next batch.

        Returns whether to drain again at once: after a full batch (more rows may wait)
        and after finding that Redis lost entries (the rows the refill made unpublished
        wait, or the refill is tried again); not after a short or empty batch, nor after
        a failure it has backed off from.
        """
        ids: list[int] = []
        try:
            connection = await self._pool.acquire()
        except RETRYABLE_ERRORS as error:
            await self._postgres.wait_after(error, self._stop)
            return False
        transaction = connection.transaction()
        # The batch's span (when tracing is on), from the append to the commit, which
        # runs in a task of its own but in the span's context.
        with contextlib.ExitStack() as scope:
            try:
                await transaction.start()
                rows = await connection.fetch(
                    SELECT_BATCH_SQL, self._settings.outbox_batch_size, self._term
                )
                if rows:
                    ids = [row["id"] for row in rows]
                    if tracing.enabled():
                        scope.enter_context(publishing_span(rows))
                    appended = await self._publisher.append(rows, self._term)
            except BaseException as error:
                tracing.record_failure(error)
                scope.close()  # the span ends with the failed append, not after a back-off
                await self._abandon(connection, transaction)
                await self._settle_commit()
                return await self._after_failure(error, ids)
            if not rows:
                await self._abandon(connection, transaction)
                self._postgres.succeeded()
                return False
            # One commit in flight at a time: the previous batch's must end before this one's.
            await self._settle_commit()
            self._committing = asyncio.create_task(self._commit(connection, transaction, ids))
            log.debug(
                "appended %d rows",
                len(rows),
                extra={"outbox_id": f"{ids[0]}-{ids[-1]}", **_event_of(rows)},
            )
        self._redis.succeeded()
        for loss in appended.losses:
            _log_loss(loss)
        self._published += len(rows)
        self._batches += 1
        return len(rows) == self._settings.outbox_batch_size

    async def _commit(
        self, connection: PoolConnectionProxy, transaction: Transaction, ids: list[int]
    ) -> BaseException | None:
        """Mark a batch published and commit; the error, if any, is returned, not raised."""
        try:
            await connection.execute(MARK_PUBLISHED_SQL, ids)
            await transaction.commit()
        except RETRYABLE_ERRORS as error:
            # The rows stay unpublished and go out again: duplicates, never a loss.
            await self._abandon(connection, transaction)
            return error
        await self._pool.release(connection)
        return None

    async def _settle_commit(self) -> None:
        """Wait for the commit in flight; back off if PostgreSQL refused it."""
        committing, self._committing = self._committing, None
        if committing is None:
            return
        error = await committing
        if error is None:
            self._postgres.succeeded()
        else:
            await self._postgres.wait_after(error, self._stop)

    async def _abandon(self, connection: PoolConnectionProxy, transaction: Transaction) -> None:
        with contextlib.suppress(*RETRYABLE_ERRORS):
            await transaction.rollback()
        # A connection that broke mid-query is already back in the pool.
        with contextlib.suppress(asyncpg.InterfaceError):
            await self._pool.release(connection)

    async def _after_failure(self, error: BaseException, ids: list[int]) -> bool:
        if isinstance(error, RedisLostData):
            await self._refill(str(error).removeprefix("NOMARKER "))
            return True
        if isinstance(error, StreamLost):
            await self._refill(str(error), error.stream)
            return True
        if isinstance(error, redis.RedisError):
            await self._record_failure(ids, error)
            await self._redis.wait_after(error, self._stop)
            return False
        if isinstance(error, RETRYABLE_ERRORS):
            await self._postgres.wait_after(error, self._stop)
            return False
        raise error

    async def _record_failure(self, ids: list[int], error: BaseException) -> None:
        if not ids:
            return
        # Bookkeeping only: the rows stay unpublished whether or not this is written.
        with contextlib.suppress(*RETRYABLE_ERRORS):
            await self._pool.execute(RECORD_FAILURE_SQL, ids, repr(error)[:1000])

    async def _refill(self, reason: str, stream: str | None = None) -> None:
        """Redis lost what the relay published: publish the retention window again.

        The batch whose commit is in flight is settled first: marked published after the
        refill's UPDATE, it would be missing from the refilled Redis.
        """
        await self._settle_commit()
        try:
            if self._leadership and await self._leadership.newest_term() > self._term:
                raise RelayFenced(f"a relay of a term above {self._term} has taken over")
            since = datetime.now(UTC) - self.retention
            async with self._pool.acquire() as connection:
                count = await mark_for_republish(connection, since, stream)
            if stream is None:
                self._run_id = await self._publisher.set_marker(self._term)
            else:
                await self._publisher.accept_stream(stream, self._term)
        except STORE_ERRORS as error:
            log.warning("could not start the refill yet (%r); will retry", error)
            await self._redis.wait_after(error, self._stop)
            return
        scope = f"stream {stream}" if stream else "all streams"
        if count:
            log.warning(
                "Redis lost its data (%s): re-publishing %d rows of %s from the %g-hour "
                "retention window",
                reason,
                count,
                scope,
                self._settings.outbox_retention_hours,
                extra={"republished": count},
            )
        else:
            log.info("relay marker set on Redis %s; nothing published to re-send", self._run_id)

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self._next_redis_check:
            self._next_redis_check = now + REDIS_CHECK_EVERY_S
            await self.check_redis()
            await self._trim_streams()
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY_S
            await self._apply_retention()
        self._log_summary()

    async def check_redis(self) -> None:
        """Notice a restart and streams that vanished between batches.

        A restart loses whatever the server had not persisted, even when it comes back
        with data (and the marker) from a snapshot: the marker holds the run_id it was
        set on, and any other run_id means the retention window is published again.
        """
        try:
            run_id = await self._publisher.run_id()
            marker = await self._publisher.marker()
            lost = await self._publisher.lost_streams()
        except redis.RedisError:
            return  # the next batch reports it
        if marker is None:
            await self._refill("the relay's marker is missing")
            return
        if marker != run_id:
            await self._refill(f"Redis restarted (run_id {marker} -> {run_id})")
            return
        self._run_id = run_id
        for stream in lost:
            await self._refill(f"stream {stream} is gone", stream)

    async def _trim_streams(self) -> None:
        """Trim each stream towards its length, even one no batch writes now (its group
        caught up); log what a group lost unread, with ids."""
        for stream in TRIMMED_STREAMS:
            try:
                trimmed = await self._publisher.trim(stream)
            except redis.ResponseError:
                log.exception("trimming %s failed", stream)  # a script refused: a bug
                return
            except redis.RedisError:
                return  # unreachable: the next batch reports it
            for loss in trimmed.losses:
                _log_loss(loss)
            if self._publisher.acknowledged_only(stream):
                self._note_held_back(stream, trimmed.length)

    def _note_held_back(self, stream: str, length: int) -> None:
        """Once per change: a stream of our group's over its length, because the group has
        not acknowledged its entries yet (or is missing: nothing is acknowledged)."""
        over = length > self._settings.maxlen_of(stream) + HELD_BACK_SLACK
        if over and stream not in self._held_back:
            log.warning(
                "%s holds %d entries, over its length of %d: a consumer group has not "
                "acknowledged them (trimmed once it has)",
                stream,
                length,
                self._settings.maxlen_of(stream),
            )
            self._held_back.add(stream)
        elif not over and stream in self._held_back:
            log.info("%s is back within its length", stream)
            self._held_back.discard(stream)

    async def _apply_retention(self) -> None:
        try:
            await apply_retention(self._pool, self._settings, self._stop)
        except RETRYABLE_ERRORS as error:
            log.warning("retention skipped: %r", error)

    def _log_summary(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_summary:
            return
        self._next_summary = now + SUMMARY_EVERY_S
        if self._published:
            log.info(
                "published %d events in %d batches",
                self._published,
                self._batches,
                extra={"published": self._published, "batches": self._batches},
            )
        self._published = self._batches = 0

    def _stopping(self, leadership: Leadership) -> bool:
        return self._stop.is_set() or leadership.lost.is_set()

    async def _wait_for_work(self, leadership: Leadership) -> None:
        """Until a NOTIFY, the fallback poll interval, a stop or a lost lock."""
        waiters = [
            asyncio.ensure_future(event.wait())
            for event in (self._wake, self._stop, leadership.lost)
        ]
        try:
            await asyncio.wait(
                waiters,
                timeout=self._settings.outbox_poll_interval_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()


def _log_loss(loss: GroupLoss) -> None:
    log.error(
        "trimmed %s%d entries of %s that group %s had not read: ids after %s, before %s; "
        "they are in the outbox: make replay SINCE=%s STREAM=%s",
        "" if loss.exact else "up to ",
        loss.entries,
        loss.stream,
        loss.group,
        loss.last_delivered_id,
        loss.first_left or "the end",
        entry_time(loss.last_delivered_id).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        loss.stream,
        extra={"stream": loss.stream, "group": loss.group, "lost": loss.entries},
    )


async def run(settings: Settings) -> None:
    """`make relay`: lead when the lock is free, stand by otherwise, until SIGTERM/SIGINT.

    Traced (when on) only in the batches' spans: the locking, listening and checking
    between them would otherwise make a trace of their own every second."""
    with tracing.quiet():
        await _run(settings)


async def _run(settings: Settings) -> None:
    stop = stop_on_signals()
    leadership = Leadership(settings.database_url, RELAY_LOCK, term_sequence=TERM_SEQUENCE, log=log)
    session_name = batch_session_name()
    pool = await create_pool(settings, max_size=3, application_name=session_name)
    client = connect_redis(settings.redis_url, "outbox-relay")
    publisher = StreamPublisher(client, settings.maxlen_of)
    relay = OutboxRelay(settings, pool, publisher, stop, session_name)
    try:
        while await leadership.acquire(stop):
            log.info("leading: publishing the outbox to Redis (term %d)", leadership.term)
            try:
                await relay.lead(leadership)
            except RelayFenced as fenced:
                log.warning("fenced off: %s; stepping down", fenced)
            finally:
                await leadership.release()
            if not stop.is_set():
                log.warning("stepped down; waiting to lead again")
    finally:
        await leadership.release()
        await client.aclose()
        await pool.close()
    log.info("stopped")
