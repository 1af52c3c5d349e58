"""POST /api/v1/markets/register: one transaction, an answer at once, nothing written on 4xx."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from app.json_limits import MAX_NESTING
from app.markets.events import Announced
from tests.support.json_strategies import nested_json, with_asset_details_nested
from tests.support.markets import REGISTER, seed_body


async def counts(db: asyncpg.Connection) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM markets) AS markets, (SELECT count(*) FROM assets) AS assets,"
        " (SELECT count(*) FROM outbox) AS outbox"
    )
    assert row is not None
    return row["markets"], row["assets"], row["outbox"]


async def test_register_commits_market_asset_and_both_outbox_rows(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(REGISTER, json=seed_body(assetDetails={"city": "Lisbon"}))

    assert response.status_code == 201, response.text
    body = response.json()
    market, asset = body["market"], body["asset"]
    assert market["status"] == "pending_approval"
    assert market["name"] == "Test Market"
    assert asset["marketId"] == market["id"]
    assert asset["totalSupply"] == "1000000"
    assert asset["assetDetails"] == {"city": "Lisbon"}
    assert response.headers["location"] == f"/api/v1/markets/{market['id']}"

    row = await db.fetchrow("SELECT * FROM markets WHERE id = $1", uuid.UUID(market["id"]))
    assert row is not None and row["status"] == "pending_approval"
    asset_row = await db.fetchrow("SELECT * FROM assets WHERE market_id = $1", row["id"])
    assert asset_row is not None and asset_row["token_symbol"] == "TEST"
    outbox = await db.fetch("SELECT * FROM outbox ORDER BY id")
    assert [r["event_type"] for r in outbox] == [Announced.REGISTERED, Announced.APPROVAL_REQUESTED]
    assert {r["stream"] for r in outbox} == {"markets:events"}
    assert {r["aggregate_id"] for r in outbox} == {market["id"]}
    assert all(r["published_at"] is None for r in outbox)
    requested = json.loads(outbox[1]["payload"])
    assert requested["market_id"] == market["id"]
    assert requested["entity_id"] == "9b2f7c1e-2222-4a5b-8c9d-0123456789ab"


async def test_commit_sends_the_notify_the_relay_listens_for(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    woken: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("outbox", lambda *args: woken.put_nowait(args[2]))
    try:
        response = await client.post(REGISTER, json=seed_body())
        assert response.status_code == 201
        assert await asyncio.wait_for(woken.get(), timeout=10) == "outbox"
    finally:
        await db.remove_listener("outbox", lambda *args: None)


@pytest.mark.parametrize("supply", [2**70, str(2**200), 2**256 - 1])
async def test_total_supply_above_2_63_is_stored_exactly(
    client: httpx.AsyncClient, db: asyncpg.Connection, supply: int | str
) -> None:
    response = await client.post(REGISTER, json=seed_body(totalSupply=supply))

    assert response.status_code == 201, response.text
    assert response.json()["asset"]["totalSupply"] == str(supply)
    stored = await db.fetchval("SELECT total_supply::text FROM assets")
    assert stored == str(supply)
    market_id = response.json()["market"]["id"]
    fetched = await client.get(f"/api/v1/markets/{market_id}")
    assert fetched.json()["asset"]["totalSupply"] == str(supply)


async def test_a_failure_after_the_market_insert_leaves_no_market_and_no_outbox_row(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # The outbox insert comes after the market and asset inserts in the transaction.
    await db.execute(
        """
        CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$;
        CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox
        FOR EACH ROW EXECUTE FUNCTION fail_outbox();
        """
    )
    try:
        response = await client.post(REGISTER, json=seed_body())
    finally:
        await db.execute("DROP TRIGGER fail_outbox ON outbox; DROP FUNCTION fail_outbox()")

    assert response.status_code == 500
    assert await counts(db) == (0, 0, 0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 7}, "name"),
        ({"tokenSymbol": "A"}, "tokenSymbol"),
        ({"tokenSymbol": "ABCDEFGHIJKL"}, "tokenSymbol"),
        ({"tokenSymbol": "test"}, "tokenSymbol"),
        ({"tokenSymbol": "TE-ST"}, "tokenSymbol"),
        ({"totalSupply": 0}, "totalSupply"),
        ({"totalSupply": -5}, "totalSupply"),
        ({"totalSupply": 1.5}, "totalSupply"),
        ({"totalSupply": "12a"}, "totalSupply"),
        ({"totalSupply": "012"}, "totalSupply"),
        ({"totalSupply": 2**256}, "totalSupply"),
        ({"issuerId": "issuer-uuid"}, "issuerId"),
        ({"entityId": 12}, "entityId"),
        ({"assetType": "spaceship"}, "assetType"),
        ({"assetDetails": []}, "assetDetails"),
        ({"assetDetails": "none"}, "assetDetails"),
        ({"tokenName": ""}, "tokenName"),
        ({"unexpected": 1}, "unexpected"),
        # PostgreSQL's text and jsonb cannot hold U+0000: a 400, not a 500.
        ({"name": "a\x00b"}, "name"),
        ({"assetDetails": {"deep": [{"k\x00": 1}]}}, "assetDetails"),
    ],
)
async def test_each_validation_rule_names_its_field_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, changes: dict[str, Any], field: str
) -> None:
    response = await client.post(REGISTER, json=seed_body(**changes))

    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == [field]
    assert errors[0]["reason"]
    assert await counts(db) == (0, 0, 0)


@pytest.mark.parametrize("missing", ["name", "issuerId", "assetType", "tokenSymbol", "entityId"])
async def test_a_missing_field_is_reported_as_required(
    client: httpx.AsyncClient, db: asyncpg.Connection, missing: str
) -> None:
    body = seed_body()
    del body[missing]
    response = await client.post(REGISTER, json=body)

    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": missing, "reason": "required"}]
    assert await counts(db) == (0, 0, 0)


async def test_every_wrong_field_is_reported_at_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        REGISTER, json=seed_body(name="", tokenSymbol="x", totalSupply=0, extra=True)
    )

    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"name", "tokenSymbol", "totalSupply", "extra"}
    assert await counts(db) == (0, 0, 0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b'{"name": ', "malformed JSON"), (b"[]", "got array"), (b"", "required"), (b"null", "null")],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection, content: bytes, reason: str
) -> None:
    response = await client.post(
        REGISTER, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert reason in error["reason"]
    assert await counts(db) == (0, 0, 0)


async def test_the_limits_of_each_rule_are_accepted(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for changes in [
        {"name": "x" * 200, "tokenSymbol": "A1", "totalSupply": 1},
        {"name": "y", "tokenSymbol": "ABCDEFGHIJ1", "totalSupply": "1"},
    ]:
        response = await client.post(REGISTER, json=seed_body(**changes))
        assert response.status_code == 201, response.text
    assert await counts(db) == (2, 2, 4)


async def test_a_body_over_1_mib_gets_413_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        REGISTER, json=seed_body(assetDetails={"blob": "x" * (1024 * 1024)})
    )

    assert response.status_code == 413
    assert response.json()["errors"][0]["field"] == "body"
    assert await counts(db) == (0, 0, 0)


async def test_the_same_idempotency_key_and_body_return_the_first_response(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    headers = {"Idempotency-Key": "register-42"}
    first = await client.post(REGISTER, json=seed_body(), headers=headers)
    # The same request spelled differently on the wire is still the same request.
    reordered = json.dumps(dict(reversed(list(seed_body().items()))), indent=2)
    again = await client.post(
        REGISTER, content=reordered, headers={**headers, "content-type": "application/json"}
    )

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await counts(db) == (1, 1, 2)


async def test_the_same_idempotency_key_with_another_body_gets_409(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    headers = {"Idempotency-Key": "register-43"}
    first = await client.post(REGISTER, json=seed_body(), headers=headers)
    other = await client.post(REGISTER, json=seed_body(name="Another"), headers=headers)

    assert first.status_code == 201
    assert other.status_code == 409
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await counts(db) == (1, 1, 2)


async def test_concurrent_requests_with_one_idempotency_key_register_one_market(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    headers = {"Idempotency-Key": "register-44"}
    responses = await asyncio.gather(
        *(client.post(REGISTER, json=seed_body(), headers=headers) for _ in range(10))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["market"]["id"] for r in responses}) == 1
    assert await counts(db) == (1, 1, 2)


async def test_an_empty_idempotency_key_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(REGISTER, json=seed_body(), headers={"Idempotency-Key": ""})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await counts(db) == (0, 0, 0)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000, id="100000 [ never closed"),
        pytest.param(nested_json(100_000), id="100000 levels closed"),
        pytest.param(with_asset_details_nested(400), id="assetDetails 400 deep"),
        pytest.param(with_asset_details_nested(MAX_NESTING), id="one level too deep"),
    ],
)
async def test_bad_input_a_body_nested_deeper_than_32_levels_gets_400_naming_the_limit(
    client: httpx.AsyncClient, db: asyncpg.Connection, content: bytes
) -> None:
    response = await client.post(
        REGISTER, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert f"{MAX_NESTING} levels" in error["reason"]
    assert await counts(db) == (0, 0, 0)


async def test_a_body_nested_exactly_32_levels_is_accepted(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        REGISTER,
        content=with_asset_details_nested(MAX_NESTING - 1),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 201, response.text
    assert await counts(db) == (1, 1, 2)


async def test_an_x_request_id_longer_than_an_id_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Written into every event the request causes: a header of any length would be too.
    refused = await client.post(REGISTER, json=seed_body(), headers={"X-Request-ID": "r" * 129})
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"field": "X-Request-ID", "reason": "1 to 128 visible ASCII characters, no spaces"}
    ]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0

    kept = await client.post(REGISTER, json=seed_body(), headers={"X-Request-ID": "r" * 128})
    assert kept.status_code == 201
    context = await db.fetchval("SELECT context FROM outbox LIMIT 1")
    assert json.loads(context)["request_id"] == "r" * 128
