"""The console's pages: overview, markets, events, streams, outbox, audit.

Thin handlers: each reads through the repositories, the admin figures and
app.console.reads, and changes state only through the admin service (app/admin/replay.py,
the code path of the JSON admin API) or the relay's own replay (`make replay`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import asyncpg
import redis.asyncio as redis
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from app.admin import figures
from app.admin.replay import NotReplayable, StillUnreadable, UnknownEvent, replay
from app.approvals.domain import Status
from app.approvals.processed_events import EventCursor, EventFilter, ProcessedEventRepository
from app.console import overview, reads
from app.console.auth import (
    PREFIX,
    access_of,
    csrf_of,
    read_checked_form,
    require_session,
    session_of,
    signed_out,
)
from app.markets.domain import MarketStatus
from app.markets.repository import MarketCursor, MarketRepository
from app.monitoring.flow import STREAMS, FlowMonitor
from app.unit_of_work import UnitOfWork
from app.web.pages import is_htmx, page, redirect
from outbox import mark_for_republish
from outbox.streams import TRIMMED_STREAMS

log = logging.getLogger("console")

MAX_SEARCH: Final = 200
MAX_EVENT_ID: Final = 255
# A bulk replay does at most this many at once, each in its own transaction; the page
# says how many are left, and the operator goes again.
MAX_BULK_REPLAY: Final = 500


class ConsoleFigures:
    """What the overview keeps between pages: the length each stream is trimmed to and
    the entries-lost counters it has seen."""

    def __init__(self, maxlen: dict[str, int]) -> None:
        self.maxlen = maxlen
        self.losses = overview.LossHistory()


def bad_request(field: str, reason: str) -> HTTPException:
    return HTTPException(status_code=400, detail=f"{field}: {reason}")


def _time(field: str, value: str | None) -> datetime | None:
    """A time from a form: RFC 3339, or a browser's datetime-local (read as UTC)."""
    if not value:
        return None
    if len(value) > 40:
        raise bad_request(field, "not a time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(field, f"{value!r} is not a time (2026-12-03T10:15, UTC)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _choice(field: str, value: str | None, allowed: type[MarketStatus] | type[Status]) -> Any:
    if not value:
        return None
    try:
        return allowed(value)
    except ValueError:
        choices = ", ".join(member.value for member in allowed)
        raise bad_request(field, f"one of {choices}") from None


def _cursor_parts(value: str) -> tuple[datetime, str]:
    at, sep, key = value.partition("~")
    moment = _time("before", at) if sep else None
    if moment is None or not key:
        raise bad_request("before", "not a cursor of this list")
    return moment, key


def _market_cursor(value: str | None) -> MarketCursor | None:
    if not value:
        return None
    at, key = _cursor_parts(value)
    try:
        return MarketCursor(at, uuid.UUID(key))
    except ValueError:
        raise bad_request("before", "not a cursor of this list") from None


def _event_cursor(value: str | None) -> EventCursor | None:
    if not value:
        return None
    at, key = _cursor_parts(value)
    if not key.isdigit() or len(key) > 19:
        raise bad_request("before", "not a cursor of this list")
    return EventCursor(at, int(key))


def _stream(value: str | None, allowed: tuple[str, ...] = STREAMS) -> str:
    if value not in allowed:
        raise bad_request("stream", f"one of {', '.join(allowed)}")
    return value


def _event_id(value: str | None) -> str:
    if not value or len(value) > MAX_EVENT_ID:
        raise bad_request("id", f"an event id of 1 to {MAX_EVENT_ID} characters")
    return value


def _int(field: str, value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise bad_request(field, "a whole number")
    return int(value)


def _context(request: Request[Any, Any, Any], section: str, **values: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "section": section,
        "operator": session_of(request).operator,
        "csrf_token": csrf_of(request),
        "now": now,
        "hour_ago": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        **values,
    }


class ConsolePages(Controller):
    path = PREFIX
    guards = [require_session]
    include_in_schema = False

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        await read_checked_form(request)
        log.info("sign-out of %s", session_of(request).operator)
        return signed_out(access_of(request))

    # Overview

    async def _overview(
        self, request: Request[Any, Any, Any], uow: UnitOfWork, monitor: FlowMonitor, polling: bool
    ) -> overview.Overview:
        snapshot = await monitor.snapshot(wait=False)
        async with uow:
            latency = await figures.decision_latency(uow.connection, hours=1)
        console: ConsoleFigures = request.app.state.console_figures
        return overview.build(
            snapshot,
            latency,
            polling_enabled=polling,
            maxlen=console.maxlen,
            losses=console.losses,
        )

    @get("/")
    async def overview_page(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        flow_monitor: NamedDependency[FlowMonitor],
        polling: NamedDependency[bool],
    ) -> Template:
        figures_now = await self._overview(request, uow, flow_monitor, polling)
        return page("console/overview.html", **_context(request, "overview", o=figures_now))

    @get("/overview/figures")
    async def overview_figures(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        flow_monitor: NamedDependency[FlowMonitor],
        polling: NamedDependency[bool],
    ) -> Template:
        figures_now = await self._overview(request, uow, flow_monitor, polling)
        return page("console/_figures.html", **_context(request, "overview", o=figures_now))

    # Markets

    @get("/markets")
    async def markets(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        status: FromQuery[str | None] = None,
        q: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> Template:
        chosen = _choice("status", status, MarketStatus)
        search = " ".join((q or "").split())
        if len(search) > MAX_SEARCH:
            raise bad_request("q", f"at most {MAX_SEARCH} characters")
        async with uow:
            items, cursor = await MarketRepository(uow.connection).page(
                status=chosen, search=search or None, before=_market_cursor(before)
            )
        return page(
            "console/markets.html",
            **_context(
                request,
                "markets",
                markets=items,
                selected_status=chosen.value if chosen else "",
                q=search,
                next_before=f"{cursor.created_at.isoformat()}~{cursor.id}" if cursor else None,
                statuses=[s.value for s in MarketStatus],
            ),
        )

    async def _market(self, uow: UnitOfWork, client: redis.Redis, market_id: str) -> dict[str, Any]:
        try:
            key = uuid.UUID(market_id)
        except ValueError:
            raise NotFoundException(f"no market {market_id!r}: not a market id") from None
        async with uow:
            markets = MarketRepository(uow.connection)
            registration = await markets.get(key)
            if registration is None:
                raise NotFoundException(f"no market {market_id}")
            rows = await reads.outbox_rows_of(uow.connection, key)
            approvals = await markets.approval_history(key)
            decisions = await reads.inbound_decisions(uow.connection, rows)
        try:
            rows = await reads.find_entries(client, rows)
            redis_error = None
        except redis.RedisError as error:
            redis_error = f"Redis unavailable: {type(error).__name__}"
        return {
            "registration": registration,
            "steps": reads.timeline(registration.market, rows, approvals),
            "rows": rows,
            "decisions": decisions,
            "redis_error": redis_error,
            "settled": registration.market.status != MarketStatus.PENDING_APPROVAL
            and all(row.published_at for row in rows),
        }

    @get("/markets/{market_id:str}")
    async def market(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        redis_client: NamedDependency[redis.Redis],
        market_id: FromPath[str],
    ) -> Template:
        values = await self._market(uow, redis_client, market_id)
        return page("console/market.html", **_context(request, "markets", **values))

    @get("/markets/{market_id:str}/life")
    async def market_life(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        redis_client: NamedDependency[redis.Redis],
        market_id: FromPath[str],
    ) -> Template:
        values = await self._market(uow, redis_client, market_id)
        return page("console/_market_life.html", **_context(request, "markets", **values))

    # Events

    @get("/events")
    async def events(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        status: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> Template:
        chosen = EventFilter(
            status=_choice("status", status, Status),
            since=_time("since", since),
            until=_time("until", until),
        )
        async with uow:
            items, cursor = await ProcessedEventRepository(uow.connection).page_processed_events(
                chosen, before=_event_cursor(before)
            )
        return page(
            "console/events.html",
            **_context(
                request,
                "events",
                events=items,
                selected_status=chosen.status.value if chosen.status else "",
                since=since or "",
                until=until or "",
                next_before=f"{cursor.received_at.isoformat()}~{cursor.id}" if cursor else None,
                statuses=[s.value for s in Status],
            ),
        )

    @get("/events/detail")
    async def event(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        id: FromQuery[str | None] = None,
        replayed: FromQuery[str | None] = None,
    ) -> Template:
        event_id = _event_id(id)
        async with uow:
            record = await ProcessedEventRepository(uow.connection).find_processed_event_by_id(
                event_id
            )
            queued = await reads.outbox_row(uow.connection, event_id) if record is None else None
            audit, _ = await reads.replay_audit(uow.connection, event_id=event_id)
            if replayed and replayed != event_id:
                audit += (await reads.replay_audit(uow.connection, event_id=replayed))[0]
        if record is None and queued is None and not audit:
            raise NotFoundException(f"no event {event_id} is recorded or waiting")
        template = "console/_event_record.html" if is_htmx(request) else "console/event.html"
        return page(
            template,
            **_context(
                request,
                "events",
                event_id=event_id,
                record=record,
                queued=queued,
                audit=audit,
                replayed=replayed,
            ),
        )

    @post("/events/replay", status_code=303)
    async def replay_one(
        self, request: Request[Any, Any, Any], uow: NamedDependency[UnitOfWork]
    ) -> Response[Any]:
        form = await read_checked_form(request)
        event_id = _event_id(form.get("event_id"))
        operator = session_of(request).operator
        try:
            replayed_as = await replay(uow, event_id, actor=f"console: {operator}")
        except UnknownEvent:
            raise NotFoundException(f"no processed event {event_id}") from None
        except NotReplayable as refused:
            raise HTTPException(status_code=409, detail=str(refused)) from None
        log.info("replay of %s by %s", event_id, operator, extra={"event_id": event_id})
        return redirect(
            f"{PREFIX}/events/detail?{_query(id=replayed_as, replayed=event_id)}", request
        )

    @get("/events/replay-failed")
    async def confirm_bulk_replay(
        self,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        since: FromQuery[str | None] = None,
    ) -> Template:
        moment = _time("since", since)
        if moment is None:
            raise bad_request("since", "required: replay the failed events received since when?")
        async with uow:
            count = await ProcessedEventRepository(uow.connection).count_processed_events(
                EventFilter(status=Status.FAILED, since=moment)
            )
        return page(
            "console/confirm_replay.html",
            **_context(request, "events", since=moment, count=count, limit=MAX_BULK_REPLAY),
        )

    @post("/events/replay-failed", status_code=200)
    async def bulk_replay(
        self, request: Request[Any, Any, Any], uow: NamedDependency[UnitOfWork]
    ) -> Template:
        form = await read_checked_form(request)
        moment = _time("since", form.get("since"))
        if moment is None:
            raise bad_request("since", "required")
        operator = session_of(request).operator
        chosen = EventFilter(status=Status.FAILED, since=moment)
        async with uow:
            event_ids = await ProcessedEventRepository(uow.connection).event_ids(
                chosen, MAX_BULK_REPLAY
            )
        results: list[tuple[str, str, str]] = []
        for event_id in event_ids:
            try:
                replayed_as = await replay(uow, event_id, actor=f"console: {operator}")
            except (UnknownEvent, NotReplayable, StillUnreadable) as refused:
                results.append((event_id, "refused", str(refused)))
            else:
                results.append((event_id, "replayed", replayed_as))
        async with uow:
            left = await ProcessedEventRepository(uow.connection).count_processed_events(chosen)
        replayed = sum(1 for _, outcome, _ in results if outcome == "replayed")
        log.info(
            "bulk replay by %s of the failed events since %s: %d replayed, %d refused",
            operator,
            moment.isoformat(),
            replayed,
            len(results) - replayed,
        )
        return page(
            "console/bulk_result.html",
            **_context(request, "events", since=moment, results=results, left=left),
        )

    # Streams

    @get("/streams")
    async def streams(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        redis_client: NamedDependency[redis.Redis],
        flow_monitor: NamedDependency[FlowMonitor],
        name: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> Template:
        stream = _stream(name or STREAMS[0])
        if before is not None and not _is_entry_id(before):
            raise bad_request("before", "not an entry id")
        entries, next_before = await reads.stream_entries(redis_client, stream, before)
        async with uow:
            known = await reads.statuses(
                uow.connection, [e.fields["event_id"] for e in entries if "event_id" in e.fields]
            )
        snapshot = await flow_monitor.snapshot(wait=False)
        return page(
            "console/streams.html",
            **_context(
                request,
                "streams",
                stream=stream,
                streams=STREAMS,
                entries=entries,
                next_before=next_before,
                known=known,
                groups=[g for g in snapshot.redis.groups if g.stream == stream],
                length=snapshot.redis.stream_lengths.get(stream, 0),
            ),
        )

    # Outbox

    @get("/outbox")
    async def outbox(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        flow_monitor: NamedDependency[FlowMonitor],
        after: FromQuery[str | None] = None,
    ) -> Template:
        async with uow:
            rows, next_after = await reads.unpublished(uow.connection, _int("after", after))
        snapshot = await flow_monitor.snapshot(wait=False)
        return page(
            "console/outbox.html",
            **_context(
                request,
                "outbox",
                rows=rows,
                next_after=next_after,
                snapshot=snapshot,
                streams=TRIMMED_STREAMS,
                default_since=(datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
            ),
        )

    @get("/outbox/republish")
    async def confirm_republish(
        self,
        *,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        since: FromQuery[str | None] = None,
        stream: FromQuery[str | None] = None,
    ) -> Template:
        moment = _time("since", since)
        if moment is None:
            raise bad_request("since", "required: publish again the rows created since when?")
        only = _stream(stream, TRIMMED_STREAMS) if stream else None
        async with uow:
            count = await reads.republishable(uow.connection, moment, only)
        return page(
            "console/confirm_republish.html",
            **_context(request, "outbox", since=moment, stream=only, count=count),
        )

    @post("/outbox/republish", status_code=200)
    async def republish(
        self, request: Request[Any, Any, Any], db_pool: NamedDependency[asyncpg.Pool]
    ) -> Template:
        form = await read_checked_form(request)
        moment = _time("since", form.get("since"))
        if moment is None:
            raise bad_request("since", "required")
        only = _stream(form.get("stream"), TRIMMED_STREAMS) if form.get("stream") else None
        async with db_pool.acquire() as connection:
            count = await mark_for_republish(connection, moment, only)
        log.info(
            "outbox replay by %s: %d rows since %s%s marked to publish again",
            session_of(request).operator,
            count,
            moment.isoformat(),
            f" on {only}" if only else "",
        )
        return page(
            "console/republished.html",
            **_context(request, "outbox", since=moment, stream=only, count=count),
        )

    # Audit

    @get("/audit")
    async def audit(
        self,
        request: Request[Any, Any, Any],
        uow: NamedDependency[UnitOfWork],
        before: FromQuery[str | None] = None,
    ) -> Template:
        async with uow:
            items, next_before = await reads.replay_audit(
                uow.connection, before=_int("before", before)
            )
        return page(
            "console/audit.html",
            **_context(request, "audit", items=items, next_before=next_before),
        )


def _is_entry_id(value: str) -> bool:
    """`<milliseconds>-<sequence>`, each within the 64 bits Redis gives them."""
    milliseconds, sep, sequence = value.partition("-")
    return (
        bool(sep)
        and all(
            part.isascii() and part.isdigit() and len(part) <= 20
            for part in (milliseconds, sequence)
        )
        and max(int(milliseconds), int(sequence)) < 2**64
    )


def _query(**values: str) -> str:
    return urlencode(values)
