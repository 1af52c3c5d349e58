"""POST /api/v1/webhooks/entity-permissions: verified, durable, idempotent.

Nothing is stored on any 4xx.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jsonschema_rs
import pytest
import redis.asyncio as redis

from app.inbound.events import read_event_json
from app.json_limits import MAX_NESTING
from app.markets.events import Decided
from app.validation import RequestValidationError
from app.webhooks import standard
from app.webhooks.guard import SourceGuard
from outbox import new_event
from tests.conftest import service_env
from tests.support.flow import Flow
from tests.support.json_strategies import nested_json, with_asset_details_nested
from tests.support.markets import REGISTER, seed_body
from tests.support.outbox import wait_until
from tests.support.processes import free_port, start_api
from tests.support.sns import CERT_URL, TOPIC_ARN, SnsSigner
from tests.support.storage import assert_nothing_stored, row_counts
from tests.support.webhooks import SECRET, WEBHOOK, clear_of_a_minute_boundary, seed_event, stored

RATE_LIMIT_KEYS = "ratelimit:webhook"
ROTATED = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


def signed_headers(
    body: bytes, secret: str = SECRET, timestamp: int | None = None
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": standard.sign(secret, "msg_1", stamp, body),
    }


async def test_a_decision_is_accepted_once_and_its_repeats_are_already_processed(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event()

    first = await client.post(WEBHOOK, json=event)
    again = await client.post(WEBHOOK, json=event)

    assert first.status_code == again.status_code == 200
    assert first.json() == {"status": "accepted", "event_id": event["event_id"]}
    assert again.json() == {"status": "already_processed", "event_id": event["event_id"]}
    row = await db.fetchrow("SELECT * FROM outbox WHERE event_id = $1", event["event_id"])
    assert row["stream"] == "entity-permissions:events"
    assert row["aggregate_id"] == event["payload"]["market_id"]
    assert row["source"] == "entity_permissions_core"
    assert json.loads(row["context"]) == {"actor_id": "admin-uuid"}


async def test_a_repeat_after_processing_and_retention_is_already_processed(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event()
    await client.post(WEBHOOK, json=event)
    # Applied by a consumer, then the outbox row left with its retention window.
    await db.execute(
        """
        INSERT INTO processed_events (event_id, event_type, source, processing_status, payload)
        VALUES ($1, 'market.approved', 'entity_permissions_core', 'success', '{}');
        """,
        event["event_id"],
    )
    await db.execute("DELETE FROM outbox")

    again = await client.post(WEBHOOK, json=event)

    assert again.json()["status"] == "already_processed"
    assert await stored(db) == 0


async def test_100_concurrent_identical_deliveries_store_one_row(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event()

    responses = await asyncio.gather(*(client.post(WEBHOOK, json=event) for _ in range(100)))

    assert {r.status_code for r in responses} == {200}
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses.count("accepted") == 1
    assert statuses.count("already_processed") == 99
    assert await stored(db) == 1


async def test_unknown_event_types_are_accepted_for_the_audit(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event(event_type="market.suspended", payload={"anything": ["goes"]})

    response = await client.post(WEBHOOK, json=event)

    assert response.json()["status"] == "accepted"
    assert await stored(db) == 1


async def test_text_plain_is_accepted(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    response = await client.post(
        WEBHOOK, content=json.dumps(seed_event()), headers={"content-type": "text/plain"}
    )

    assert response.json()["status"] == "accepted"


def _without(field: str) -> dict[str, Any]:
    event = seed_event()
    del event[field]
    return event


def _payload(**changes: Any) -> dict[str, Any]:
    event = seed_event()
    event["payload"] = {**event["payload"], **changes}
    return event


@pytest.mark.parametrize(
    ("content", "fields"),
    [
        (json.dumps(_without("event_id")), ["event_id"]),
        (json.dumps(_without("payload")), ["payload"]),
        (json.dumps(seed_event(event_id=42)), ["event_id"]),
        (json.dumps(seed_event(payload="approved")), ["payload"]),
        (json.dumps(_payload(decision="maybe")), ["payload.decision"]),
        (json.dumps(_payload(market_id="your-market-uuid")), ["payload.market_id"]),
        (json.dumps(_payload(decision="rejected")), ["payload.decision"]),
        (json.dumps(_payload(entity_id="your-entity-uuid")), ["payload.entity_id"]),
        (json.dumps(seed_event(occurred_at="yesterday")), ["occurred_at"]),
        (json.dumps(seed_event(occurred_at="1969-12-31T23:59:59Z")), ["occurred_at"]),
        (json.dumps(seed_event(occurred_at="2200-01-01T00:00:00Z")), ["occurred_at"]),
        (json.dumps(seed_event(occurred_at="2026-11-26 09:00:00Z")), ["occurred_at"]),
        (json.dumps(seed_event(context={"actor_id": ""})), ["context.actor_id"]),
        (json.dumps(seed_event(context={"actor_id": 7})), ["context.actor_id"]),
        (json.dumps(seed_event(context={"actor_id": "a" * 256})), ["context.actor_id"]),
        (json.dumps(seed_event(context=["admin-uuid"])), ["context"]),
        (json.dumps(seed_event(extra=1)), ["extra"]),
        ('{"event_id": ', ["body"]),
        (json.dumps([seed_event()]), ["body"]),
        ("", ["body"]),
    ],
)
async def test_bad_input_gets_400_naming_the_fields_and_stores_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, content: str, fields: list[str]
) -> None:
    response = await client.post(
        WEBHOOK, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == fields
    assert await stored(db) == 0


def _decision_without(*fields: str) -> dict[str, Any]:
    """The seed's decision without some of its fields: `payload.entity_id`, `context`."""
    event = seed_event()
    for field in fields:
        *parents, name = field.split(".")
        holder = event
        for parent in parents:
            holder = holder[parent]
        del holder[name]
    return event


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (["payload.market_id"], ["payload.market_id"]),
        (["payload.entity_id"], ["payload.entity_id"]),
        (["payload.decision"], ["payload.decision"]),
        (["context.actor_id"], ["context.actor_id"]),
        (["context"], ["context.actor_id"]),
        (["payload.entity_id", "context"], ["payload.entity_id", "context.actor_id"]),
    ],
)
async def test_a_decision_without_a_field_the_seed_sends_gets_400_naming_it(
    client: httpx.AsyncClient, db: asyncpg.Connection, missing: list[str], named: list[str]
) -> None:
    response = await client.post(WEBHOOK, json=_decision_without(*missing))

    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [{"field": name, "reason": "required"} for name in named]
    assert await stored(db) == 0


