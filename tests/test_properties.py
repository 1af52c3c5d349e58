"""Hypothesis properties of the register and webhook bodies and headers.

Whatever the API accepts it stores exactly; whatever it refuses gets a 4xx naming the
fields and leaves no row behind: bodies of any shape, nested past the 32-level limit,
header values of any bytes and numbers of any size, SNS certificate URLs of any
spelling. Against the running API, but for SNS, whose certificates the test signs
(in-process, as in test_webhook_sns), and the functions that read headers and URLs,
given any text at all. Derandomised, with no example database: CI repeats the same
examples every run.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.json_limits import MAX_NESTING, cap_nesting, nesting_depth
from app.markets.events import Announced
from app.validation import RequestValidationError, decode_json
from app.webhooks import standard
from app.webhooks.guard import SourceGuard
from app.webhooks.sns import SnsVerifier, check_certificate_url
from tests.conftest import service_env
from tests.support.api_fuzz import send_raw
from tests.support.json_strategies import (
    NOW,
    hostile_values,
    huge_numbers,
    json_value,
    json_values,
    nested_too_deep,
    poisoned,
    register_bodies,
    spoilt,
    webhook_events,
    webhook_headers,
)
from tests.support.markets import REGISTER, seed_body
from tests.support.processes import start_api
from tests.support.sns import TOPIC_ARN, TOPIC_ARNS, SnsSigner, serving
from tests.support.sns import post as post_sns
from tests.support.storage import row_counts
from tests.support.webhooks import SECRET, WEBHOOK, seed_event

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


async def assert_stored_as_sent(
    db: asyncpg.Connection, body: dict[str, Any], market_id: str, before: dict[str, int]
) -> None:
    """One market, its asset and its two outbox events, each holding the body's values."""
    assert await row_counts(db) == {
        **before,
        "markets": before["markets"] + 1,
        "outbox": before["outbox"] + 2,
    }
    market = await db.fetchrow(
        "SELECT name, issuer_id, entity_id, status FROM markets WHERE id = $1",
        uuid.UUID(market_id),
    )
    assert market is not None
    assert dict(market) == {
        "name": body["name"],
        "issuer_id": uuid.UUID(body["issuerId"]),
        "entity_id": uuid.UUID(body["entityId"]),
        "status": "pending_approval",
    }
    [asset] = await db.fetch("SELECT * FROM assets WHERE market_id = $1", uuid.UUID(market_id))
    assert (asset["asset_type"], asset["token_symbol"], asset["token_name"]) == (
        body["assetType"],
        body["tokenSymbol"],
        body["tokenName"],
    )
    assert asset["total_supply"] == int(body["totalSupply"])
    assert json_value(asset["asset_details"]) == json_value(body.get("assetDetails", {}))
    events = await db.fetch(
        "SELECT stream, event_type, payload FROM outbox WHERE aggregate_id = $1 ORDER BY id",
        market_id,
    )
    assert [(e["stream"], e["event_type"]) for e in events] == [
        ("markets:events", Announced.REGISTERED),
        ("markets:events", Announced.APPROVAL_REQUESTED),
    ]
    registered, requested = (json_value(e["payload"]) for e in events)
    assert registered["market"]["name"] == body["name"]
    assert registered["asset"]["token_name"] == body["tokenName"]
    assert registered["asset"]["total_supply"] == str(int(body["totalSupply"]))
    assert registered["asset"]["asset_details"] == json_value(body.get("assetDetails", {}))
    assert requested == {
        **requested,
        "market_id": market_id,
        "entity_id": str(uuid.UUID(body["entityId"])),
        "issuer_id": str(uuid.UUID(body["issuerId"])),
        "market_name": body["name"],
        "token_symbol": body["tokenSymbol"],
    }


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


# Spoilt, and valid all the same: the generated ones seldom are, and the 201 branch
# must run every time.
SPOILT_BUT_VALID = [
    {k: v for k, v in seed_body().items() if k != "assetDetails"},
    seed_body(name="\u202e\u0301 \U0001f600\t", totalSupply=str(2**256 - 1)),
    seed_body(assetDetails={"": [None, True, -1.5e300, {"\u2028": "\ud7ff"}]}),
]


@repeatable
@given(body=spoilt(register_bodies) | poisoned(register_bodies) | hostile_values)
@example(body=SPOILT_BUT_VALID[0])
@example(body=SPOILT_BUT_VALID[1])
@example(body=SPOILT_BUT_VALID[2])
async def test_any_register_body_refused_names_its_fields_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: Any
) -> None:
    before = await row_counts(db)

    response = await client.post(
        REGISTER, content=_raw(body), headers={"content-type": "application/json"}
    )

    if response.status_code == 201:  # a spoilt field can still be valid: stored as sent
        await assert_stored_as_sent(db, body, response.json()["market"]["id"], before)
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
    # Examples may share an event_id: an earlier one accepted would make this one's
    # differing copy a 409, rightly.
    await db.execute("TRUNCATE outbox, processed_events")
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


