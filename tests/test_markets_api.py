"""GET /api/v1/markets/{id}."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.support.markets import REGISTER, seed_body


async def test_a_registered_market_is_returned_with_its_asset_and_approval_state(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    created = await client.post(REGISTER, json=seed_body())
    market_id = created.json()["market"]["id"]

    response = await client.get(f"/api/v1/markets/{market_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["market"] == created.json()["market"]
    assert body["asset"] == created.json()["asset"]
    assert body["approvalHistory"] == []


async def test_an_unknown_market_gets_404_naming_the_id(client: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    response = await client.get(f"/api/v1/markets/{unknown}")

    assert response.status_code == 404
    assert str(unknown) in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "id"


async def test_a_malformed_id_gets_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/markets/not-a-uuid")

    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "id", "reason": "'not-a-uuid' is not a UUID"}]


async def test_the_id_s_errors_name_the_path_parameter_as_the_document_does(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operations = [
        (path, operation["get"])
        for path, operation in document["paths"].items()
        if path.startswith("/api/v1/markets/") and "get" in operation
    ]
    [(path, operation)] = operations
    [parameter] = [p for p in operation["parameters"] if p["in"] == "path"]
    name = parameter["name"]

    malformed = await client.get("/api/v1/markets/not-a-uuid")
    unknown = await client.get(f"/api/v1/markets/{uuid.uuid4()}")

    assert path == f"/api/v1/markets/{{{name}}}"
    assert [e["field"] for e in malformed.json()["errors"]] == [name]
    assert [e["field"] for e in unknown.json()["errors"]] == [name]