async def test_every_wrong_field_of_a_decision_is_reported_at_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    three_in_the_payload = _decision_without("payload.entity_id")
    three_in_the_payload["payload"].update(market_id="your-market-uuid", decision="maybe")
    everywhere = seed_event(event_id=42, context={}, occurred_at="1863-11-26T09:21:48Z")
    everywhere["payload"].update(market_id="your-market-uuid", decision="rejected")

    payload = await client.post(WEBHOOK, json=three_in_the_payload)
    spread = await client.post(WEBHOOK, json=everywhere)

    assert payload.status_code == spread.status_code == 400
    assert [e["field"] for e in payload.json()["errors"]] == [
        "payload.market_id",
        "payload.entity_id",
        "payload.decision",
    ]
    assert [e["field"] for e in spread.json()["errors"]] == [
        "event_id",
        "occurred_at",
        "payload.market_id",
        "payload.decision",
        "context.actor_id",
    ]
    assert await stored(db) == 0


def test_replay_reads_a_decision_by_the_rule_it_was_accepted_under() -> None:
    # Admin replay re-reads the record of a decision the consumer could not apply: one
    # accepted before entity_id and actor_id were required must stay replayable.
    legacy = json.dumps(_decision_without("payload.entity_id", "context")).encode()

    with pytest.raises(RequestValidationError) as refused:
        read_event_json(legacy)
    replayed = read_event_json(legacy, accepted=True)

    assert [e.field for e in refused.value.errors] == ["payload.entity_id", "context.actor_id"]
    assert replayed.aggregate_id == json.loads(legacy)["payload"]["market_id"]