def assert_refused_for_nesting(response: httpx.Response, field: str = "body") -> None:
    assert response.status_code == 400, response.text[:500]
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert f"{MAX_NESTING} levels" in error["reason"]


@repeatable
@given(body=nested_too_deep(register_bodies))
async def test_any_register_body_nested_past_the_limit_gets_400_naming_it(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    # Examples may share an event_id: an earlier one accepted would make this one's
    # differing copy a 409, rightly.
    await db.execute("TRUNCATE outbox, processed_events")
    before = await row_counts(db)

    response = await client.post(
        REGISTER, content=body, headers={"content-type": "application/json"}
    )

    assert_refused_for_nesting(response)
    assert await row_counts(db) == before


@repeatable
@given(body=nested_too_deep(webhook_events | spoilt(webhook_events)))
async def test_any_webhook_body_nested_past_the_limit_gets_400_naming_it(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    # Examples may share an event_id: an earlier one accepted would make this one's
    # differing copy a 409, rightly.
    await db.execute("TRUNCATE outbox, processed_events")
    before = await row_counts(db)

    response = await client.post(
        WEBHOOK, content=body, headers={"content-type": "application/json"}
    )

    assert_refused_for_nesting(response)
    assert await row_counts(db) == before


@pytest.fixture(scope="module")
def guarded_api(log_dir: Path) -> Iterator[str]:
    """Signed, SNS topic set, the tests' loopback address a trusted proxy: every header the
    webhook reads is read."""
    env = service_env(
        WEBHOOK_SECRETS=SECRET, SNS_TOPIC_ARNS=TOPIC_ARN, TRUSTED_PROXIES="127.0.0.1/32"
    )
    process, base_url = start_api(env, log_dir, "api-guarded")
    try:
        yield base_url
    finally:
        process.stop()


def _on_the_wire(headers: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    stamp = str(int(time.time())).encode()
    sent = {"content-type": b"application/json", **headers}
    return [(name.encode(), value.replace(NOW, stamp)) for name, value in sent.items()]


@settings(repeatable, max_examples=150)
@given(headers=webhook_headers)
async def test_any_webhook_header_values_get_a_4xx_and_store_nothing(
    guarded_api: str, db: asyncpg.Connection, headers: dict[str, bytes]
) -> None:
    # Any byte but CR and LF, huge numbers, beside well-formed values of the headers read
    # before them. No signature is valid: nothing may be accepted. Control bytes are
    # refused by the HTTP parser (a plain-text 400); the rest reaches the app.
    before = await row_counts(db)

    response = await send_raw(
        guarded_api, WEBHOOK, _on_the_wire(headers), json.dumps(seed_event()).encode()
    )

    assert response.status in (400, 401, 415), (response.status, response.body[:300])
    assert await row_counts(db) == before


@pytest.fixture
async def sns_api(db: asyncpg.Connection) -> AsyncIterator[tuple[httpx.AsyncClient, SnsSigner]]:
    """The API in-process, with a verifier whose certificates are the test's own."""
    signer = SnsSigner()
    async with serving(SnsVerifier(TOPIC_ARNS, fetcher=signer.fetch)) as client:
        yield client, signer


_SNS_HOST = "sns.eu-west-1.amazonaws.com"
# What a hostile sender might put anywhere in a URL.
_URL_NOISE = st.sampled_from(
    ["", "\t", "\n", "\r\n", " ", "\x7f", "\u3002", "@evil.example", "#x", "?x=1", "\\", "[", "%2e"]
)
_URL_HOSTS = st.sampled_from(
    [
        _SNS_HOST,
        _SNS_HOST.upper(),
        "sns.s3.amazonaws.com",
        "sns.s3-us-west-2.amazonaws.com",
        "sns.us-east-1.amazonaws.com",
        f"{_SNS_HOST}.evil.example",
        f"{_SNS_HOST}.",
        "[::1]",
        "54.239.0.1",
    ]
) | st.text(max_size=12)
_URL_PORTS = st.sampled_from(["", ":", ":443", ":0443", ":99999", ":-1", ":4\u0664\u0663"]) | (
    st.integers(0, 10**30).map(lambda port: f":{port}")
)
_URL_PATHS = st.sampled_from(
    ["/SimpleNotificationService-0123456789abcdef.pem", "/", "/SimpleNotificationService-.pem"]
) | st.text(max_size=12).map(lambda text: "/" + text)


@st.composite
def certificate_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "HTTPS", "http", ""]))
    url = f"{scheme}://{draw(_URL_HOSTS)}{draw(_URL_PORTS)}{draw(_URL_PATHS)}"
    at = draw(st.integers(0, len(url)))
    return url[:at] + draw(_URL_NOISE) + url[at:]


_FETCHABLE = re.compile(
    rf"https://{re.escape(_SNS_HOST)}/SimpleNotificationService-[A-Za-z0-9]+\.pem"
)


