"""Liveness, readiness against the real dependencies, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_env
from tests.support.markets import REGISTER, seed_body
from tests.support.processes import free_port, start_api


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


@pytest.fixture(scope="module")
def api_without_postgres(log_dir: Path) -> Iterator[str]:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/marketdb_test"
    process, base_url = start_api(service_env(DATABASE_URL=closed), log_dir, "api-no-postgres")
    yield base_url
    process.stop()


async def test_ready_is_503_naming_redis_when_redis_is_unreachable(
    api_without_redis: str,
) -> None:
    async with httpx.AsyncClient(base_url=api_without_redis) as http:
        response = await http.get("/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")


async def test_registration_needs_no_redis(api_without_redis: str, db: object) -> None:
    async with httpx.AsyncClient(base_url=api_without_redis) as http:
        response = await http.post(REGISTER, json=seed_body())

    assert response.status_code == 201


async def test_without_postgres_ready_names_it_and_writes_answer_503(
    api_without_postgres: str,
) -> None:
    async with httpx.AsyncClient(base_url=api_without_postgres) as http:
        ready = await http.get("/ready")
        register = await http.post(REGISTER, json=seed_body())

    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"].startswith("unavailable")
    assert ready.json()["checks"]["redis"] == "ok"
    assert register.status_code == 503
    assert register.headers["retry-after"]