@pytest.mark.parametrize(
    "occurred_at",
    ["1970-01-01T00:00:00+01:00", "2199-12-31T23:59:59.123456789-23:59", "2026-11-26t09:00:00z"],
)
async def test_an_occurred_at_written_in_the_years_1970_to_2199_is_accepted(
    client: httpx.AsyncClient, db: asyncpg.Connection, occurred_at: str
) -> None:
    # Whatever the offset, such a time is one PostgreSQL and every reader hold.
    response = await client.post(WEBHOOK, json=seed_event(occurred_at=occurred_at))

    assert response.json()["status"] == "accepted", response.text
    assert await stored(db) == 1


async def test_other_event_types_need_neither_entity_id_nor_context(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = _decision_without("payload.entity_id", "context")
    event["event_type"] = "market.suspended"

    response = await client.post(WEBHOOK, json=event)

    assert response.json()["status"] == "accepted", response.text


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(seed_event(), id="the seed's"),
        pytest.param(_decision_without("payload.entity_id"), id="no entity_id"),
        pytest.param(_decision_without("context"), id="no context"),
        pytest.param(_decision_without("context.actor_id"), id="no actor_id"),
        pytest.param(seed_event(context={"actor_id": ""}), id="empty actor_id"),
        pytest.param(
            seed_event(
                event_type=Decided.REJECTED,
                payload={**seed_event()["payload"], "decision": "rejected", "reason": "KYC"},
            ),
            id="a rejection",
        ),
        pytest.param(seed_event(occurred_at="1969-12-31T23:59:59Z"), id="1969"),
        pytest.param(seed_event(occurred_at="1970-01-01T00:00:00+01:00"), id="1970 east"),
        pytest.param(seed_event(occurred_at="2026-11-26 09:00:00Z"), id="space"),
        pytest.param(seed_event(event_type="market.suspended", context={}), id="other type"),
    ],
)
async def test_the_document_and_the_webhook_agree_on_what_a_decision_requires(
    client: httpx.AsyncClient, db: asyncpg.Connection, event: dict[str, Any]
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operation = document["paths"][WEBHOOK]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)

    response = await client.post(WEBHOOK, json=event)

    assert response.status_code in (200, 400), response.text
    assert validator.is_valid(event) == (response.status_code == 200), response.text


@pytest.mark.parametrize("value", [b"Notification", b"\xff\tjunk", b"1" + b"0" * 400])
async def test_the_body_not_the_sns_message_type_header_decides_how_a_request_is_read(
    client: httpx.AsyncClient, db: asyncpg.Connection, value: bytes
) -> None:
    # Only the body is signed: a direct event is verified as one (here: unsigned, as this
    # API allows), whatever x-amz-sns-message-type says; an SNS envelope is verified as SNS
    # without it (test_webhook_sns).
    headers = {"content-type": "application/json", "x-amz-sns-message-type": value}

    response = await client.post(WEBHOOK, content=json.dumps(seed_event()), headers=headers)

    assert response.json()["status"] == "accepted", response.text
    assert await stored(db) == 1


def with_payload_nested(levels: int) -> bytes:
    """An event of another type whose payload nests `levels` deep (the body: levels + 1)."""
    event = seed_event(event_type="market.suspended", payload="<payload>")
    payload = b'{"deep":' + nested_json(levels - 1) + b"}"
    return json.dumps(event).encode().replace(b'"<payload>"', payload)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000, id="100000 [ never closed"),
        pytest.param(nested_json(60_000), id="60000 levels closed"),
        pytest.param(with_payload_nested(400), id="payload 400 deep"),
        pytest.param(with_payload_nested(MAX_NESTING), id="one level too deep"),
        # A string that never closes, full of escaped quotes: was quadratic to measure.
        pytest.param(b"[" * 33 + b'"' + b'\\"' * 100_000, id="unterminated string of quotes"),
    ],
)
async def test_bad_input_a_body_nested_deeper_than_32_levels_gets_400_naming_the_limit(
    client: httpx.AsyncClient, db: asyncpg.Connection, redis_client: redis.Redis, content: bytes
) -> None:
    response = await client.post(
        WEBHOOK, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert f"{MAX_NESTING} levels" in error["reason"]
    await assert_nothing_stored(db, redis_client)


async def test_an_event_nested_exactly_32_levels_is_accepted(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        WEBHOOK,
        content=with_payload_nested(MAX_NESTING - 1),
        headers={"content-type": "application/json"},
    )

    assert response.json()["status"] == "accepted", response.text
    assert await stored(db) == 1


async def test_over_256_kib_gets_413_and_stores_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(WEBHOOK, json=seed_event(context={"pad": "x" * 262_144}))

    assert response.status_code == 413
    assert await stored(db) == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_get_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, WEBHOOK)

    assert response.status_code == 405
    assert response.json()["errors"][0]["field"] == "method"


