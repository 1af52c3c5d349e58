"""A value outside an enumeration is answered with the values allowed, wherever it is sent:
a register body, a webhook decision's payload, an admin query parameter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import service_env
from tests.support.markets import REGISTER, seed_body
from tests.support.processes import start_api
from tests.support.webhooks import WEBHOOK, seed_event

ASSET_TYPES = "real_estate, equity, debt, fund, commodity, art, collectible, other"
ADMIN_TOKEN = "enum-admin-token"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("house", "'house'"),
        ("REAL_ESTATE", "'REAL_ESTATE'"),
        (7, "a number"),
        (None, "null"),
        (["equity"], "an array"),
        ("x" * 100, "'" + "x" * 64 + "...'"),  # a long value is not repeated whole
    ],
)
async def test_an_asset_type_not_allowed_lists_the_allowed_ones(
    client: httpx.AsyncClient, db: asyncpg.Connection, value: Any, shown: str
) -> None:
    response = await client.post(REGISTER, json=seed_body(assetType=value))

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "assetType", "reason": f"{shown} is not one of {ASSET_TYPES}"}
    ]
    assert await db.fetchval("SELECT count(*) FROM markets") == 0


async def test_a_decision_not_allowed_lists_the_allowed_ones(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event()
    event["payload"]["decision"] = "maybe"

    response = await client.post(WEBHOOK, json=event)

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "payload.decision", "reason": "'maybe' is not one of approved, rejected"}
    ]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


@pytest.fixture(scope="module")
def admin_api(log_dir: Path) -> Iterator[str]:
    process, base_url = start_api(service_env(ADMIN_TOKEN=ADMIN_TOKEN), log_dir, "api-enum")
    try:
        yield base_url
    finally:
        process.stop()


async def test_an_admin_status_filter_not_allowed_lists_the_allowed_ones(admin_api: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_api, headers=headers) as admin:
        response = await admin.get("/api/v1/admin/processed-events", params={"status": "done"})

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "status", "reason": "'done' is not one of success, failed, skipped"}
    ]
