"""The read-through cache of GET /api/v1/markets/{id}: hits, invalidation by the decision
itself (approval, rejection, replay), stale fills refused, and Redis away or hung."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from app.markets.cache import MAX_CACHED_BODY, Lookup, MarketViewCache, cache_key
from app.markets.domain import MarketStatus
from outbox import ENTITY_PERMISSIONS_DEAD
from tests.conftest import REDIS_URL
from tests.support.admin import ADMIN, TOKEN
from tests.support.flow import Flow, decision_event
from tests.support.outbox import wait_until
from tests.support.tally import group_settled

HIT = "market-backend; hit"
MISS = "market-backend; fwd=miss"
# So long that only the decision's own invalidation can explain a fresh read in a test.
NEVER_EXPIRES = {"MARKET_CACHE_PENDING_TTL_S": "600", "MARKET_CACHE_TTL_S": "3600"}


async def read(http: httpx.AsyncClient, market_id: str) -> tuple[str, dict[str, Any], bytes]:
    """(Cache-Status, body, raw body) of one GET of a market."""
    response = await http.get(f"/api/v1/markets/{market_id}")
    assert response.status_code == 200, response.text
    return response.headers["cache-status"], response.json(), response.content


async def acknowledged(flow: Flow) -> None:
    """Every decision on the stream applied and acknowledged: the consumer invalidates
    before it acknowledges, so from here a read must show the decision."""

    async def settled() -> bool:
        return await group_settled(flow.stream)

    await wait_until(settled, 60, "the consumer to acknowledge every decision")


async def test_a_read_is_cached_and_served_the_same(flow: Flow) -> None:
    _, api = flow.start_api()
    [market] = await flow.register_markets(api, 1)
    async with httpx.AsyncClient(base_url=api) as http:
        first_status, first, first_raw = await read(http, market["id"])
        second_status, _, second_raw = await read(http, market["id"])
        unknown = await http.get(f"/api/v1/markets/{uuid.uuid4()}")
    assert (first_status, second_status) == (MISS, HIT)
    assert second_raw == first_raw and first["market"]["status"] == "pending_approval"
    assert first["market"]["id"] == market["id"] and "approvalHistory" in first
    assert second_raw.startswith(b'{"market":{')  # the wire's camelCase, as Litestar wrote it
    # Absence is not cached: a market registered after a 404 is found at once.
    assert unknown.status_code == 404 and "cache-status" not in unknown.headers
    assert await flow.stream.keys("market-view:*") == [cache_key(market["id"])]


async def test_approval_and_rejection_invalidate_the_cached_view(flow: Flow) -> None:
    _, api = flow.start_api(**NEVER_EXPIRES)
    approved, rejected = await flow.register_markets(api, 2)
    flow.launch_consumer(0).wait_for_log("consuming")
    async with httpx.AsyncClient(base_url=api) as http:
        for market in (approved, rejected):
            await read(http, market["id"])
            status, body, _ = await read(http, market["id"])
            assert status == HIT and body["market"]["status"] == "pending_approval"
        await flow.xadd_decision(decision_event(approved["id"], "approved"))
        await flow.xadd_decision(decision_event(rejected["id"], "rejected", reason="no KYC"))
        await acknowledged(flow)
        for market, decided in ((approved, "active"), (rejected, "rejected")):
            status, body, _ = await read(http, market["id"])
            assert (status, body["market"]["status"]) == (MISS, decided), market
            again_status, again, _ = await read(http, market["id"])
            assert (again_status, again) == (HIT, body)
            [record] = again["approvalHistory"]
            assert record["decision"] == ("approved" if decided == "active" else "rejected")


async def test_a_replayed_decision_invalidates_the_cached_view(flow: Flow) -> None:
    _, api = flow.start_api(ADMIN_TOKEN=TOKEN, **NEVER_EXPIRES)
    flow.launch_relay()  # a replay goes through the outbox, as the decision first came
    [market] = await flow.register_markets(api, 1)
    consumer = flow.launch_consumer(0, MAX_DELIVERIES="2", CLAIM_IDLE_MS="200")
    consumer.wait_for_log("consuming")
    # PostgreSQL cannot store this reason: the decision is dead-lettered, recorded failed.
    await flow.xadd_decision(
        decision_event(market["id"], "rejected", event_id="replayed", reason="\x00")
    )

    async def dead_lettered() -> bool:
        return bool(
            await flow.stream.xlen(ENTITY_PERMISSIONS_DEAD) == 1
            and await group_settled(flow.stream)
        )

    await wait_until(dead_lettered, 60, "the decision dead-lettered and acknowledged")
    async with httpx.AsyncClient(base_url=api, headers=ADMIN) as http:
        await read(http, market["id"])
        status, body, _ = await read(http, market["id"])
        assert (status, body["market"]["status"]) == (HIT, "pending_approval")
        replayed = await http.post("/api/v1/admin/processed-events/replayed/replay")
        assert replayed.status_code == 202, replayed.text

        async def rejected() -> bool:
            _, body, _ = await read(http, market["id"])
            return bool(body["market"]["status"] == "rejected")

        # Within a minute, not the ten of the pending view's time-to-live.
        await wait_until(rejected, 60, "the replayed rejection to be read")


@pytest.fixture
async def cache_redis() -> Any:
    client = redis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


async def body_of(cache: MarketViewCache, market_id: uuid.UUID) -> bytes | None:
    return (await cache.get(market_id)).body


async def redis_ms(client: redis.Redis) -> int:
    seconds, microseconds = await client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


async def test_a_pending_view_read_before_the_decision_is_never_cached_over_it(
    cache_redis: redis.Redis,
) -> None:
    """The race the generations exist for: a reader misses and reads PostgreSQL
    (pending), the consumer commits the decision and marks the market, then the
    reader's fill arrives."""
    cache = MarketViewCache(cache_redis, pending_ttl_s=600, decided_ttl_s=3600)
    market_id = uuid.uuid4()
    slow_reader = await cache.get(market_id)  # before the decision
    await cache.decided([str(market_id)])
    await cache.fill(market_id, MarketStatus.PENDING_APPROVAL, b'{"old":1}', slow_reader)
    assert await body_of(cache, market_id) is None  # refused: PostgreSQL answers next
    await cache.fill(market_id, MarketStatus.ACTIVE, b'{"new":1}', await cache.get(market_id))
    assert await body_of(cache, market_id) == b'{"new":1}'
    # Neither a late pending fill nor a second marker displaces the decided view.
    await cache.fill(market_id, MarketStatus.PENDING_APPROVAL, b'{"old":1}', slow_reader)
    await cache.decided([str(market_id)])
    assert await body_of(cache, market_id) == b'{"new":1}'
    # A marker written while a pending view is cached displaces it.
    other = uuid.uuid4()
    await cache.fill(other, MarketStatus.PENDING_APPROVAL, b'{"old":2}', await cache.get(other))
    assert await body_of(cache, other) == b'{"old":2}'
    await cache.decided([str(other)])
    assert await body_of(cache, other) is None