async def test_another_content_type_gets_415(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post(WEBHOOK, data={"event_id": "x"})

    assert response.status_code == 415
    assert await stored(db) == 0


async def test_health_answers_as_in_the_seed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/webhooks/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["service"] == "webhook-handler"
    assert body["timestamp"].endswith("Z")


def test_the_standard_webhooks_test_vector_verifies() -> None:
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'

    assert standard.verify([SECRET], headers, body, now=1614265330) == headers["webhook-id"]
    with pytest.raises(standard.SignatureError):
        standard.verify([SECRET], headers, body + b" ", now=1614265330)
    with pytest.raises(standard.SignatureError):
        standard.verify([SECRET], headers, body, now=1614265330 + 301)


@pytest.fixture(scope="module")
def signed_api(log_dir: Path) -> Iterator[str]:
    process, base_url = start_api(
        service_env(WEBHOOK_SECRETS=f"{ROTATED} {SECRET}"), log_dir, "api-signed"
    )
    yield base_url
    process.stop()


@pytest.fixture
async def signed(signed_api: str, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=signed_api) as http:
        yield http


async def test_a_signed_request_is_accepted_with_either_rotated_secret(
    signed: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for secret in (SECRET, ROTATED):
        body = json.dumps(seed_event()).encode()
        response = await signed.post(WEBHOOK, content=body, headers=signed_headers(body, secret))
        assert response.json()["status"] == "accepted", response.text
    assert await stored(db) == 2


@pytest.mark.parametrize(
    "forge",
    [
        "unsigned",
        "wrong secret",
        "tampered body",
        "expired: a captured delivery replayed after 5 minutes",
        "from the future",
        "no v1",
        "replayed signature on another body",
        "replayed signature under another webhook-id",
        "replayed signature with a fresh timestamp",
    ],
)
async def test_a_bad_signature_gets_401_and_stores_nothing(
    signed: httpx.AsyncClient, db: asyncpg.Connection, redis_client: redis.Redis, forge: str
) -> None:
    body = json.dumps(seed_event()).encode()
    headers = signed_headers(body)
    if forge == "unsigned":
        headers = {"content-type": "application/json"}
    elif forge == "wrong secret":
        headers = signed_headers(body, "whsec_" + "d3Jvbmctc2VjcmV0")
    elif forge == "tampered body":
        body = body.replace(b"approved", b"rejected", 1)
    elif forge.startswith("expired"):
        headers = signed_headers(body, timestamp=int(time.time()) - 301)
    elif forge == "from the future":
        headers = signed_headers(body, timestamp=int(time.time()) + 301)
    elif forge == "no v1":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif forge == "replayed signature on another body":
        body = json.dumps(seed_event()).encode()
    elif forge == "replayed signature under another webhook-id":
        headers["webhook-id"] = "msg_2"
    elif forge == "replayed signature with a fresh timestamp":
        headers = signed_headers(body, timestamp=int(time.time()) - 60)
        headers["webhook-timestamp"] = str(int(time.time()))

    response = await signed.post(WEBHOOK, content=body, headers=headers)

    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] == "signature"
    await assert_nothing_stored(db, redis_client)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", b"v1,\xff"),
        ("webhook-signature", "v1,\u00e9t\u00e9".encode()),
        ("webhook-signature", b"v1,\x80\x81\tv1,=="),
        ("webhook-timestamp", b"1" + b"0" * 400),
        ("webhook-timestamp", b"9" * 5000),
        ("webhook-timestamp", "\u0661\u0666\u0661\u0664".encode()),
        ("webhook-timestamp", b"-1"),
        ("webhook-timestamp", b"1e3"),
        ("webhook-id", b"msg_\xff"),
        ("webhook-id", b"msg\t1"),
    ],
)
async def test_bad_input_a_hostile_signature_header_gets_401_never_500(
    signed: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    header: str,
    value: bytes,
) -> None:
    body = json.dumps(seed_event()).encode()
    headers: dict[str, str | bytes] = {**signed_headers(body), header: value}

    response = await signed.post(WEBHOOK, content=body, headers=headers)

    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["field"] == "signature"
    await assert_nothing_stored(db, redis_client)


