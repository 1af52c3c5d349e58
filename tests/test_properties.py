"""Hypothesis properties of the register and webhook bodies, against the running API.

Whatever the API accepts it stores exactly; whatever it refuses gets a 4xx naming the
fields and leaves no row behind. Derandomised, with no example database: CI repeats
the same examples every run.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.json_strategies import (
    hostile_values,
    json_value,
    poisoned,
    register_bodies,
    spoilt,
    webhook_events,
)
from tests.support.markets import REGISTER
from tests.support.storage import row_counts
from tests.test_webhook import WEBHOOK

repeatable = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    # The client and database fixtures are shared by every example on purpose: each
    # example compares with the state before it, never with an empty database.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _raw(document: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \\ud800 escapes, as a hostile client may send.
    return json.dumps(document).encode()


def assert_refusal_names_fields(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert errors
    # A field is named as sent, so an unknown key "" is reported as "".
    assert all(isinstance(error["field"], str) and error["reason"] for error in errors)


@repeatable
@given(body=register_bodies)
async def test_any_registration_accepted_is_stored_and_read_back_exactly(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    created = await client.post(REGISTER, json=body)

    assert created.status_code == 201, created.text
    read = (await client.get(created.headers["location"])).json()
    market, asset = read["market"], read["asset"]
    assert (market["name"], market["issuerId"], market["entityId"]) == (
        body["name"],
        body["issuerId"],
        body["entityId"],
    )
    assert (asset["assetType"], asset["tokenSymbol"], asset["tokenName"]) == (
        body["assetType"],
        body["tokenSymbol"],
        body["tokenName"],
    )
    assert asset["totalSupply"] == str(body["totalSupply"])
    assert json_value(asset["assetDetails"]) == json_value(body.get("assetDetails", {}))
    assert market["status"] == "pending_approval"


@repeatable
@given(body=spoilt(register_bodies) | poisoned(register_bodies) | hostile_values)
async def test_any_register_body_refused_names_its_fields_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: Any
) -> None:
    before = await row_counts(db)

    response = await client.post(
        REGISTER, content=_raw(body), headers={"content-type": "application/json"}
    )

    if response.status_code == 201:  # a spoilt field can still be valid: stored as sent
        assert response.json()["market"]["name"] == body["name"]
        return
    assert_refusal_names_fields(response)
    assert await row_counts(db) == before


@repeatable
@given(event=webhook_events)
async def test_any_valid_webhook_event_is_accepted_once_exactly_as_sent(
    client: httpx.AsyncClient, db: asyncpg.Connection, event: dict[str, Any]
) -> None:
    await db.execute("TRUNCATE outbox, processed_events")  # examples may share an event_id
    first = await client.post(WEBHOOK, json=event)
    again = await client.post(WEBHOOK, json=event)

    assert first.json() == {"status": "accepted", "event_id": event["event_id"]}, first.text
    assert again.json()["status"] == "already_processed"
    rows = await db.fetch("SELECT * FROM outbox WHERE event_id = $1", event["event_id"])
    assert len(rows) == 1
    assert json_value(rows[0]["payload"]) == json_value(event["payload"])
    assert json_value(rows[0]["context"]) == json_value(event.get("context", {}))
    assert rows[0]["event_type"] == event["event_type"]


@repeatable
@given(body=spoilt(webhook_events).map(_raw) | hostile_values.map(_raw) | st.binary(max_size=64))
async def test_any_webhook_body_never_5xx_and_stores_only_what_it_accepts(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    before = await row_counts(db)

    response = await client.post(
        WEBHOOK, content=body, headers={"content-type": "application/json"}
    )

    after = await row_counts(db)
    if response.status_code == 200:  # a spoilt field can still be valid: stored as sent
        sent = json.loads(body)
        assert response.json()["event_id"] == sent["event_id"]
        stored = await db.fetchval(
            "SELECT payload FROM outbox WHERE event_id = $1", sent["event_id"]
        )
        assert json_value(stored) == json_value(sent["payload"])
        return
    # 401: an object with SNS's Type field is checked as an SNS envelope.
    assert response.status_code in (400, 401), response.text
    assert response.json()["errors"]
    assert after == before
