"""Liveness, readiness against the real dependencies, and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from app.monitoring.single_flight import SharedRefresh
from tests.conftest import DATABASE_URL, service_env
from tests.support.flow import Flow
from tests.support.markets import REGISTER, seed_body
from tests.support.outbox import wait_until
from tests.support.processes import ManagedProcess, free_port, start_api


async def test_health_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_openapi_documents_the_register_body_in_camel_case(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert "/api/v1/markets/register" in document["paths"]
    schema = document["components"]["schemas"]["RegisterMarketRequest"]
    assert {"name", "issuerId", "tokenSymbol", "totalSupply", "assetDetails"} <= set(
        schema["properties"]
    )


@pytest.fixture(scope="module")
def api_without_redis(log_dir: Path) -> Iterator[str]:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    process, base_url = start_api(service_env(REDIS_URL=closed), log_dir, "api-no-redis")
    yield base_url
    process.stop()


class ApiWithout(NamedTuple):
    base_url: str
    process: ManagedProcess
    closed_port: int


@pytest.fixture(scope="module")
def api_without_postgres(log_dir: Path) -> Iterator[ApiWithout]:
    port = free_port()
    closed = f"postgresql://postgres@127.0.0.1:{port}/marketdb_test"
    process, base_url = start_api(service_env(DATABASE_URL=closed), log_dir, "api-no-postgres")
    yield ApiWithout(base_url, process, port)
    process.stop()


async def test_ready_is_503_naming_redis_when_redis_is_unreachable(
    api_without_redis: str,
) -> None:
    async with httpx.AsyncClient(base_url=api_without_redis) as http:
        response = await http.get("/ready")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"postgres": "ok", "redis": "down"},
    }


async def test_registration_needs_no_redis(api_without_redis: str, db: object) -> None:
    async with httpx.AsyncClient(base_url=api_without_redis) as http:
        response = await http.post(REGISTER, json=seed_body())

    assert response.status_code == 201


async def test_without_postgres_ready_names_it_and_writes_answer_503(
    api_without_postgres: ApiWithout,
) -> None:
    async with httpx.AsyncClient(base_url=api_without_postgres.base_url) as http:
        ready = await http.get("/ready")
        register = await http.post(REGISTER, json=seed_body())

    assert ready.status_code == 503
    assert ready.json()["checks"] == {"postgres": "down", "redis": "ok"}
    assert register.status_code == 503
    assert register.headers["retry-after"]


# Issue item 6: /ready and /metrics.


UNKNOWN_ROLE = "intruder_probe_role"


@pytest.fixture(scope="module")
def api_as_unknown_role(log_dir: Path) -> Iterator[ApiWithout]:
    """PostgreSQL answers, and refuses the user: its error names the role."""
    url = urlsplit(DATABASE_URL)
    wrong_user = urlunsplit(url._replace(netloc=f"{UNKNOWN_ROLE}@{url.hostname}:{url.port}"))
    process, base_url = start_api(service_env(DATABASE_URL=wrong_user), log_dir, "api-bad-role")
    yield ApiWithout(base_url, process, url.port or 5432)
    process.stop()


@pytest.mark.parametrize(
    ("fixture", "detail"),
    [("api_without_postgres", "port"), ("api_as_unknown_role", UNKNOWN_ROLE)],
)
async def test_ready_and_metrics_ready_names_no_host_port_or_user_and_logs_them_once(
    request: pytest.FixtureRequest, fixture: str, detail: str
) -> None:
    api: ApiWithout = request.getfixturevalue(fixture)
    hidden = [str(api.closed_port) if detail == "port" else detail, "127.0.0.1", "@"]

    async with httpx.AsyncClient(base_url=api.base_url) as http:
        answers = [await http.get("/ready") for _ in range(5)]

    for answer in answers:
        assert answer.json() == {
            "status": "unavailable",
            "checks": {"postgres": "down", "redis": "ok"},
        }
        for text in hidden:
            assert text not in answer.text
    # The detail is for operators, in the log: once, however often probed.
    down_lines = [
        line for line in api.process.log_text().splitlines() if "readiness: postgres down" in line
    ]
    assert len(down_lines) == 1
    assert hidden[0] in down_lines[0]


async def test_ready_and_metrics_ready_logs_each_change_of_state_once(flow: Flow) -> None:
    api, base_url = flow.start_api()
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/ready")).status_code == 200
        flow.redis_server.stop()
        for _ in range(5):
            assert (await http.get("/ready")).json()["checks"]["redis"] == "down"
        flow.redis_server.start()

        async def ready_again() -> bool:
            return (await http.get("/ready")).status_code == 200

        await wait_until(ready_again, 30, "/ready to answer 200 once Redis is back")
        for _ in range(3):
            assert (await http.get("/ready")).status_code == 200

    log = api.log_text()
    assert log.count("readiness: redis down") == 1
    assert log.count("readiness: redis answers again") == 1


async def test_ready_and_metrics_concurrent_callers_share_one_fetch() -> None:
    """The single-flight refresh behind /ready and /metrics, on its own clock."""
    now = 0.0
    fetches = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal fetches
        fetches += 1
        await release.wait()
        return fetches

    shared = SharedRefresh(fetch, 0, interval_s=5, clock=lambda: now)
    waiting = [asyncio.create_task(shared.latest()) for _ in range(200)]
    await asyncio.sleep(0)
    release.set()

    assert await asyncio.gather(*waiting) == [1] * 200
    now = 4.9  # within the interval, counted from the end of the fetch
    assert await shared.latest() == 1
    now = 5.0
    assert await shared.latest() == 2
    assert fetches == 2


async def test_an_idle_connection_outlives_the_clients_own_keep_alive(api: str) -> None:
    """A client (httpx keeps 5 s, a load balancer 60 s) may send on an idle connection
    until its own time is up: a server that closed it first answered with a reset."""
    parts = urlsplit(api)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = f"GET /health HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    try:
        for pause_s in (0.0, 6.0):  # past uvicorn's own 5 s
            await asyncio.sleep(pause_s)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            await reader.readexactly(length)
    finally:
        writer.close()