async def test_a_delivery_replayed_within_the_tolerance_changes_nothing(
    signed: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = json.dumps(seed_event()).encode()
    headers = signed_headers(body)
    first = await signed.post(WEBHOOK, content=body, headers=headers)
    after_first = await row_counts(db)

    replays = [await signed.post(WEBHOOK, content=body, headers=headers) for _ in range(3)]

    assert first.json()["status"] == "accepted"
    assert {r.json()["status"] for r in replays} == {"already_processed"}
    assert await row_counts(db) == after_first


async def test_the_rate_limit_holds_and_answers_429(
    log_dir: Path, db: asyncpg.Connection, redis_client: object
) -> None:
    # redis_client: the test's Redis database starts empty, counters included.
    process, base_url = start_api(
        service_env(WEBHOOK_RATE_LIMIT_PER_MINUTE="5"), log_dir, "api-rate-limited"
    )
    try:
        await clear_of_a_minute_boundary()
        async with httpx.AsyncClient(base_url=base_url) as http:
            codes = [(await http.post(WEBHOOK, json=seed_event())).status_code for _ in range(7)]
            # SNS drops a delivery answered 4xx and retries a 5xx: one over the limit waits.
            by_sns = await http.post(
                WEBHOOK, json=seed_event(), headers={"x-amz-sns-message-type": "Notification"}
            )
    finally:
        process.stop()

    assert codes[:5] == [200] * 5
    assert codes[5:] == [429, 429]
    assert by_sns.status_code == 503 and by_sns.headers["retry-after"] == "60"
    assert await stored(db) == 5


async def test_the_allow_list_refuses_other_callers(log_dir: Path, db: asyncpg.Connection) -> None:
    env = service_env(WEBHOOK_ALLOWED_CIDRS="10.0.0.0/8", TRUSTED_PROXIES="127.0.0.1/32")
    process, base_url = start_api(env, log_dir, "api-allow-list")
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            direct = await http.post(WEBHOOK, json=seed_event())
            via_proxy = await http.post(
                WEBHOOK, json=seed_event(), headers={"x-forwarded-for": "10.1.2.3"}
            )
            spoofed = await http.post(
                WEBHOOK, json=seed_event(), headers={"x-forwarded-for": "10.1.2.3, 192.0.2.7"}
            )
    finally:
        process.stop()

    assert direct.status_code == 403
    assert via_proxy.status_code == 200
    assert spoofed.status_code == 403
    assert await stored(db) == 1


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    guard = SourceGuard([], ["10.0.0.0/8"])

    def client(peer: str, *lines: str) -> str | None:
        address = guard.identify(peer, lines).address
        return None if address is None else str(address)

    assert client("203.0.113.9", "198.51.100.1") == "203.0.113.9"
    assert client("10.0.0.2", "198.51.100.1") == "198.51.100.1"
    assert client("10.0.0.2", "1.2.3.4, 198.51.100.1, 10.0.0.3") == "198.51.100.1"
    assert client("10.0.0.2", "1.2.3.4", "198.51.100.1, 10.0.0.3") == "198.51.100.1"
    assert client("10.0.0.2", "198.51.100.1", "") == "198.51.100.1"  # an empty line
    assert client("10.0.0.2", " 198.51.100.1:8443 ,, 10.0.0.3:80 ") == "198.51.100.1"
    assert client("10.0.0.2", "[2001:db8::1]:443") == "2001:db8::1"
    assert client("10.0.0.2", "[2001:db8::1]") == "2001:db8::1"
    assert client("10.0.0.2", "2001:db8::1") == "2001:db8::1"
    assert client("10.0.0.2", "::ffff:198.51.100.1") == "198.51.100.1"
    assert client("10.0.0.2", f"[fe80::1%{'x' * 500}]:80") == "fe80::1"  # no zone kept
    assert client("::ffff:10.0.0.2", "198.51.100.1") == "198.51.100.1"
    assert client("10.0.0.2", "10.0.0.3") == "10.0.0.3"  # only proxies: the leftmost
    assert client("10.0.0.2", "garbage") is None
    assert client("10.0.0.2", "198.51.100.1, garbage") is None
    assert client("203.0.113.9", "garbage") == "203.0.113.9"  # not a proxy: not read at all


def test_rate_limit_buckets_ipv6_per_64_ipv4_per_address_unreadable_per_proxy() -> None:
    guard = SourceGuard([], ["10.0.0.0/8"])

    def bucket(*lines: str) -> str:
        return guard.identify("10.0.0.2", lines).rate_key

    assert bucket("2001:db8:1:2::1") == bucket("[2001:db8:1:2:ffff::9]:80") == "2001:db8:1:2::/64"
    assert bucket("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert bucket("::ffff:198.51.100.1") == bucket("198.51.100.1:80") == "198.51.100.1"
    assert bucket("garbage") == bucket("unknown") == "unreadable-via-10.0.0.2"
    assert guard.identify("10.0.0.9", ["garbage"]).rate_key == "unreadable-via-10.0.0.9"


PROXY = "127.0.0.2"  # a proxy of ours: another loopback address the tests connect from


@pytest.fixture(scope="module")
def proxied_api(log_dir: Path) -> Iterator[str]:
    """Behind a proxy at 127.0.0.2 that is itself allowed (a health check's own address)."""
    env = service_env(
        TRUSTED_PROXIES=f"{PROXY}/32",
        WEBHOOK_ALLOWED_CIDRS=f"10.0.0.0/8 2001:db8::/32 {PROXY}/32",
    )
    process, base_url = start_api(env, log_dir, "api-proxied")
    yield base_url
    process.stop()


@pytest.fixture
async def via_proxy(proxied_api: str, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=PROXY)
    async with httpx.AsyncClient(base_url=proxied_api, transport=transport) as http:
        yield http


def _forwarded(*lines: str) -> list[tuple[bytes, bytes]]:
    """Repeated X-Forwarded-For header lines, each sent as a line of its own, byte for byte
    (Latin-1, as HTTP reads them)."""
    return [
        (b"content-type", b"application/json"),
        *((b"x-forwarded-for", line.encode("latin-1")) for line in lines),
    ]


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        # The client wrote the first line; the proxy appended its own line.
        (["10.1.2.3", "192.0.2.7"], 403),
        (["192.0.2.7", "10.1.2.3"], 200),
        (["10.1.2.3", "192.0.2.7, 127.0.0.2"], 403),
        (["192.0.2.7, 10.1.2.3", ""], 200),
    ],
)
async def test_x_forwarded_for_every_header_line_is_read_right_to_left(
    via_proxy: httpx.AsyncClient, db: asyncpg.Connection, lines: list[str], status: int
) -> None:
    body = json.dumps(seed_event())

    response = await via_proxy.post(WEBHOOK, content=body, headers=_forwarded(*lines))

    assert response.status_code == status, response.text
    assert await stored(db) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("hop", "status"),
    [
        ("10.1.2.3:5555", 200),
        ("192.0.2.7:5555", 403),
        ("[2001:db8::7]:443", 200),
        ("[2001:db9::7]:443", 403),
        ("[2001:db8::7]", 200),
        ("2001:db8::7", 200),
        ("::ffff:10.1.2.3", 200),
        ("::ffff:192.0.2.7", 403),
        ("192.0.2.7 ,  10.1.2.3:80", 200),
        ("10.1.2.3,127.0.0.2:8080", 200),
        ("192.0.2.7, 127.0.0.2:8080", 403),
    ],
)
async def test_x_forwarded_for_hops_are_read_with_ports_brackets_and_spaces(
    via_proxy: httpx.AsyncClient, db: asyncpg.Connection, hop: str, status: int
) -> None:
    response = await via_proxy.post(
        WEBHOOK, content=json.dumps(seed_event()), headers=_forwarded(hop)
    )

    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "lines",
    [
        ["garbage"],
        ["unknown"],
        ["10.1.2.3, garbage"],
        ["10.1.2.3", "garbage"],
        ["10.1.2.3:99999999"],
        ["[10.1.2.3"],
        ["10.1.2.3 10.1.2.4"],
        ["10.1.2.3\xff"],
    ],
)
async def test_x_forwarded_for_an_unreadable_hop_is_refused_not_taken_for_the_proxy(
    via_proxy: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    lines: list[str],
) -> None:
    # The proxy's own address is allowed: an unreadable hop must not pass as the proxy.
    response = await via_proxy.post(
        WEBHOOK, content=json.dumps(seed_event()), headers=_forwarded(*lines)
    )

    assert response.status_code == 403, response.text
    assert "not an address" in response.json()["detail"]
    await assert_nothing_stored(db, redis_client)


