"""/api/v1/admin: behind ADMIN_TOKEN (Bearer; 401 without it, 403 when wrong)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import PathParameter, QueryParameter

from app.admin import figures
from app.admin.figures import Stats
from app.admin.replay import NotReplayable, UnknownEvent, replay
from app.admin.schemas import AlertList, ProcessedEventPage, ReplayReceipt
from app.approvals.domain import Status
from app.approvals.processed_events import ProcessedEvent, ProcessedEventRepository
from app.openapi import error_responses
from app.unit_of_work import UnitOfWork
from app.validation import WITHOUT_NUL, parse_time


def require_admin_token(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    expected: str | None = connection.app.state.admin_token
    if not expected:
        raise PermissionDeniedException("the admin API is disabled: ADMIN_TOKEN is not set")
    scheme, _space, offered = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not offered:
        raise NotAuthorizedException("Authorization: Bearer <ADMIN_TOKEN> required")
    if not hmac.compare_digest(offered.encode(), expected.encode()):
        raise PermissionDeniedException("wrong admin token")


ADMIN_SECURITY = "AdminToken"
# What the admin API adds to the OpenAPI document: the scheme its operations name.
ADMIN_COMPONENTS = Components(
    security_schemes={
        ADMIN_SECURITY: SecurityScheme(
            type="http", scheme="bearer", description="Authorization: Bearer <ADMIN_TOKEN>"
        )
    }
)
# Every admin operation can be refused by the guard, or find PostgreSQL down.
_GUARDED = (401, 403, 503)
# PostgreSQL's OFFSET is a bigint; a bound well inside it keeps asyncpg from overflowing.
MAX_OFFSET = 1_000_000_000
EventIdPath = Annotated[str, PathParameter(pattern=WITHOUT_NUL)]
Time = Annotated[
    str | None,
    QueryParameter(format="date-time", description="RFC 3339 with an offset: 2026-11-26T00:00:00Z"),
]


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]
    guards = [require_admin_token]
    security = [{ADMIN_SECURITY: []}]

    @get(
        "/processed-events",
        summary="List processed events, newest first",
        responses=error_responses(400, *_GUARDED),
    )
    async def list_events(
        self,
        *,
        uow: NamedDependency[UnitOfWork],
        status: Annotated[Status | None, QueryParameter()] = None,
        event_type: Annotated[str | None, QueryParameter(name="type", pattern=WITHOUT_NUL)] = None,
        source: Annotated[str | None, QueryParameter(pattern=WITHOUT_NUL)] = None,
        since: Time = None,
        until: Time = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> ProcessedEventPage:
        async with uow:
            items = await ProcessedEventRepository(uow.connection).list_processed_events(
                status=status,
                event_type=event_type,
                source=source,
                since=parse_time("since", since),
                until=parse_time("until", until),
                limit=limit,
                offset=offset,
            )
        return ProcessedEventPage(items=items, limit=limit, offset=offset)

    @get(
        "/processed-events/{event_id:str}",
        summary="One processed event",
        responses=error_responses(400, 404, *_GUARDED),
    )
    async def get_event(
        self, uow: NamedDependency[UnitOfWork], event_id: EventIdPath
    ) -> ProcessedEvent:
        async with uow:
            event = await ProcessedEventRepository(uow.connection).find_processed_event_by_id(
                event_id
            )
        if event is None:
            raise NotFoundException(f"no processed event {event_id}")
        return event

    @post(
        "/processed-events/{event_id:str}/replay",
        status_code=202,
        summary="Replay a failed or dead-lettered event (a success only with force=true)",
        description="Any failed record replays: a decision that could not be applied, a "
        "dead letter, an event or stream entry that could not be read. Each is read again "
        "as it first was; 422 when it still cannot be, 409 when it was already applied.",
        responses=error_responses(
            400,
            404,
            409,
            422,
            *_GUARDED,
            descriptions={
                409: "A success without force=true, or the event is already recorded under "
                "its own id (a copy of it arrived since)",
                422: "The recorded event still cannot be read; every reason is listed",
            },
        ),
    )
    async def replay_event(
        self,
        uow: NamedDependency[UnitOfWork],
        event_id: EventIdPath,
        force: Annotated[bool, QueryParameter()] = False,
    ) -> ReplayReceipt:
        try:
            replayed_as = await replay(uow, event_id, force=force, actor="admin API")
        except UnknownEvent:
            raise NotFoundException(f"no processed event {event_id}") from None
        except NotReplayable as refused:
            raise HTTPException(status_code=409, detail=str(refused)) from None
        return ReplayReceipt(
            status="replayed", event_id=event_id, forced=force, replayed_as=replayed_as
        )

    @get(
        "/stats",
        summary="Monitoring figures over the last 24 hours",
        responses=error_responses(*_GUARDED),
    )
    async def stats(self, uow: NamedDependency[UnitOfWork]) -> Stats:
        async with uow:
            return await figures.stats(uow.connection)

    @get(
        "/alerts",
        summary="The alert rules, evaluated now",
        responses=error_responses(*_GUARDED),
    )
    async def alerts(
        self, uow: NamedDependency[UnitOfWork], polling: NamedDependency[bool]
    ) -> AlertList:
        async with uow:
            return AlertList(alerts=await figures.alerts(uow.connection, polling_enabled=polling))
