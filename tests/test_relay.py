"""The outbox relay as a real process, against real PostgreSQL and a Redis of its own."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from outbox.envelope import STREAM_FIELDS
from tests.conftest import service_env
from tests.support.outbox import (
    StreamReport,
    check_stream_against_outbox,
    read_stream,
    seed_outbox,
    unpublished,
    wait_until,
)
from tests.support.processes import ManagedProcess, start_api, start_relay
from tests.support.redis_server import RedisServer
from tests.test_register import REGISTER, seed_body

STREAM = "markets:events"


class RelayHarness:
    """The test database, a Redis of the test's own, and the relays a test starts."""

    def __init__(
        self, db: asyncpg.Connection, server: RedisServer, stream: redis.Redis, log_dir: Path
    ) -> None:
        self.db = db
        self.redis_server = server
        self.stream = stream
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def env(self, **overrides: str) -> dict[str, str]:
        return service_env(REDIS_URL=self.redis_server.url, **overrides)

    def launch(self, name: str = "relay", **overrides: str) -> ManagedProcess:
        process = start_relay(self.env(**overrides), self.log_dir, f"{name}-{time.monotonic_ns()}")
        self.processes.append(process)
        return process

    async def all_published(self, within: float = 120) -> None:
        async def done() -> bool:
            return await unpublished(self.db) == 0

        await wait_until(done, within, "the relay to publish every outbox row")

    async def check(self) -> StreamReport:
        return await check_stream_against_outbox(self.db, self.stream)


@pytest.fixture
async def relay(db: asyncpg.Connection, log_dir: Path) -> AsyncIterator[RelayHarness]:
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    harness = RelayHarness(db, server, client, log_dir)
    try:
        yield harness
    finally:
        for process in harness.processes:
            process.kill()
        await client.aclose()
        server.stop()


async def test_entries_carry_exactly_the_design_fields(relay: RelayHarness) -> None:
    await seed_outbox(relay.db, 3, markets=1)
    relay.launch()
    await relay.all_published()

    entries = await read_stream(relay.stream, STREAM)
    rows = await relay.db.fetch("SELECT * FROM outbox ORDER BY id")
    assert [tuple(e) for e in entries] == [STREAM_FIELDS] * 3
    for fields, row in zip(entries, rows, strict=True):
        assert fields["outbox_id"] == str(row["id"])
        assert fields["event_id"] == row["event_id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["occurred_at"])
        assert json.loads(fields["payload"]) == json.loads(row["payload"])
        assert json.loads(fields["context"]) == {}


async def test_10000_registrations_all_reach_the_stream_in_order_per_market(
    relay: RelayHarness,
) -> None:
    relay.launch()
    api, base_url = start_api(relay.env(), relay.log_dir, "api-10k")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            gate = asyncio.Semaphore(32)

            async def register(n: int) -> int:
                async with gate:
                    response = await http.post(REGISTER, json=seed_body(name=f"Market {n}"))
                    return response.status_code

            statuses = await asyncio.gather(*(register(n) for n in range(10_000)))
    finally:
        api.stop()

    assert set(statuses) == {201}
    await relay.all_published()
    report = await relay.check()
    assert report.distinct == 20_000
    print(f"\n10,000 registrations: {report.entries} entries, {report.duplicates} duplicates")


async def test_kill_9_mid_drain_then_restart_loses_no_row(relay: RelayHarness) -> None:
    total = 200_000
    await seed_outbox(relay.db, total, markets=500)
    first = relay.launch("relay-killed")

    async def a_quarter_published() -> bool:
        return await unpublished(relay.db) < total * 3 // 4

    await wait_until(a_quarter_published, 60, "the relay to drain a quarter of the backlog")
    first.kill()
    left = await unpublished(relay.db)
    assert 0 < left < total, "the kill was meant to land mid-drain"

    relay.launch("relay-restarted")
    await relay.all_published()

    report = await relay.check()
    assert report.distinct == total
    print(f"\nkill -9 with {left} rows left: {report.duplicates} duplicates on the stream")


async def test_two_relays_one_publishes_and_the_standby_takes_over_a_kill_9(
    relay: RelayHarness,
) -> None:
    active = relay.launch("relay-a")
    active.wait_for_log("leading")
    standby = relay.launch("relay-b")
    standby.wait_for_log("waiting as standby")

    stop_writing = asyncio.Event()

    async def write_steadily() -> None:
        while not stop_writing.is_set():
            await seed_outbox(relay.db, 20, markets=10)
            await relay.db.execute("NOTIFY outbox")
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write_steadily())
    try:
        await asyncio.sleep(1)
        names = [c["name"] for c in await relay.stream.client_list()]
        relay_clients = [n for n in names if n.startswith("outbox-relay:")]
        assert relay_clients == [f"outbox-relay:{socket.gethostname()}:{active.process.pid}"]
        assert "leading" not in standby.log_text()

        active.kill()
        killed_at = time.monotonic()
        standby.wait_for_log("leading", timeout=30)
        takeover = time.monotonic() - killed_at
        await asyncio.sleep(1)
    finally:
        stop_writing.set()
        await writer

    await relay.all_published()
    report = await relay.check()
    print(
        f"\nstandby took over in {takeover:.2f} s; {report.distinct} rows, "
        f"{report.duplicates} duplicates"
    )