async def test_x_forwarded_for_rate_limit_counts_ipv6_per_64_and_unreadable_hops_per_proxy(
    log_dir: Path, db: asyncpg.Connection, redis_client: redis.Redis
) -> None:
    process, base_url = start_api(
        service_env(TRUSTED_PROXIES=f"{PROXY}/32"), log_dir, "api-proxied-no-allow-list"
    )
    sent = {
        "2001:db8:1:2::1": "2001:db8:1:2::/64",
        "[2001:db8:1:2:ffff::9]:80": "2001:db8:1:2::/64",
        "2001:db8:1:3::1": "2001:db8:1:3::/64",
        "::ffff:10.1.2.3": "10.1.2.3",
        "10.1.2.3:80": "10.1.2.3",
        "garbage": f"unreadable-via-{PROXY}",
        "unknown": f"unreadable-via-{PROXY}",
    }
    try:
        transport = httpx.AsyncHTTPTransport(local_address=PROXY)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as http:
            for hop in sent:
                body = json.dumps(seed_event())
                response = await http.post(WEBHOOK, content=body, headers=_forwarded(hop))
                assert response.status_code == 200, response.text
    finally:
        process.stop()

    counted: dict[str, int] = {}
    for key in await redis_client.keys(f"{RATE_LIMIT_KEYS}:*"):
        bucket = key.removeprefix(f"{RATE_LIMIT_KEYS}:").rsplit(":", 1)[0]  # then the minute
        counted[bucket] = counted.get(bucket, 0) + int(await redis_client.get(key))
    assert counted == {
        "2001:db8:1:2::/64": 2,
        "2001:db8:1:3::/64": 1,
        "10.1.2.3": 2,
        f"unreadable-via-{PROXY}": 2,
    }


