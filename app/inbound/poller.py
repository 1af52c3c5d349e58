"""The polling fallback: Entity Permissions Core's event feed into the inbound stream.

When PERMISSIONS_SERVICE_BASE_URL is set, one poller across all processes (advisory
lock) calls `GET {base}/api/v1/events?after=CURSOR&limit=100` every
PERMISSIONS_POLL_INTERVAL_S, following `has_more` at once. Each page is stored in ONE
transaction: its new events into the outbox for entity-permissions:events (the
webhook's dedup rule, so an event that arrives both ways is applied once), the events
that cannot be read recorded `failed` under keys of their own (app/inbound/unreadable),
and the cursor. The cursor therefore never passes an event that is not stored, and a
poller killed mid-page stores that page again, in full, once.

Nothing a feed serves stops it: an event that cannot be read is that event's failure,
recorded and passed; a page that cannot be read (not an object, too large, malformed,
a cursor that does not advance) is the feed's failure, retried with capped back-off;
and anything unforeseen restarts the poller, never the process it runs in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Final

import asyncpg
import httpx
import msgspec

from app.approvals.processed_events import ProcessedEventRepository, ProcessedEventRow
from app.backoff import Backoff, sleep_unless
from app.db import REFUSED_VALUE_ERRORS, RETRYABLE_ERRORS, create_pool
from app.inbound.cursors import PollerCursorRepository
from app.inbound.events import EPC_SOURCE, read_event_json
from app.inbound.intake import Conflict, enqueue_new, log_conflict
from app.inbound.unreadable import feed_event_record, printable
from app.json_limits import MAX_NESTING, cap_nesting, within
from app.leadership import POLLER_LOCK, Leadership
from app.process import stop_on_signals
from app.settings import Settings
from app.unit_of_work import UnitOfWork
from outbox import EventEnvelope

log = logging.getLogger("inbound.poller")

SOURCE: Final = EPC_SOURCE
PAGE_SIZE: Final = 100
MAX_RETRY_AFTER_S: Final = 300.0
# A page of 100 events of 160 KiB each, far beyond any real decision (a few hundred
# bytes); beyond it the page is refused before it is all in memory, and what a page can
# cost to read (the nesting cap walks it token by token) stays bounded.
MAX_PAGE_BYTES: Final = 16 * 1024 * 1024
# The page object and its data array sit above each event: capped here, every event
# nests at most MAX_NESTING deep.
PAGE_NESTING: Final = MAX_NESTING + 2
# Pages followed in one poll before the poll interval: a feed whose has_more never ends
# (cursors that cycle, a backlog without end) is read at a bounded pace.
MAX_PAGES_PER_POLL: Final = 1000
# A cursor goes back in a query string and into poller_cursors; a page with a longer
# one is refused, so that neither grows with what a feed serves.
MAX_CURSOR_CHARS: Final = 4096


class Page(msgspec.Struct, frozen=True):
    # Each event stays raw JSON until it is read on its own: an event that does not
    # decode (a number out of range, bytes that are not UTF-8) fails alone.
    data: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=PAGE_SIZE)]
    next_cursor: Annotated[str, msgspec.Meta(max_length=MAX_CURSOR_CHARS)] | None = None
    has_more: bool = False


class FeedUnavailable(Exception):
    """The feed could not be read this time; `retry_after` is the server's wish, if any."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class CursorNotAdvancing(FeedUnavailable):
    """has_more, with a next_cursor already read in this poll: following it would loop."""

    def __init__(self, cursor: str) -> None:
        super().__init__(
            f"the feed's cursor does not advance: has_more with next_cursor {cursor[:200]!r},"
            " already read in this poll"
        )


class EventFeed:
    """Entity Permissions Core's `GET /api/v1/events`, with the API key and a time-out."""

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        assert settings.permissions_service_base_url, "polling needs a base URL"
        self._timeout_ms = settings.permissions_service_timeout_ms
        self._client = httpx.AsyncClient(
            base_url=settings.permissions_service_base_url,
            # Uncompressed pages only: the size limit counts bytes off the wire, so a
            # compressed page cannot expand past it in memory (a decompression bomb).
            headers={
                "X-API-Key": settings.permissions_service_api_key or "",
                "Accept-Encoding": "identity",
            },
            timeout=self._timeout_ms / 1000,
            transport=transport,
        )

    async def page(self, after: str | None) -> FeedPage:
        params: dict[str, str | int] = {"limit": PAGE_SIZE}
        if after is not None:
            params["after"] = after
        try:
            # The whole answer within the time-out, not each read: a feed that drips a
            # byte at a time is as unavailable as one that does not answer.
            async with asyncio.timeout(self._timeout_ms / 1000):
                body = await self._get(params)
        except TimeoutError:
            raise FeedUnavailable(f"no complete answer within {self._timeout_ms} ms") from None
        # A worker thread: capping a hostile page walks it token by token, and the
        # consumer beside the poller keeps its event loop meanwhile.
        return await asyncio.to_thread(decode_page, body)

    async def _get(self, params: dict[str, str | int]) -> bytes:
        try:
            async with self._client.stream("GET", "/api/v1/events", params=params) as response:
                if response.status_code != 200:
                    raise FeedUnavailable(f"HTTP {response.status_code}", _retry_after(response))
                return await _read_at_most(response, MAX_PAGE_BYTES)
        except httpx.HTTPError as error:
            raise FeedUnavailable(f"{type(error).__name__}: {error}") from error

    async def close(self) -> None:
        await self._client.aclose()


