"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

import asyncpg
import msgspec
import redis.asyncio as redis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

CHECK_TIMEOUT_S = 2.0


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, frozen=True):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


async def _check(name: str, probe: Awaitable[object]) -> tuple[str, str]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return name, f"unavailable: {exc or type(exc).__name__}"
    return name, "ok"


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> Liveness:
        return Liveness()

    @get(
        "/ready",
        summary="Readiness: PostgreSQL and Redis answer",
        responses={
            503: ResponseSpec(Readiness, description="Not ready: the checks say which failed")
        },
    )
    async def ready(
        self, db_pool: NamedDependency[asyncpg.Pool], redis_client: NamedDependency[redis.Redis]
    ) -> Response[Readiness]:
        results = await asyncio.gather(
            _check("postgres", db_pool.fetchval("SELECT 1")),
            _check("redis", redis_client.ping()),
        )
        checks = dict(results)
        ready = all(result == "ok" for result in checks.values())
        return Response(
            Readiness(status="ready" if ready else "unavailable", checks=checks),
            status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
        )
