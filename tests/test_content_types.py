"""One Content-Type rule for every endpoint with a body (app/media_types.py).

Register reads application/json; the webhook reads application/json and text/plain (SNS
posts text/plain). Anything else, none, two Content-Type lines, or a charset other than
UTF-8: 415 naming the accepted types, whatever the body, and nothing stored.
"""

from __future__ import annotations

import json

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from tests.support.api_fuzz import send_raw
from tests.support.markets import REGISTER, seed_body
from tests.support.storage import assert_nothing_stored
from tests.support.webhooks import WEBHOOK, seed_event

ENDPOINTS = {
    REGISTER: ("application/json", 201),
    WEBHOOK: ("application/json or text/plain", 200),
}


def body_for(path: str) -> bytes:
    return json.dumps(seed_body() if path == REGISTER else seed_event()).encode()


REFUSED_EVERYWHERE: list[tuple[bytes, str]] = [
    (b"application/xml", "'application/xml' is not one of"),
    (b"application/x-www-form-urlencoded", "is not one of"),
    (b"multipart/form-data; boundary=x", "'multipart/form-data' is not one of"),
    (b"application/vnd.api+json", "is not one of"),  # +json is not JSON of our kind
    (b"application/jsonx", "is not one of"),
    (b"", "required"),
    (b"application/json; charset=latin-1", "charset 'latin-1' is not UTF-8"),
    (b"application/json; charset=utf-16", "charset 'utf-16' is not UTF-8"),
    # Latin-1 bytes, as a hostile client sends them: read, refused, never a 500.
    (b"application/j\xe9son", "is not one of"),
    (b"application/json; charset=\xff\xfe", "is not UTF-8"),
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("content_type", "reason"), REFUSED_EVERYWHERE)
async def test_a_content_type_not_accepted_gets_415_naming_the_accepted_types(
    api: str,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    path: str,
    content_type: bytes,
    reason: str,
) -> None:
    response = await send_raw(api, path, [(b"Content-Type", content_type)], body_for(path))

    assert response.status == 415, response.body
    accepted, _ = ENDPOINTS[path]
    assert response.json()["detail"] == f"Content-Type must be {accepted}"
    [error] = response.json()["errors"]
    assert error["field"] == "Content-Type"
    assert reason in error["reason"]
    await assert_nothing_stored(db, redis_client)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_no_content_type_or_two_of_them_get_415(
    api: str, db: asyncpg.Connection, redis_client: redis.Redis, path: str
) -> None:
    json_type = (b"Content-Type", b"application/json")
    missing = await send_raw(api, path, [], body_for(path))
    twice = await send_raw(api, path, [json_type, json_type], body_for(path))

    assert missing.status == twice.status == 415
    assert missing.json()["errors"] == [{"field": "Content-Type", "reason": "required"}]
    assert twice.json()["errors"] == [{"field": "Content-Type", "reason": "sent 2 times: send one"}]
    await assert_nothing_stored(db, redis_client)


async def test_register_refuses_text_plain_and_forms_as_the_webhook_refuses_forms(
    client: httpx.AsyncClient, db: asyncpg.Connection, redis_client: redis.Redis
) -> None:
    as_text = await client.post(
        REGISTER, content=body_for(REGISTER), headers={"content-type": "text/plain"}
    )
    as_form = await client.post(REGISTER, data={"name": "Test Market"})
    webhook_form = await client.post(WEBHOOK, data={"event_id": "x"})

    assert as_text.status_code == as_form.status_code == webhook_form.status_code == 415
    assert as_text.json()["errors"][0]["reason"] == "'text/plain' is not one of application/json"
    await assert_nothing_stored(db, redis_client)


async def test_the_content_type_is_checked_before_the_body_is_read(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # It was a malformed-JSON 400 on register: the body is not the problem.
    response = await client.post(
        REGISTER, content=b"<market/>", headers={"content-type": "application/xml"}
    )

    assert response.status_code == 415
    assert response.json()["errors"][0]["field"] == "Content-Type"


ACCEPTED_SPELLINGS = [
    "application/json",
    "APPLICATION/JSON",
    "Application/Json ; charset=UTF-8",
    'application/json;charset="utf-8"',
    "application/json; charset=utf8; profile=x",
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content_type", ACCEPTED_SPELLINGS)
async def test_json_is_accepted_in_any_case_and_with_a_utf_8_charset(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    response = await client.post(
        path, content=body_for(path), headers={"content-type": content_type}
    )

    _, status = ENDPOINTS[path]
    assert response.status_code == status, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=UTF-8", "TEXT/PLAIN"])
async def test_the_webhook_accepts_text_plain_as_sns_sends_it(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        WEBHOOK, content=body_for(WEBHOOK), headers={"content-type": content_type}
    )

    assert response.json()["status"] == "accepted", response.text


async def test_the_document_lists_415_on_both_endpoints(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]

    for path, (accepted, _) in ENDPOINTS.items():
        description = paths[path]["post"]["responses"]["415"]["description"]
        assert accepted in description