@repeatable
@given(url=certificate_urls())
async def test_any_certificate_url_gets_an_answer_not_a_500_and_only_sns_is_fetched(
    sns_api: tuple[httpx.AsyncClient, SnsSigner], url: str
) -> None:
    client, signer = sns_api

    response = await post_sns(client, signer.message(message=seed_event(), cert_url=url))

    # 400: NUL in a field; 200: a spelling of the topic's SNS certificate URL.
    assert response.status_code in (200, 400, 401), response.text
    assert all(_FETCHABLE.fullmatch(fetched) for fetched in signer.fetched), signer.fetched


@repeatable
@given(
    inner=nested_too_deep(
        webhook_events, depths=st.sampled_from([MAX_NESTING + 1, 400, 5_000, 20_000])
    )
)
async def test_any_sns_message_nested_past_the_limit_gets_400_naming_it(
    sns_api: tuple[httpx.AsyncClient, SnsSigner], db: asyncpg.Connection, inner: bytes
) -> None:
    client, signer = sns_api
    before = await row_counts(db)

    response = await post_sns(client, signer.message(message=inner.decode()))

    assert_refused_for_nesting(response, field="Message")
    assert await row_counts(db) == before


# The functions that read what a client sends, given any text at all (lone surrogates and
# control characters included, which no HTTP parser lets through): each answers with its
# own refusal, never another exception.
quick = settings(repeatable, max_examples=500)
_ANY_TEXT = st.text() | st.text(st.characters(codec="latin-1")) | st.just(NOW.decode())


@quick
@given(
    headers=st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
        _ANY_TEXT | huge_numbers.map(bytes.decode) | _ANY_TEXT.map("v1,".__add__),
    )
)
def test_the_signature_check_of_any_headers_raises_only_signature_error(
    headers: dict[str, str],
) -> None:
    now = str(int(time.time()))
    sent = {name: value.replace(NOW.decode(), now) for name, value in headers.items()}
    with contextlib.suppress(standard.SignatureError):
        standard.verify([SECRET], sent, b"{}")


@quick
@given(peer=_ANY_TEXT | st.just("10.0.0.2"), lines=st.lists(_ANY_TEXT, max_size=4))
def test_the_guard_reads_any_forwarded_for_without_raising(peer: str, lines: list[str]) -> None:
    guard = SourceGuard(["10.0.0.0/8"], ["10.0.0.0/8"])

    caller = guard.identify(peer, lines)

    assert caller.rate_key
    assert guard.allows(caller) in (True, False)


@quick
@given(url=certificate_urls() | _ANY_TEXT)
def test_a_certificate_url_of_any_text_is_refused_or_spelled_one_way(url: str) -> None:
    try:
        canonical = check_certificate_url(url, TOPIC_ARN)
    except standard.SignatureError:
        return
    assert _FETCHABLE.fullmatch(canonical), canonical


@quick
@given(raw=st.binary() | nested_too_deep(st.just({"a": 1})) | st.just(b"[" * 100_000))
def test_decoding_any_bytes_gives_a_document_or_a_400(raw: bytes) -> None:
    try:
        decode_json(raw)
    except RequestValidationError as refused:
        assert [error.field for error in refused.errors] == ["body"]


def test_an_unterminated_string_hides_every_bracket_after_it() -> None:
    # Brackets after a string that never closes are not counted: the decoder stops there.
    # A pattern that could not match such a string was retried from every quote in it,
    # quadratic: 80 KB of \" took 40 s (a 256 KiB body, minutes of the event loop).
    raw = b"[" * (MAX_NESTING + 1) + b'"' + b'\\"' * 100 + b"[" * 100

    assert nesting_depth(raw) == MAX_NESTING + 1
    assert nesting_depth(b'["a\\') == 1  # a lone backslash at the end
    assert nesting_depth(b'[["]]"]]') == 2  # brackets inside a string never count


@quick
@given(document=json_values)
def test_nesting_depth_of_any_json_document_is_its_depth(document: Any) -> None:
    def depth(value: Any) -> int:
        children = value.values() if isinstance(value, dict) else value
        if not isinstance(value, dict | list):
            return 0
        return 1 + max((depth(child) for child in children), default=0)

    assert nesting_depth(json.dumps(document).encode()) == depth(document)


@quick
@given(
    raw=st.binary()
    | nested_too_deep(webhook_events)
    | st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b'[{"a": [' + b"[" * 5_000 + b"]]}"])
)
def test_cap_nesting_of_any_text_leaves_the_decoder_nothing_to_recurse_into(raw: bytes) -> None:
    # A feed page is capped, then decoded: whatever it held, the decoder answers with a
    # document or DecodeError, never RecursionError (100,000 unclosed [ used to pass as is).
    capped, _ = cap_nesting(raw, MAX_NESTING)

    with contextlib.suppress(msgspec.DecodeError):
        msgspec.json.decode(capped)