async def test_redis_restarted_empty_is_refilled_from_the_retention_window(
    relay: RelayHarness,
) -> None:
    await seed_outbox(relay.db, 1000, markets=50)
    process = relay.launch()
    await relay.all_published()
    assert await relay.stream.xlen(STREAM) == 1000

    relay.redis_server.restart_empty()

    async def refilled() -> bool:
        try:
            return bool(await relay.stream.xlen(STREAM) >= 1000)
        except redis.ConnectionError:
            return False

    await wait_until(refilled, 30, "the relay to refill the emptied Redis")
    process.wait_for_log("Redis lost its data")
    report = await relay.check()
    assert report.distinct == 1000


async def test_redis_down_for_10_s_registrations_go_on_and_nothing_is_lost(
    relay: RelayHarness,
) -> None:
    process = relay.launch()
    api, base_url = start_api(relay.env(), relay.log_dir, "api-redis-down")
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

            async def register_for(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    response = await http.post(REGISTER, json=seed_body())
                    statuses.append(response.status_code)
                    await asyncio.sleep(0.02)

            await register_for(1)
            relay.redis_server.stop()
            before_outage = len(statuses)
            await register_for(10)
            during_outage = len(statuses) - before_outage
            relay.redis_server.start()
            await register_for(1)
    finally:
        api.stop()

    assert set(statuses) == {201}
    assert during_outage > 0
    await relay.all_published(within=60)
    report = await relay.check()
    assert report.distinct == 2 * len(statuses)
    process.wait_for_log("Redis unavailable")
    process.wait_for_log("Redis available again")


async def test_a_lost_notify_only_delays_publication(relay: RelayHarness) -> None:
    relay.launch(OUTBOX_POLL_INTERVAL_S="0.2").wait_for_log("leading")
    await asyncio.sleep(0.5)

    await seed_outbox(relay.db, 10)  # no NOTIFY: only the fallback poll can find these

    await relay.all_published(within=30)
    assert await relay.stream.xlen(STREAM) == 10


async def test_streams_are_trimmed_to_their_configured_length(relay: RelayHarness) -> None:
    await seed_outbox(relay.db, 5000)
    relay.launch(STREAM_MAXLEN=f"{STREAM}=100", OUTBOX_BATCH_SIZE="50")
    await relay.all_published()

    length = await relay.stream.xlen(STREAM)
    assert 100 <= length < 1000  # approximate trimming keeps at least the asked length


async def test_retention_deletes_only_old_published_rows(relay: RelayHarness) -> None:
    await seed_outbox(relay.db, 30, age="3 hours", published=True)
    await seed_outbox(relay.db, 20, age="30 minutes", published=True)
    await seed_outbox(relay.db, 10, age="3 hours", published=False)
    relay.launch(OUTBOX_RETENTION_HOURS="1").wait_for_log("retention: deleted")
    await relay.all_published()

    ages = await relay.db.fetch(
        "SELECT now() - created_at < interval '1 hour' AS recent FROM outbox"
    )
    assert sum(row["recent"] for row in ages) == 20
    # This Redis is new to the relay, so it got the retention window (the 20 recent rows)
    # and the 10 old rows still waiting; the 30 expired ones were not re-sent.
    assert await relay.stream.xlen(STREAM) == 30


async def test_replay_republishes_retained_rows_of_one_stream(relay: RelayHarness) -> None:
    await seed_outbox(relay.db, 10, stream=STREAM)
    await seed_outbox(relay.db, 5, stream="entity-permissions:events")
    relay.launch()
    await relay.all_published()
    since = (await relay.db.fetchval("SELECT min(created_at) FROM outbox")).isoformat()

    replay = ManagedProcess(
        "replay",
        ["-m", "relay", "replay", "--since", since, "--stream", STREAM],
        relay.env(),
        relay.log_dir,
    )
    assert replay.process.wait(60) == 0, replay.log_tail()
    await relay.all_published()

    async def republished() -> bool:
        return bool(await relay.stream.xlen(STREAM) == 20)

    await wait_until(republished, 30, "the replayed rows on the stream")
    assert await relay.stream.xlen("entity-permissions:events") == 5
    assert "10 rows" in replay.log_text()


async def test_sigterm_finishes_releases_the_lock_and_exits_0(relay: RelayHarness) -> None:
    process = relay.launch()
    process.wait_for_log("leading")

    assert process.stop() == 0
    held = await relay.db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    assert held == 0
