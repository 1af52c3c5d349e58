"""The simulator's HTTP API: requests, decisions, the polling feed, fault switches."""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app import tracing
from app.redis_client import connect_redis
from simulator.decisions import decide
from simulator.screen import SCREEN_HANDLERS, screen_templates
from simulator.state import Faults, Registry
from simulator.workers import WebhookPusher, read_approval_requests


class SimulatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = "dev-epc-key"
    redis_url: str = "redis://127.0.0.1:6379/0"
    webhook_url: str | None = None  # unset: decisions are only served by the feed
    webhook_secret: str | None = None

    @classmethod
    def from_environment(cls) -> SimulatorSettings:
        names = {f.name: f"EPC_{f.name.upper()}" for f in msgspec.structs.fields(cls)}
        names["redis_url"] = "REDIS_URL"
        raw = {field: os.environ[env] for field, env in names.items() if os.environ.get(env)}
        return msgspec.convert(raw, cls, strict=False)


class Decision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An administrator's decision, held to what the webhook and the poller accept of it
    (app.inbound.events: context.actor_id 1 to 255 characters, a reason up to 2,000)."""

    actor_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "epc-admin"
    reason: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


def _registry(state: State) -> Registry:
    registry: Registry = state.registry
    return registry


def create_app(settings: SimulatorSettings | None = None) -> Litestar:
    settings = settings or SimulatorSettings.from_environment()
    tracing.configure("simulator")

    @asynccontextmanager
    async def workers(app: Litestar) -> AsyncIterator[None]:
        stop = asyncio.Event()
        registry = app.state.registry = Registry()
        client = connect_redis(settings.redis_url, "epc-simulator", decode_responses=True)
        app.state.pusher = (
            WebhookPusher(settings.webhook_url, settings.webhook_secret, stop)
            if settings.webhook_url
            else None
        )
        # Its blocking reads untraced (one trace a second otherwise); each request read
        # is traced in a span of its own.
        with tracing.quiet():
            reader = asyncio.create_task(
                read_approval_requests(client, registry, f"simulator-{socket.gethostname()}", stop)
            )
        try:
            yield
        finally:
            stop.set()
            await reader
            if app.state.pusher is not None:
                await app.state.pusher.close()
            await client.aclose()
            tracing.shutdown()

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": "entity-permissions-core-simulator"}

    @get("/api/v1/requests")
    async def requests(
        registry: NamedDependency[Registry],
        status: Annotated[str | None, QueryParameter()] = None,
    ) -> list[dict[str, Any]]:
        return [
            msgspec.to_builtins(request)
            for request in registry.requests.values()
            if status is None or request.status == status
        ]

    @post("/api/v1/requests/{market_id:str}/approve", status_code=200)
    async def approve(
        state: State,
        registry: NamedDependency[Registry],
        market_id: FromPath[str],
        data: JSONBody[Decision | None] = None,
    ) -> dict[str, Any]:
        data = data or Decision()
        return decide(
            state, registry, market_id, approved=True, actor_id=data.actor_id, reason=data.reason
        )

    @post("/api/v1/requests/{market_id:str}/reject", status_code=200)
    async def reject(
        state: State,
        registry: NamedDependency[Registry],
        market_id: FromPath[str],
        data: JSONBody[Decision | None] = None,
    ) -> dict[str, Any]:
        data = data or Decision(reason="rejected")
        return decide(
            state, registry, market_id, approved=False, actor_id=data.actor_id, reason=data.reason
        )

    @get("/api/v1/events")
    async def events(
        request: Request[Any, Any, Any],
        registry: NamedDependency[Registry],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> Response[Any]:
        offered = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(offered, settings.api_key):
            raise NotAuthorizedException("missing or wrong X-API-Key")
        faults = registry.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.error_status:
            return Response(
                {"error": "simulated failure"},
                status_code=faults.error_status,
                headers={"Retry-After": "1"} if faults.error_status in (429, 503) else None,
            )
        if faults.malformed:
            return Response(b"<html>not json", media_type=MediaType.HTML)
        if faults.page is not None:
            return Response(faults.page.encode(), media_type=MediaType.JSON)
        if after is not None and not after.isdigit():
            raise HTTPException(status_code=400, detail="after must be a cursor from this feed")
        return Response(registry.page(after, max(1, min(limit, 1000))))

    @post("/api/v1/events", status_code=201)
    async def inject(
        request: Request[Any, Any, Any], registry: NamedDependency[Registry]
    ) -> dict[str, int]:
        """Put any document on the feed, as a faulty Entity Permissions Core might.

        The body is kept as it came and served as it is: a document nested thousands of
        levels deep cannot even be decoded, and a faulty feed may serve it all the same.
        """
        registry.feed.append(msgspec.Raw(await request.body()))
        return {"position": len(registry.feed)}

    @get("/api/v1/faults")
    async def get_faults(registry: NamedDependency[Registry]) -> Faults:
        return registry.faults

    @put("/api/v1/faults")
    async def set_faults(registry: NamedDependency[Registry], data: JSONBody[Faults]) -> Faults:
        registry.faults = data
        return data

    return Litestar(
        route_handlers=[
            health,
            requests,
            approve,
            reject,
            events,
            inject,
            get_faults,
            set_faults,
            *SCREEN_HANDLERS,
        ],
        template_config=screen_templates(),
        lifespan=[workers],
        middleware=tracing.asgi_middleware(),
        dependencies={"registry": Provide(_registry, sync_to_thread=False)},
        logging_config=None,
    )
