"""Development's one exception to signed webhooks: an unsigned direct request from this
machine (the README's curls under `make run`) is accepted, with a warning each time.

Signed everywhere else: in test and production, from another address, through a proxy
or a tunnel, and whenever the request carries any signature header at all.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from app.webhooks import standard
from app.webhooks.controller import WebhookReceiver
from app.webhooks.guard import RateLimiter, SourceGuard, from_this_machine
from app.webhooks.sns import SnsVerifier
from tests.conftest import service_env
from tests.support.processes import ManagedProcess, free_port
from tests.support.storage import assert_nothing_stored

WEBHOOK = "/api/v1/webhooks/entity-permissions"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN_TOKEN = "an-admin-token-of-at-least-32-characters"
WARNING = "unsigned webhook accepted: development, loopback only"
JSON = {"content-type": "application/json"}


def decision(event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": event_id or f"dev-{uuid.uuid4()}",
            "event_type": "market.approved",
            "source": "entity_permissions_core",
            "payload": {
                "market_id": str(uuid.uuid4()),
                "entity_id": "9b2f7c1e-2222-4a5b-8c9d-0123456789ab",
                "decision": "approved",
            },
            "context": {"actor_id": "admin-uuid"},
        }
    ).encode()


@pytest.mark.parametrize(
    ("peer", "headers", "local"),
    [
        ("127.0.0.1", {}, True),
        ("127.0.0.53", {}, True),
        ("::1", {}, True),
        ("::ffff:127.0.0.1", {}, True),
        ("192.0.2.7", {}, False),
        ("10.0.0.5", {}, False),
        ("::ffff:10.0.0.5", {}, False),
        (None, {}, False),
        ("", {}, False),
        ("testclient", {}, False),
        # A local proxy or tunnel connects from loopback on behalf of anyone.
        ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}, False),
        ("127.0.0.1", {"x-forwarded-for": "127.0.0.1"}, False),
        ("127.0.0.1", {"forwarded": "for=203.0.113.9"}, False),
        ("127.0.0.1", {"x-real-ip": "203.0.113.9"}, False),
        ("127.0.0.1", {"x-forwarded-host": "abc.tunnel.example"}, False),
        ("127.0.0.1", {"via": "1.1 proxy"}, False),
        # X-Forwarded-For never makes a remote peer local.
        ("192.0.2.7", {"x-forwarded-for": "127.0.0.1"}, False),
    ],
)
def test_from_this_machine_means_a_loopback_peer_that_no_proxy_forwarded(
    peer: str | None, headers: dict[str, str], local: bool
) -> None:
    assert from_this_machine(peer, headers) is local


def receiver(*, development: bool) -> WebhookReceiver:
    return WebhookReceiver(
        secrets=(SECRET,),
        production=False,
        development=development,
        sns=SnsVerifier(()),
        guard=SourceGuard((), ()),
        limiter=RateLimiter(redis.Redis(), 1),  # never asked: admit() is not called here
    )


@pytest.mark.parametrize(
    ("development", "headers", "peer", "accepted"),
    [
        (True, JSON, "127.0.0.1", True),
        (True, JSON, "192.0.2.7", False),
        (False, JSON, "127.0.0.1", False),  # test and production
        (True, {**JSON, "webhook-id": "msg_1"}, "127.0.0.1", False),
        (True, {**JSON, "webhook-timestamp": "1"}, "127.0.0.1", False),
        (True, {**JSON, "webhook-signature": ""}, "127.0.0.1", False),
    ],
)
def test_only_development_waves_through_unsigned_and_only_from_this_machine(
    development: bool, headers: dict[str, str], peer: str, accepted: bool
) -> None:
    assert receiver(development=development).accepts_unsigned(headers, peer) is accepted
    if not accepted:
        with pytest.raises(standard.SignatureError):
            receiver(development=development).authenticate_direct(headers, decision(), peer)


def start(app_env: str, log_dir: Path, host: str = "127.0.0.1") -> tuple[ManagedProcess, str]:
    port = free_port()
    env = service_env(
        APP_ENV=app_env,
        WEBHOOK_SECRETS=SECRET,
        ADMIN_TOKEN=ADMIN_TOKEN,
        HTTP_HOST=host,
        HTTP_PORT=str(port),
    )
    process = ManagedProcess(f"api-webhook-{app_env}-{host}", ["-m", "app"], env, log_dir)
    base_url = f"http://{host}:{port}"
    process.wait_http_ok(f"{base_url}/health")
    return process, base_url


@pytest.fixture(scope="module")
def development_api(log_dir: Path) -> Iterator[tuple[ManagedProcess, str]]:
    process, base_url = start("development", log_dir)
    yield process, base_url
    process.stop()


async def test_development_accepts_unsigned_from_loopback_with_a_warning_per_request(
    development_api: tuple[ManagedProcess, str], db: asyncpg.Connection
) -> None:
    process, base_url = development_api
    before = process.log_text().count(WARNING)
    offset = len(process.log_text())
    event_id = f"dev-{uuid.uuid4()}"
    body = decision(event_id)
    async with httpx.AsyncClient(base_url=base_url) as http:
        first = await http.post(WEBHOOK, content=body, headers=JSON)
        again = await http.post(WEBHOOK, content=body, headers=JSON)

    assert first.status_code == 200, first.text
    assert first.json() == {"status": "accepted", "event_id": event_id}
    assert again.json() == {"status": "already_processed", "event_id": event_id}
    stored = await db.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", event_id)
    assert stored == 1
    # One warning per request, each written before its answer.
    process.wait_for_log(WARNING, after=process.wait_for_log(WARNING, after=offset))
    assert process.log_text().count(WARNING) == before + 2, process.log_tail()


def forged(body: bytes) -> dict[str, dict[str, str]]:
    stamp = int(time.time())
    return {
        "a wrong signature": {
            **JSON,
            "webhook-id": "msg_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": standard.sign("whsec_d3Jvbmctc2VjcmV0", "msg_1", stamp, body),
        },
        "one signature header only": {**JSON, "webhook-id": "msg_1"},
        "an empty signature header": {**JSON, "webhook-signature": ""},
        "through a tunnel": {**JSON, "x-forwarded-for": "203.0.113.9"},
        "through a proxy": {**JSON, "forwarded": "for=203.0.113.9"},
    }


@pytest.mark.parametrize(
    "forgery",
    [
        "a wrong signature",
        "one signature header only",
        "an empty signature header",
        "through a tunnel",
        "through a proxy",
    ],
)
async def test_development_still_refuses_a_bad_signature_and_a_forwarded_request(
    development_api: tuple[ManagedProcess, str],
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    forgery: str,
) -> None:
    _, base_url = development_api
    body = decision()
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(WEBHOOK, content=body, headers=forged(body)[forgery])

    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["field"] == "signature"
    await assert_nothing_stored(db, redis_client)


async def test_development_still_accepts_a_good_signature(
    development_api: tuple[ManagedProcess, str], db: asyncpg.Connection
) -> None:
    process, base_url = development_api
    before = process.log_text().count(WARNING)
    body = decision()
    stamp = int(time.time())
    headers = {
        **JSON,
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": standard.sign(SECRET, "msg_1", stamp, body),
    }
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(WEBHOOK, content=body, headers=headers)

    assert response.json()["status"] == "accepted", response.text
    assert process.log_text().count(WARNING) == before  # signed: nothing to warn about


@pytest.mark.parametrize("app_env", ["test", "production"])
async def test_test_and_production_refuse_unsigned_even_from_loopback(
    log_dir: Path, db: asyncpg.Connection, redis_client: redis.Redis, app_env: str
) -> None:
    process, base_url = start(app_env, log_dir)
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post(WEBHOOK, content=decision(), headers=JSON)
    finally:
        process.stop()

    assert response.status_code == 401, response.text
    await assert_nothing_stored(db, redis_client)
    assert WARNING not in process.log_text()


def this_machines_address() -> str | None:
    """An address of this machine other than loopback, when it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only a route is chosen
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_development_refuses_unsigned_from_another_address(
    log_dir: Path, db: asyncpg.Connection, redis_client: redis.Redis
) -> None:
    address = this_machines_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    process, base_url = start("development", log_dir, host=address)
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post(WEBHOOK, content=decision(), headers=JSON)
            details: Any = response.json()
    finally:
        process.stop()

    assert response.status_code == 401, response.text
    assert details["errors"][0]["field"] == "signature"
    await assert_nothing_stored(db, redis_client)