class FeedPage(msgspec.Struct, frozen=True):
    page: Page
    capped: bool  # values nested too deep were replaced by the cap's marker


def decode_page(body: bytes) -> FeedPage:
    """A page, each event still raw JSON; FeedUnavailable for a body that is not one.

    Values nested deeper than an event may be are first replaced by a marker
    (cap_nesting), so that the decoder never overflows and the events beside a too-deep
    one are still read: the too-deep one then fails as an event, on its own.
    """
    capped = False
    if not within(body, PAGE_NESTING):
        body, capped = cap_nesting(body, PAGE_NESTING)
        if not capped:  # malformed, and too deep to hand to a decoder
            raise FeedUnavailable(
                f"invalid feed body: malformed JSON nested deeper than {PAGE_NESTING} levels"
            )
    try:
        return FeedPage(msgspec.json.decode(body, type=Page), capped)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise FeedUnavailable(f"invalid feed body: {error}") from error


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body as sent, refused as soon as it is over `limit` bytes; never decompressed,
    so what is counted is what would be held (a compressed page is refused)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FeedUnavailable(f"a page with Content-Encoding {encoding!r}; asked for identity")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FeedUnavailable(f"a page of {declared} bytes, over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise FeedUnavailable(f"a page over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (429, 503), bounded; 0 when absent or unreadable."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0


class Poller:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        feed: EventFeed,
        stop: asyncio.Event,
        restarts: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._feed = feed
        self._stop = stop
        self._feed_backoff = Backoff("Entity Permissions Core", log, cap_s=60.0)
        self._postgres_backoff = Backoff("PostgreSQL", log)
        self._restarts = restarts

    async def run(self, leadership: Leadership) -> None:
        """Poll until told to stop or the lock's session is lost."""
        while not self._stop.is_set() and not leadership.lost.is_set():
            try:
                count = await self.poll(leadership)
            except FeedUnavailable as error:
                delay = self._feed_backoff.failed(error)
                await sleep_unless(self._stop, max(delay, error.retry_after))
                continue
            except RETRYABLE_ERRORS as error:
                await self._postgres_backoff.wait_after(error, self._stop)
                continue
            except Exception as error:
                # A page no rule above foresaw: the feed's failure like any other, with
                # the traceback once, and never the end of polling.
                if not self._feed_backoff.failures:
                    log.exception("unexpected error reading Entity Permissions Core's feed")
                await self._feed_backoff.wait_after(error, self._stop)
                continue
            self._feed_backoff.succeeded()
            self._postgres_backoff.succeeded()
            if self._restarts is not None:
                self._restarts.succeeded()
            log.info(
                "Polled events from Entity Permissions Core: %d", count, extra={"count": count}
            )
            await sleep_unless(self._stop, self._settings.permissions_poll_interval_s)

    async def poll(self, leadership: Leadership) -> int:
        """Read the feed from the stored cursor on; returns how many events came.

        Every page is saved with the cursor it leads to, even an empty one: the cursor
        row's updated_at is the poller's last success, which /metrics reports. Between
        pages the lock is checked: a poller that lost it leaves the feed to the new
        holder at once, not after the backlog.
        """
        async with UnitOfWork(self._pool) as uow:
            cursor = await PollerCursorRepository(uow.connection).get(SOURCE)
        total = 0
        requested: set[str | None] = set()
        for _ in range(MAX_PAGES_PER_POLL):
            if self._stop.is_set() or leadership.lost.is_set():
                break
            requested.add(cursor)
            fetched = await self._feed.page(cursor)
            page = fetched.page
            cursor = page.next_cursor if page.next_cursor is not None else cursor
            await self._store(fetched, cursor)
            total += len(page.data)
            if not page.has_more or page.next_cursor is None:
                break
            if page.next_cursor in requested:
                raise CursorNotAdvancing(page.next_cursor)
            if not page.data:
                break  # no progress, whatever has_more says: the rest at the next poll
        return total

    async def _store(self, fetched: FeedPage, cursor: str | None) -> None:
        events, unreadable = await asyncio.to_thread(read_page, fetched)
        try:
            conflicts = await self._store_together(events, unreadable, cursor)
        except REFUSED_VALUE_ERRORS as refused:
            # A value of one event the database will not take: each event alone, so that
            # the one refused is recorded against itself and the others go in.
            log.warning(
                "the database refused a page's events (%s); storing them one by one", refused
            )
            conflicts = await self._store_apart(events, unreadable, cursor)
        for conflict in conflicts:
            log_conflict(conflict, "the feed")
        for row in unreadable.values():
            log.warning(
                "unreadable event from the feed recorded failed as %s: %s", row.event_id, row.error
            )

    async def _store_together(
        self,
        events: dict[bytes, EventEnvelope],
        unreadable: dict[str, ProcessedEventRow],
        cursor: str | None,
    ) -> list[Conflict]:
        async with UnitOfWork(self._pool) as uow:
            intake = await enqueue_new(uow, list(events.values()))
            if unreadable:
                await ProcessedEventRepository(uow.connection).record_processed_events(
                    list(unreadable.values())
                )
            await PollerCursorRepository(uow.connection).save(SOURCE, cursor)
            await uow.commit()
        return intake.conflicts

    async def _store_apart(
        self,
        events: dict[bytes, EventEnvelope],
        unreadable: dict[str, ProcessedEventRow],
        cursor: str | None,
    ) -> list[Conflict]:
        conflicts: list[Conflict] = []
        for raw, event in events.items():
            try:
                async with UnitOfWork(self._pool) as uow:
                    conflicts += (await enqueue_new(uow, [event])).conflicts
                    await uow.commit()
            except REFUSED_VALUE_ERRORS as refused:
                row = feed_event_record(raw, refused, SOURCE)
                unreadable[row.event_id] = row
        try:
            await self._store_together({}, unreadable, cursor)
        except REFUSED_VALUE_ERRORS as refused:
            # A record PostgreSQL will not store as it is: kept without what it carried.
            for key, row in unreadable.items():
                unstorable = {"unstorable": printable(str(refused))[:1000]}
                unreadable[key] = msgspec.structs.replace(row, payload=unstorable)
            await self._store_together({}, unreadable, cursor)
        return conflicts


def read_page(
    fetched: FeedPage,
) -> tuple[dict[bytes, EventEnvelope], dict[str, ProcessedEventRow]]:
    """A page's events by their raw JSON, and the failed records of those that cannot be
    read, by key (the same bad event twice, once)."""
    events: dict[bytes, EventEnvelope] = {}
    unreadable: dict[str, ProcessedEventRow] = {}
    for item in fetched.page.data:
        raw = bytes(item)
        try:
            events[raw] = read_event_json(raw, capped=fetched.capped)
        except Exception as error:  # whatever one event raises is that event's failure
            row = feed_event_record(raw, error, SOURCE)
            unreadable[row.event_id] = row
    return events, unreadable


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Poll while holding the poller lock; stand by while another process holds it.

    Returns only once `stop` is set: an unexpected error (a bug, a database refusing
    us) is logged with its traceback and the poller starts again after a capped
    back-off, so that it never ends the process, nor the consumer beside it.
    """
    stop = stop or stop_on_signals()
    restarts = Backoff("The poller", log, base_s=1.0, cap_s=60.0)
    while not stop.is_set():
        try:
            await _lead_and_poll(settings, stop, restarts)
        except Exception as error:
            if not restarts.failures:  # the traceback once, not once a minute
                log.exception("the poller failed; starting it again after a back-off")
            await restarts.wait_after(error, stop)


async def _lead_and_poll(settings: Settings, stop: asyncio.Event, restarts: Backoff) -> None:
    leadership = Leadership(settings.database_url, POLLER_LOCK, log=log)
    pool = await create_pool(settings, max_size=2)
    feed = EventFeed(settings)
    poller = Poller(settings, pool, feed, stop, restarts)
    try:
        while await leadership.acquire(stop):
            log.info(
                "polling %s every %gs",
                settings.permissions_service_base_url,
                settings.permissions_poll_interval_s,
            )
            try:
                await poller.run(leadership)
            finally:
                await leadership.release()
    finally:
        await leadership.release()
        await feed.close()
        await pool.close()
