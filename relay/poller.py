"""The polling fallback: Entity Permissions Core's event feed into the inbound stream.

When PERMISSIONS_SERVICE_BASE_URL is set, one poller across all processes (advisory
lock) calls `GET {base}/api/v1/events?after=CURSOR&limit=100` every
PERMISSIONS_POLL_INTERVAL_S, following `has_more` at once. Each page is stored in ONE
transaction: its new events into the outbox for entity-permissions:events (the
webhook's dedup rule, so an event that arrives both ways is applied once), its invalid
events recorded `failed`, and the cursor. The cursor therefore never passes an event
that is not stored, and a poller killed mid-page stores that page again, in full, once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import asyncpg
import httpx
import msgspec

from app.approvals.domain import Status
from app.approvals.processed_events import ProcessedEventRow
from app.backoff import Backoff, sleep_unless
from app.db import RETRYABLE_ERRORS, create_pool, storable
from app.inbound.events import read_event
from app.inbound.intake import enqueue_new, log_conflict
from app.process import stop_on_signals
from app.settings import Settings
from app.unit_of_work import UnitOfWork
from app.validation import RequestValidationError
from outbox import EventEnvelope
from relay.leadership import Leadership

log = logging.getLogger("relay.poller")

SOURCE: Final = "entity_permissions_core"
LOCK_NAME: Final = "market-backend:epc-poller"
PAGE_SIZE: Final = 100
MAX_RETRY_AFTER_S: Final = 300.0


class Page(msgspec.Struct, frozen=True):
    data: list[Any]
    next_cursor: str | None = None
    has_more: bool = False


class FeedUnavailable(Exception):
    """The feed could not be read this time; `retry_after` is the server's wish, if any."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class EventFeed:
    """Entity Permissions Core's `GET /api/v1/events`, with the API key and a time-out."""

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        assert settings.permissions_service_base_url, "polling needs a base URL"
        self._client = httpx.AsyncClient(
            base_url=settings.permissions_service_base_url,
            headers={"X-API-Key": settings.permissions_service_api_key or ""},
            timeout=settings.permissions_service_timeout_ms / 1000,
            transport=transport,
        )

    async def page(self, after: str | None) -> Page:
        params: dict[str, str | int] = {"limit": PAGE_SIZE}
        if after is not None:
            params["after"] = after
        try:
            response = await self._client.get("/api/v1/events", params=params)
        except httpx.HTTPError as error:
            raise FeedUnavailable(f"{type(error).__name__}: {error}") from error
        if response.status_code != 200:
            raise FeedUnavailable(f"HTTP {response.status_code}", _retry_after(response))
        try:
            return msgspec.json.decode(response.content, type=Page)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise FeedUnavailable(f"invalid feed body: {error}") from error

    async def close(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (429, 503), bounded; 0 when absent or unreadable."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0


class Poller:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, feed: EventFeed, stop: asyncio.Event
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._feed = feed
        self._stop = stop
        self._feed_backoff = Backoff("Entity Permissions Core", log, cap_s=60.0)
        self._postgres_backoff = Backoff("PostgreSQL", log)

    async def run(self, leadership: Leadership) -> None:
        """Poll until told to stop or the lock's session is lost."""
        while not self._stop.is_set() and not leadership.lost.is_set():
            try:
                count = await self.poll()
            except FeedUnavailable as error:
                delay = self._feed_backoff.failed(error)
                await sleep_unless(self._stop, max(delay, error.retry_after))
                continue
            except RETRYABLE_ERRORS as error:
                await self._postgres_backoff.wait_after(error, self._stop)
                continue
            self._feed_backoff.succeeded()
            self._postgres_backoff.succeeded()
            log.info(
                "Polled events from Entity Permissions Core: %d", count, extra={"count": count}
            )
            await sleep_unless(self._stop, self._settings.permissions_poll_interval_s)

    async def poll(self) -> int:
        """Read the feed from the stored cursor to its end; returns how many events came.

        Every page is saved with the cursor it leads to, even an empty one: the cursor
        row's updated_at is the poller's last success, which /metrics reports.
        """
        async with UnitOfWork(self._pool) as uow:
            cursor = await uow.cursors.get(SOURCE)
        total = 0
        while not self._stop.is_set():
            page = await self._feed.page(cursor)
            after, cursor = cursor, page.next_cursor if page.next_cursor is not None else cursor
            await self._store(page, after, cursor)
            total += len(page.data)
            if not page.has_more or page.next_cursor is None:
                break
        return total

    async def _store(self, page: Page, after: str | None, cursor: str | None) -> None:
        valid: list[EventEnvelope] = []
        invalid: list[ProcessedEventRow] = []
        for position, document in enumerate(page.data):
            try:
                valid.append(read_event(document))
            except RequestValidationError as error:
                invalid.append(_invalid_row(document, error, after, position))
        async with UnitOfWork(self._pool) as uow:
            intake = await enqueue_new(uow, valid)
            if invalid:
                await uow.processed_events.record_processed_events(invalid)
            await uow.cursors.save(SOURCE, cursor)
            await uow.commit()
        for conflict in intake.conflicts:
            log_conflict(conflict, "the feed")
        for row in invalid:
            log.warning(
                "invalid event %s from the feed recorded failed: %s", row.event_id, row.error
            )


def _invalid_row(
    document: Any, error: RequestValidationError, after: str | None, position: int
) -> ProcessedEventRow:
    """A failed record for an event that cannot be read; its id is stable across re-reads."""
    fields = document if isinstance(document, dict) else {}
    event_id = fields.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        event_id = f"epc-feed:{after or 'start'}:{position}"
    return ProcessedEventRow(
        event_id=event_id,
        event_type=str(fields.get("event_type", "unknown"))[:255],
        source=SOURCE,
        status=Status.FAILED,
        error=f"invalid event: {error}",
        payload={"document": storable(document, Any)},
    )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Poll while holding the poller lock; stand by while another process holds it."""
    stop = stop or stop_on_signals()
    leadership = Leadership(settings.database_url, LOCK_NAME)
    pool = await create_pool(settings, max_size=2)
    feed = EventFeed(settings)
    poller = Poller(settings, pool, feed, stop)
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