async def test_a_pending_view_lives_its_time_to_live_from_its_read_by_redis_clock(
    cache_redis: redis.Redis,
) -> None:
    cache = MarketViewCache(cache_redis, pending_ttl_s=2, decided_ttl_s=3600)
    slow, late, unread, decided = (uuid.uuid4() for _ in range(4))
    now = await redis_ms(cache_redis)
    await cache.fill(slow, MarketStatus.PENDING_APPROVAL, b"{}", Lookup(None, now - 1500))
    assert 0 < await cache_redis.pttl(cache_key(slow)) <= 500
    await cache.fill(late, MarketStatus.PENDING_APPROVAL, b"{}", Lookup(None, now - 2000))
    # Without Redis's clock at the lookup (Redis did not answer it), nothing is cached.
    await cache.fill(unread, MarketStatus.PENDING_APPROVAL, b"{}", Lookup(None))
    assert await cache_redis.exists(cache_key(late), cache_key(unread)) == 0
    await cache.fill(decided, MarketStatus.REJECTED, b"{}", Lookup(None, now - 5000))
    assert await cache_redis.pttl(cache_key(decided)) > 3_000_000


async def test_a_pending_fill_held_up_past_its_time_to_live_is_refused(flow: Flow) -> None:
    """A fill that reaches Redis late (here Redis itself stalls, the write in flight)
    is refused by Redis's clock: no pending view outlives its read by the bound."""
    client = redis.Redis.from_url(flow.redis_server.url)
    cache = MarketViewCache(client, pending_ttl_s=1, decided_ttl_s=3600)
    market_id = uuid.uuid4()
    try:
        lookup = await cache.get(market_id)
        flow.redis_server.pause()
        try:
            fill = asyncio.create_task(
                cache.fill(market_id, MarketStatus.PENDING_APPROVAL, b"{}", lookup)
            )
            await asyncio.sleep(1.5)  # the stall itself: longer than the time-to-live
        finally:
            flow.redis_server.resume()
        await fill
        assert await client.exists(cache_key(market_id)) == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("value", [b"garbage without a generation", b"abc|x", b"1.5|x", b" 1|x"])
