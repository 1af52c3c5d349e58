"""Liveness and readiness.

/ready is unauthenticated, so its answer says only which dependency is down: the
error (which can name hosts, ports and the database user) goes to the log, once per
change of state. Concurrent probes share one check, so a flood of them holds at most
one pooled connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import asyncpg
import redis.asyncio as redis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app.logging import DependencyLog
from app.monitoring.single_flight import SharedRefresh
from app.wire import WireStruct

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0

CheckResult = Literal["ok", "down"]


class Liveness(WireStruct, frozen=True):
    status: Literal["ok"] = "ok"


class Readiness(WireStruct, frozen=True):
    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckResult]


class ReadinessProbe:
    """PostgreSQL and Redis, checked once for every probe that arrives meanwhile."""

    def __init__(
        self, pool: asyncpg.Pool, client: redis.Redis, addresses: Mapping[str, str]
    ) -> None:
        self._checks: dict[str, Callable[[], Awaitable[object]]] = {
            "postgres": lambda: pool.fetchval("SELECT 1"),
            "redis": client.ping,
        }
        self._log = DependencyLog(log, "readiness", addresses)
        unknown = Readiness("unavailable", dict.fromkeys(self._checks, "down"))
        # No caching between probes (interval 0): each answer is as fresh as a check.
        self._shared = SharedRefresh(self._check_all, unknown, interval_s=0)

    async def readiness(self) -> Readiness:
        return await self._shared.latest()

    async def _check_all(self) -> Readiness:
        results = await asyncio.gather(*(self._check(name) for name in self._checks))
        checks = dict(zip(self._checks, results, strict=True))
        ready = all(result == "ok" for result in checks.values())
        return Readiness(status="ready" if ready else "unavailable", checks=checks)

    async def _check(self, name: str) -> CheckResult:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._checks[name]()
        except Exception as error:  # any failure means "not ready"; the log says which
            self._log.down(name, error)
            return "down"
        self._log.up(name)
        return "ok"


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> Liveness:
        return Liveness()

    @get(
        "/ready",
        summary="Readiness: PostgreSQL and Redis answer",
        responses={
            503: ResponseSpec(Readiness, description="Not ready: the checks say which is down")
        },
    )
    async def ready(self, readiness_probe: NamedDependency[ReadinessProbe]) -> Response[Readiness]:
        readiness = await readiness_probe.readiness()
        return Response(
            readiness,
            status_code=HTTP_200_OK
            if readiness.status == "ready"
            else HTTP_503_SERVICE_UNAVAILABLE,
        )