async def test_x_forwarded_for_is_not_believed_from_a_loopback_peer_outside_trusted_proxies(
    log_dir: Path, db: asyncpg.Connection
) -> None:
    # uvicorn believed X-Forwarded-For from any loopback peer, whatever TRUSTED_PROXIES said.
    env = service_env(WEBHOOK_ALLOWED_CIDRS="10.0.0.0/8")
    process, base_url = start_api(env, log_dir, "api-no-trusted-proxy")
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post(
                WEBHOOK, content=json.dumps(seed_event()), headers=_forwarded("10.1.2.3")
            )
    finally:
        process.stop()

    assert response.status_code == 403, response.text
    assert await stored(db) == 0


async def test_bad_input_before_authentication_gets_4xx_and_logs_no_traceback(
    log_dir: Path, db: asyncpg.Connection, redis_client: redis.Redis
) -> None:
    # Each of these was a 500 with a traceback in the log (issue item 7).
    env = service_env(
        WEBHOOK_SECRETS=SECRET, SNS_TOPIC_ARNS=TOPIC_ARN, TRUSTED_PROXIES="127.0.0.1/32"
    )
    process, base_url = start_api(env, log_dir, "api-bad-input")
    signer = SnsSigner()
    body = json.dumps(seed_event()).encode()
    json_type = {"content-type": "application/json"}
    sns_type = {"content-type": "text/plain", "x-amz-sns-message-type": "Notification"}

    def sns(**changes: str) -> bytes:
        message = signer.message(message=seed_event(), cert_url=changes.pop("cert_url", CERT_URL))
        return json.dumps({**message, **changes}).encode()

    requests: list[tuple[str, bytes, dict[str, str | bytes]]] = [
        (WEBHOOK, b"[" * 100_000, json_type),
        (REGISTER, b"[" * 100_000, json_type),
        (REGISTER, with_asset_details_nested(400), json_type),
        (WEBHOOK, body, {**signed_headers(body), "webhook-signature": b"v1,\xff"}),
        (WEBHOOK, body, {**signed_headers(body), "webhook-timestamp": b"1" + b"0" * 400}),
        (WEBHOOK, body, {**json_type, "x-forwarded-for": "garbage, [::1"}),
        (WEBHOOK, sns(cert_url=CERT_URL.replace(".com/", ".com:99999/")), sns_type),
        (WEBHOOK, sns(cert_url=CERT_URL.replace("Simple", "Simple\t")), sns_type),
        (WEBHOOK, sns(Signature="\u00e9" * 344), sns_type),
        # Found by the second review: bytes that are not UTF-8 inside a JSON string.
        (WEBHOOK, b'{"event_id": "\xff"}', json_type),
        (REGISTER, b'{"name": "\xff"}', json_type),
    ]
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            statuses = [
                (await http.post(path, content=content, headers=headers)).status_code
                for path, content, headers in requests
            ]
    finally:
        process.stop()

    assert statuses == [400, 400, 400, 401, 401, 401, 401, 401, 401, 400, 400]
    log = process.log_text()
    assert "Traceback" not in log
    assert "unhandled error" not in log
    await assert_nothing_stored(db, redis_client)