async def test_a_value_the_cache_did_not_write_is_a_miss_and_replaced(
    cache_redis: redis.Redis, value: bytes
) -> None:
    cache = MarketViewCache(cache_redis, pending_ttl_s=2, decided_ttl_s=3600)
    market_id = uuid.uuid4()
    await cache_redis.set(cache_key(market_id), value)
    lookup = await cache.get(market_id)
    assert lookup.body is None
    await cache.fill(market_id, MarketStatus.PENDING_APPROVAL, b'{"p":1}', lookup)
    assert await body_of(cache, market_id) == b'{"p":1}'
    await cache.decided([str(market_id)])
    assert await cache_redis.get(cache_key(market_id)) == b"1|"


async def test_a_body_too_large_is_not_cached(cache_redis: redis.Redis) -> None:
    cache = MarketViewCache(cache_redis, pending_ttl_s=2, decided_ttl_s=3600, local_entries=10)
    market_id = uuid.uuid4()
    large = b'{"x":"' + b"a" * MAX_CACHED_BODY + b'"}'
    await cache.fill(market_id, MarketStatus.ACTIVE, large, await cache.get(market_id))
    assert await body_of(cache, market_id) is None
    assert await cache_redis.exists(cache_key(market_id)) == 0


async def test_redis_down_or_hung_degrades_to_postgres(flow: Flow) -> None:
    _, api = flow.start_api()
    [market] = await flow.register_markets(api, 1)
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        await read(http, market["id"])
        assert (await read(http, market["id"]))[0] == HIT
        flow.redis_server.pause()
        try:
            for _ in range(3):
                status, body, _ = await read(http, market["id"])
                assert (status, body["market"]["status"]) == (MISS, "pending_approval")
        finally:
            flow.redis_server.resume()
        flow.redis_server.stop()
        for _ in range(3):
            status, body, _ = await read(http, market["id"])
            assert (status, body["market"]["id"]) == (MISS, market["id"])


async def test_decided_views_are_kept_in_memory_and_pending_ones_never(flow: Flow) -> None:
    """A decided view never changes, so each process keeps it: read without Redis. A
    pending one is only ever read from Redis, where the decision's marker reaches it."""
    client = redis.Redis.from_url(flow.redis_server.url)
    cache = MarketViewCache(client, pending_ttl_s=600, decided_ttl_s=3600, local_entries=2)
    decided, pending, evicted = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        await cache.fill(decided, MarketStatus.ACTIVE, b'{"d":1}', await cache.get(decided))
        await cache.fill(
            pending, MarketStatus.PENDING_APPROVAL, b'{"p":1}', await cache.get(pending)
        )
        assert await body_of(cache, pending) == b'{"p":1}'
        await cache.decided([str(pending)])  # another process decided it: Redis says so
        assert await body_of(cache, pending) is None
        flow.redis_server.stop()
        assert await body_of(cache, decided) == b'{"d":1}'
        assert await body_of(cache, pending) is None
        # Bounded: the least recently used decided view gives way.
        await cache.fill(evicted, MarketStatus.REJECTED, b'{"e":1}', Lookup(None))
        assert await body_of(cache, decided) == b'{"d":1}'  # now the most recently used
        await cache.fill(uuid.uuid4(), MarketStatus.REJECTED, b"{}", Lookup(None))
        assert await body_of(cache, evicted) is None
        assert await body_of(cache, decided) == b'{"d":1}'
    finally:
        await client.aclose()


async def test_with_the_cache_off_every_read_is_from_postgres(flow: Flow) -> None:
    _, api = flow.start_api(MARKET_CACHE="false")
    [market] = await flow.register_markets(api, 1)
    async with httpx.AsyncClient(base_url=api) as http:
        statuses = [(await read(http, market["id"]))[0] for _ in range(3)]
    assert statuses == [MISS] * 3
    assert await flow.stream.keys("market-view:*") == []
