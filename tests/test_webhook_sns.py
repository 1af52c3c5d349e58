"""SNS deliveries, signed in the test with a key and certificate of its own.

The API runs in-process here so that its certificate fetcher can be the test's; every
other rule of the verifier (URLs, topics, age, signature) is the production one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as redis

from app.json_limits import MAX_NESTING
from app.webhooks.sns import (
    MAX_CACHED_CERTIFICATES,
    MAX_CERTIFICATE_BYTES,
    CertificateDownloader,
    CertificateFetcher,
    SnsMessage,
    SnsVerifier,
    visit_subscribe_url,
)
from tests.support.json_strategies import nested_json
from tests.support.outbox import wait_until
from tests.support.processes import free_port
from tests.support.sns import (
    CERT_URL,
    CHINA_TOPIC_ARN,
    GOV_TOPIC_ARN,
    OTHER_REGION_TOPIC_ARN,
    TOPIC_ARNS,
    CertificateServer,
    SnsSigner,
    ToLocalServer,
    post,
    serving,
)
from tests.support.storage import assert_nothing_stored
from tests.support.webhooks import WEBHOOK, seed_event, stored

PEM_PATH = "/SimpleNotificationService-0123456789abcdef.pem"


@pytest.fixture
def signer() -> SnsSigner:
    return SnsSigner()


@pytest.fixture
def confirmed() -> list[str]:
    return []


@pytest.fixture
def verifier(signer: SnsSigner, confirmed: list[str]) -> SnsVerifier:
    async def confirm(url: str) -> None:
        confirmed.append(url)

    return SnsVerifier(TOPIC_ARNS, fetcher=signer.fetch, confirm=confirm)


@pytest.fixture
async def sns_client(
    verifier: SnsVerifier, db: asyncpg.Connection
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(verifier) as client:
        yield client


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_signed_notification_is_accepted_once(
    sns_client: httpx.AsyncClient, signer: SnsSigner, db: asyncpg.Connection, version: str
) -> None:
    event = seed_event()
    message = signer.message(message=event, version=version)

    first = await post(sns_client, message)
    again = await post(sns_client, message)

    assert first.json() == {"status": "accepted", "event_id": event["event_id"]}
    assert again.json()["status"] == "already_processed"
    assert await stored(db) == 1
    assert signer.fetched == [CERT_URL]  # fetched once, then cached


async def test_without_an_inner_event_id_the_message_id_deduplicates(
    sns_client: httpx.AsyncClient, signer: SnsSigner, db: asyncpg.Connection
) -> None:
    event = seed_event()
    del event["event_id"]
    message = signer.message(message=event, MessageId="sns-msg-1")

    first = await post(sns_client, message)
    # SNS redelivers a message it is unsure was taken, under the same MessageId.
    again = await post(sns_client, message)

    assert first.json() == {"status": "accepted", "event_id": "sns-msg-1"}
    assert again.json() == {"status": "already_processed", "event_id": "sns-msg-1"}
    rows = await db.fetch("SELECT event_id FROM outbox WHERE stream = 'entity-permissions:events'")
    assert [r["event_id"] for r in rows] == ["sns-msg-1"]


def _tampered(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "Message": message["Message"].replace("approved", "rejected", 1)}


@pytest.mark.parametrize(
    ("attack", "build"),
    [
        ("tampered message", lambda s: _tampered(s.message(message=seed_event()))),
        (
            "signature of another message",
            lambda s: {
                **s.message(message=seed_event()),
                "Signature": s.message(message=seed_event())["Signature"],
            },
        ),
        (
            "wrong topic",
            lambda s: s.message(
                message=seed_event(), topic_arn="arn:aws:sns:eu-west-1:123456789012:other"
            ),
        ),
        (
            "old timestamp",
            lambda s: s.message(
                message=seed_event(), timestamp=datetime.now(UTC) - timedelta(hours=1, minutes=1)
            ),
        ),
        (
            "timestamp in the future",
            lambda s: s.message(
                message=seed_event(), timestamp=datetime.now(UTC) + timedelta(minutes=6)
            ),
        ),
        ("unknown signature version", lambda s: s.message(message=seed_event(), version="3")),
        (
            "signature not ASCII",
            lambda s: {**s.message(message=seed_event()), "Signature": "\u00e9" * 344},
        ),
        ("signature not base64", lambda s: {**s.message(message=seed_event()), "Signature": "!"}),
    ],
)
async def test_forged_or_stale_sns_messages_get_401_and_store_nothing(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    attack: str,
    build: Any,
) -> None:
    response = await post(sns_client, build(signer))

    assert response.status_code == 401, (attack, response.text)
    await assert_nothing_stored(db, redis_client)


@pytest.mark.parametrize(
    "cert_url",
    [
        CERT_URL.replace("https", "http"),  # over http
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/SimpleNotificationService-1.pem",
        "https://s3.amazonaws.com/SimpleNotificationService-1.pem",  # an S3 host
        "https://evil.s3.amazonaws.com/SimpleNotificationService-1.pem",
        CERT_URL + "?x=1",  # with a query string
        CERT_URL + "#x",
        "https://sns.eu-west-1.amazonaws.com/evil/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem.evil",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
        "https://127.0.0.1/SimpleNotificationService-1.pem",
    ],
)
async def test_a_certificate_url_off_sns_is_never_fetched_and_nothing_is_stored(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    cert_url: str,
) -> None:
    response = await post(sns_client, signer.message(message=seed_event(), cert_url=cert_url))

    assert response.status_code == 401
    assert signer.fetched == []
    await assert_nothing_stored(db, redis_client)


@pytest.mark.parametrize(
    "cert_url",
    [
        # S3 virtual hosts of a bucket named "sns", which anyone may own
        f"https://sns.s3.amazonaws.com{PEM_PATH}",
        f"https://sns.s3-us-west-2.amazonaws.com{PEM_PATH}",
        f"https://sns.s3-external-1.amazonaws.com{PEM_PATH}",
        f"https://sns.s3-accelerate.amazonaws.com{PEM_PATH}",
        f"https://sns.s3.eu-west-1.amazonaws.com{PEM_PATH}",
        f"https://SNS.S3.AMAZONAWS.COM{PEM_PATH}",
        f"https://SNS.S3-US-WEST-2.AMAZONAWS.COM{PEM_PATH}",
        # look-alikes
        f"https://sns.eu-west-1.amazonaws.com.evil.example{PEM_PATH}",
        f"https://xsns.eu-west-1.amazonaws.com{PEM_PATH}",
        f"https://sns-eu-west-1.amazonaws.com{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com.{PEM_PATH}",
        f"https://SNS.EU-WEST-1.AMAZONAWS.COM.EVIL.EXAMPLE{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com%2eevil.example{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com\\@evil.example{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com\u3002evil.example{PEM_PATH}",
        f"https://54.239.0.1{PEM_PATH}",
        f"https://[2600:1f18::1]{PEM_PATH}",
        # a real SNS host, but not the one of the message's topic
        f"https://sns.us-east-1.amazonaws.com{PEM_PATH}",
        f"https://sns.eu-west-2.amazonaws.com{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com.cn{PEM_PATH}",
        f"https://sns.cn-north-1.amazonaws.com.cn{PEM_PATH}",
    ],
)
async def test_sns_certificate_host_must_be_the_sns_endpoint_of_the_topics_region(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    cert_url: str,
) -> None:
    response = await post(sns_client, signer.message(message=seed_event(), cert_url=cert_url))

    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["field"] == "signature"
    assert signer.fetched == []
    await assert_nothing_stored(db, redis_client)


@pytest.mark.parametrize(
    ("topic_arn", "cert_url"),
    [
        (CHINA_TOPIC_ARN, f"https://sns.cn-north-1.amazonaws.com.cn{PEM_PATH}"),
        (GOV_TOPIC_ARN, f"https://sns.us-gov-west-1.amazonaws.com{PEM_PATH}"),
        (OTHER_REGION_TOPIC_ARN, f"https://sns.us-east-1.amazonaws.com{PEM_PATH}"),
    ],
)
async def test_sns_certificate_host_of_each_partitions_region_is_accepted(
    sns_client: httpx.AsyncClient, signer: SnsSigner, topic_arn: str, cert_url: str
) -> None:
    message = signer.message(message=seed_event(), topic_arn=topic_arn, cert_url=cert_url)

    response = await post(sns_client, message)

    assert response.json().get("status") == "accepted", response.text
    assert signer.fetched == [cert_url]


@pytest.mark.parametrize(
    ("topic_arn", "cert_url"),
    [
        (CHINA_TOPIC_ARN, f"https://sns.cn-north-1.amazonaws.com{PEM_PATH}"),
        (GOV_TOPIC_ARN, f"https://sns.us-gov-west-1.amazonaws.com.cn{PEM_PATH}"),
    ],
)
async def test_sns_certificate_host_of_another_partition_is_refused(
    sns_client: httpx.AsyncClient, signer: SnsSigner, topic_arn: str, cert_url: str
) -> None:
    message = signer.message(message=seed_event(), topic_arn=topic_arn, cert_url=cert_url)

    response = await post(sns_client, message)

    assert response.status_code == 401, response.text
    assert signer.fetched == []


@pytest.mark.parametrize(
    "cert_url",
    [
        f"https://sns.eu-west-1.amazonaws.com:99999{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com:-443{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com:4\u0664\u0663{PEM_PATH}",
        f"https://[sns.eu-west-1.amazonaws.com{PEM_PATH}",
        "https://sns.eu-west-1.amazonaws.com/Simple\tNotificationService-0123456789abcdef.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotification\r\nService-0123456789abcdef.pem",
        f"https://sns.eu-west-1.amazonaws.com\t{PEM_PATH}",
        f" https://sns.eu-west-1.amazonaws.com{PEM_PATH}",
        f"https://sns.eu-west-1.amazonaws.com{PEM_PATH}\x7f",
        f"https://sns.eu-west-1.amazonaws.com/{'a' * 5000}.pem",
        "",
    ],
)
async def test_bad_input_a_certificate_url_that_breaks_url_parsers_gets_401_never_500(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    cert_url: str,
) -> None:
    response = await post(sns_client, signer.message(message=seed_event(), cert_url=cert_url))

    assert response.status_code == 401, response.text
    assert signer.fetched == []
    await assert_nothing_stored(db, redis_client)


async def test_an_envelope_without_its_sns_header_is_still_verified_as_sns(
    sns_client: httpx.AsyncClient, signer: SnsSigner, db: asyncpg.Connection
) -> None:
    forged = _tampered(signer.message(message=seed_event()))
    genuine = signer.message(message=seed_event())
    plain = {"content-type": "text/plain"}

    refused = await sns_client.post(WEBHOOK, content=json.dumps(forged), headers=plain)
    accepted = await sns_client.post(WEBHOOK, content=json.dumps(genuine), headers=plain)

    assert refused.status_code == 401
    assert accepted.json()["status"] == "accepted"
    assert await stored(db) == 1


async def test_a_subscription_is_confirmed_after_the_signature_checks(
    sns_client: httpx.AsyncClient, signer: SnsSigner, confirmed: list[str]
) -> None:
    message = signer.message("SubscriptionConfirmation", message="You have chosen to subscribe")

    response = await post(sns_client, message)

    assert response.json()["status"] == "subscription_confirmed"
    assert confirmed == [message["SubscribeURL"]]


@pytest.mark.parametrize(
    "subscribe_url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/?Action=ConfirmSubscription",
        "https://127.0.0.1/?Action=ConfirmSubscription",
        "https://[::1]/?Action=ConfirmSubscription",
        "https://192.168.1.1/?Action=ConfirmSubscription",
        "https://sns.eu-west-1.amazonaws.com@10.0.0.5/?Action=ConfirmSubscription",
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
        "http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.eu-west-1.amazonaws.com:8443/?Action=ConfirmSubscription",
        "https://sns.eu-west-1.amazonaws.com:99999/?Action=ConfirmSubscription",
        "https://sns.eu-west-1.amazonaws.com/?Action=Confirm\tSubscription",
        "https://sns.s3.amazonaws.com/?Action=ConfirmSubscription",
        "https://[sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
    ],
)
async def test_a_subscribe_url_off_the_topics_sns_endpoint_is_never_fetched(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    confirmed: list[str],
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    subscribe_url: str,
) -> None:
    message = signer.message(
        "SubscriptionConfirmation", message="subscribe", subscribe_url=subscribe_url
    )

    response = await post(sns_client, message)

    assert response.status_code == 401
    assert confirmed == []
    await assert_nothing_stored(db, redis_client)


async def test_a_forged_subscription_is_never_confirmed(
    sns_client: httpx.AsyncClient, signer: SnsSigner, confirmed: list[str]
) -> None:
    message = signer.message("SubscriptionConfirmation", message="subscribe")
    message["SubscribeURL"] = message["SubscribeURL"] + "&extra=1"

    response = await post(sns_client, message)

    assert response.status_code == 401
    assert confirmed == []


async def test_an_unsubscribe_confirmation_is_acknowledged(
    sns_client: httpx.AsyncClient, signer: SnsSigner, db: asyncpg.Connection
) -> None:
    response = await post(sns_client, signer.message("UnsubscribeConfirmation", message="bye"))

    assert response.json()["status"] == "unsubscribe_confirmed"
    assert await stored(db) == 0


async def test_a_malformed_sns_envelope_gets_400(
    sns_client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await post(sns_client, {"Type": "Notification", "MessageId": str(uuid.uuid4())})

    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} >= {"TopicArn", "Signature"}
    assert await stored(db) == 0


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param("[" * 100_000, id="100000 [ never closed"),
        pytest.param(nested_json(MAX_NESTING + 1).decode(), id="one level too deep"),
    ],
)
async def test_bad_input_a_message_nested_deeper_than_32_levels_gets_400_naming_the_limit(
    sns_client: httpx.AsyncClient,
    signer: SnsSigner,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    inner: str,
) -> None:
    response = await post(sns_client, signer.message(message=inner))

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "Message"
    assert f"{MAX_NESTING} levels" in error["reason"]
    await assert_nothing_stored(db, redis_client)


def _url_of(certificate: int) -> str:
    return f"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-{certificate}.pem"


async def test_certificate_cache_one_fetch_for_every_spelling_of_one_url(
    sns_client: httpx.AsyncClient, signer: SnsSigner, verifier: SnsVerifier
) -> None:
    host = "sns.eu-west-1.amazonaws.com"
    spellings = [
        CERT_URL,
        CERT_URL.replace(host, host.upper()),
        CERT_URL.replace(host, "Sns.Eu-West-1.AmazonAws.com"),
        CERT_URL.replace(host, f"{host}:443"),
        CERT_URL.replace(host, f"{host}:0443"),
        CERT_URL.replace(host, f"{host}:{'0' * 60}443"),
        CERT_URL.replace(host, f"{host}:"),
        CERT_URL.replace("https://", "HTTPS://"),
    ]

    for spelling in spellings:
        response = await post(sns_client, signer.message(message=seed_event(), cert_url=spelling))
        assert response.json()["status"] == "accepted", (spelling, response.text)

    assert signer.fetched == [CERT_URL]
    assert verifier.cached_certificate_urls == (CERT_URL,)


async def test_certificate_cache_keeps_nothing_from_a_signature_that_failed(
    sns_client: httpx.AsyncClient, signer: SnsSigner, verifier: SnsVerifier
) -> None:
    refused = await post(sns_client, _tampered(signer.message(message=seed_event())))
    assert refused.status_code == 401
    assert verifier.cached_certificate_urls == ()

    accepted = await post(sns_client, signer.message(message=seed_event()))

    assert accepted.json()["status"] == "accepted"
    assert signer.fetched == [CERT_URL, CERT_URL]  # the refused one's fetch was not kept
    assert verifier.cached_certificate_urls == (CERT_URL,)


async def test_certificate_cache_never_holds_more_than_its_bound(
    sns_client: httpx.AsyncClient, signer: SnsSigner, verifier: SnsVerifier
) -> None:
    urls = [_url_of(n) for n in range(MAX_CACHED_CERTIFICATES + 5)]
    for url in urls:
        response = await post(sns_client, signer.message(message=seed_event(), cert_url=url))
        assert response.json().get("status") == "accepted", response.text
        assert len(verifier.cached_certificate_urls) <= MAX_CACHED_CERTIFICATES

    assert verifier.cached_certificate_urls == tuple(urls[5:])
    # The least recently used was dropped and is fetched again; the newest is still kept.
    for url in (urls[0], urls[-1]):
        await post(sns_client, signer.message(message=seed_event(), cert_url=url))
    assert signer.fetched.count(urls[0]) == 2
    assert signer.fetched.count(urls[-1]) == 1


def _held_fetcher(signer: SnsSigner, released: asyncio.Event) -> CertificateFetcher:
    async def held_fetch(url: str) -> bytes:
        signer.fetched.append(url)
        await released.wait()
        return signer.pem

    return held_fetch


def _envelope(signer: SnsSigner) -> SnsMessage:
    return msgspec.convert(signer.message(message=seed_event()), SnsMessage)


async def _until_awaiting(verifier: SnsVerifier, deliveries: int) -> None:
    async def awaiting() -> bool:
        return verifier.deliveries_awaiting_certificates == deliveries

    await wait_until(awaiting, 30, f"{deliveries} deliveries waiting for the certificate")


async def test_certificate_cache_concurrent_first_deliveries_share_one_fetch(
    signer: SnsSigner,
) -> None:
    # The verifier itself, in the test's loop: the in-process API answers one at a time.
    released = asyncio.Event()
    verifier = SnsVerifier(TOPIC_ARNS, fetcher=_held_fetcher(signer, released))
    deliveries = [asyncio.ensure_future(verifier.verify(_envelope(signer))) for _ in range(5)]

    await _until_awaiting(verifier, 5)
    released.set()
    await asyncio.gather(*deliveries)  # each verified, or this raises

    assert signer.fetched == [CERT_URL]
    assert verifier.cached_certificate_urls == (CERT_URL,)


async def test_certificate_download_goes_on_when_the_delivery_that_started_it_goes_away(
    signer: SnsSigner,
) -> None:
    released = asyncio.Event()
    verifier = SnsVerifier(TOPIC_ARNS, fetcher=_held_fetcher(signer, released))
    first = asyncio.ensure_future(verifier.verify(_envelope(signer)))
    second = asyncio.ensure_future(verifier.verify(_envelope(signer)))
    await _until_awaiting(verifier, 2)

    first.cancel()  # its client hung up
    await _until_awaiting(verifier, 1)
    released.set()
    await second

    assert first.cancelled()
    assert signer.fetched == [CERT_URL]


async def test_certificate_fetch_from_a_real_server_is_accepted(
    signer: SnsSigner, db: asyncpg.Connection
) -> None:
    # The downloader and transport the tests below cut short, working when nothing is wrong.
    with CertificateServer(signer.pem, chunk=100) as server:
        transport = ToLocalServer(server.port)
        verifier = SnsVerifier(TOPIC_ARNS, fetcher=CertificateDownloader(transport))
        async with serving(verifier) as client:
            response = await post(client, signer.message(message=seed_event()))
        await transport.close_for_good()

    assert response.json().get("status") == "accepted", response.text
    assert server.paths == [PEM_PATH]
    assert not server.cut_by_client.is_set()


async def test_certificate_fetch_from_a_slow_drip_server_is_cut_at_the_deadline_with_503(
    signer: SnsSigner, db: asyncpg.Connection, redis_client: redis.Redis
) -> None:
    # One byte every 50 ms: each read is quick, so no per-read time-out ever fires;
    # the certificate would take a minute. Only an overall deadline ends it.
    with CertificateServer(signer.pem, chunk=1, interval_s=0.05) as server:
        transport = ToLocalServer(server.port)
        verifier = SnsVerifier(
            TOPIC_ARNS, fetcher=CertificateDownloader(transport), certificate_deadline_s=0.5
        )
        async with serving(verifier) as client:
            response = await post(client, signer.message(message=seed_event()))
        cut = await asyncio.to_thread(server.cut_by_client.wait, 30)
        await transport.close_for_good()

    # A 5xx: SNS sends the delivery again, where a 4xx would drop the decision for good.
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert server.paths == [PEM_PATH]
    assert cut, "the server was still trickling: the download was not cut"
    assert verifier.cached_certificate_urls == ()
    await assert_nothing_stored(db, redis_client)


async def test_certificate_fetch_that_answers_a_minute_late_is_cut_at_the_deadline_with_503(
    signer: SnsSigner, db: asyncpg.Connection
) -> None:
    # The deadline holds for an injected fetcher too. A minute, not forever: without the
    # deadline this test fails (the delivery is accepted) rather than hangs.
    async def a_minute_late(url: str) -> bytes:
        await asyncio.sleep(60)
        return signer.pem

    verifier = SnsVerifier(TOPIC_ARNS, fetcher=a_minute_late, certificate_deadline_s=0.2)
    async with serving(verifier) as client:
        response = await post(client, signer.message(message=seed_event()))

    assert response.status_code == 503, response.text
    assert "cannot be fetched now" in response.json()["detail"]


async def test_certificate_over_64_kib_is_refused_with_401(
    signer: SnsSigner, db: asyncpg.Connection
) -> None:
    padded = signer.pem + b"\n" * MAX_CERTIFICATE_BYTES  # still a PEM, with trailing lines
    with CertificateServer(padded) as server:
        transport = ToLocalServer(server.port)
        verifier = SnsVerifier(TOPIC_ARNS, fetcher=CertificateDownloader(transport))
        async with serving(verifier) as client:
            response = await post(client, signer.message(message=seed_event()))
        await transport.close_for_good()

    assert response.status_code == 401, response.text
    assert f"over {MAX_CERTIFICATE_BYTES} bytes" in response.json()["errors"][0]["reason"]
    assert verifier.cached_certificate_urls == ()


async def test_a_subscription_that_cannot_be_confirmed_now_gets_503_for_sns_to_retry(
    signer: SnsSigner, db: asyncpg.Connection
) -> None:
    # SNS ends a confirmation on any 4xx and retries a 5xx: a failed visit is a 503.
    nobody_listens = ToLocalServer(free_port())
    verifier = SnsVerifier(
        TOPIC_ARNS,
        fetcher=signer.fetch,
        confirm=functools.partial(visit_subscribe_url, transport=nobody_listens),
    )
    message = signer.message("SubscriptionConfirmation", message="You have chosen to subscribe")
    async with serving(verifier) as client:
        response = await post(client, message)
    await nobody_listens.close_for_good()

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