async def test_postgres_down_gets_503_never_2xx(log_dir: Path) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/marketdb_test"
    process, base_url = start_api(service_env(DATABASE_URL=closed), log_dir, "api-webhook-no-pg")
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post(WEBHOOK, json=seed_event())
    finally:
        process.stop()

    assert response.status_code == 503
    assert response.headers["retry-after"]


async def test_redis_stopped_the_webhook_still_accepts_and_the_decision_is_applied_later(
    flow: Flow,
) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer()
    [market] = await flow.register_markets(api, 1)

    flow.redis_server.stop()
    async with httpx.AsyncClient(base_url=api) as http:
        response = await http.post(WEBHOOK, json=seed_event(market["id"]))
    assert response.json()["status"] == "accepted"
    flow.redis_server.start()

    async def active() -> bool:
        status = await flow.db.fetchval(
            "SELECT status FROM markets WHERE id = $1", uuid.UUID(market["id"])
        )
        return bool(status == "active")

    await wait_until(active, 60, "the decision applied once Redis is back")
    assert await flow.db.fetchval("SELECT count(*) FROM market_approval_events") == 1


async def test_the_seed_flow_register_approve_by_webhook_market_active(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer()
    async with httpx.AsyncClient(base_url=api) as http:
        market = (await http.post(REGISTER, json=seed_body())).json()["market"]
        assert market["status"] == "pending_approval"
        event = seed_event(market["id"])
        assert (await http.post(WEBHOOK, json=event)).json()["status"] == "accepted"

        async def active() -> bool:
            body = (await http.get(f"/api/v1/markets/{market['id']}")).json()
            return bool(body["market"]["status"] == "active")

        await wait_until(active, 60, "the market to become active")
        assert (await http.post(WEBHOOK, json=event)).json()["status"] == "already_processed"


async def test_a_nul_character_gets_400_not_a_server_error(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = seed_event()
    event["payload"]["reason"] = "\x00"

    response = await client.post(WEBHOOK, json=event)

    assert response.status_code == 400
    assert "NUL" in response.json()["errors"][0]["reason"]
    assert await stored(db) == 0


async def test_decisions_accepted_before_entity_id_and_actor_id_were_required_are_applied(
    flow: Flow,
) -> None:
    # Written to the outbox as the webhook accepted them under the looser rule: answered
    # 200 then, so they must still be applied, neither refused nor a crash-looping consumer.
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer()
    [no_entity, no_context] = [m["id"] for m in await flow.register_markets(api, 2)]
    legacy = [
        new_event(
            event_id=f"legacy-{market_id}",
            event_type=Decided.APPROVED,
            source="entity_permissions_core",
            aggregate_type="market",
            aggregate_id=market_id,
            payload={"market_id": market_id, "decision": "approved"},
            context=context,
        )
        for market_id, context in ((no_entity, {"actor_id": "admin-1"}), (no_context, {}))
    ]
    await flow.enqueue_decisions(legacy)

    async def applied() -> bool:
        rows = await flow.db.fetch("SELECT status, decided_by FROM markets ORDER BY decided_by")
        return [tuple(row) for row in rows] == [("active", "admin-1"), ("active", None)]

    await wait_until(applied, 60, "both legacy decisions applied")
    assert consumer.process.poll() is None
