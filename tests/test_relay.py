"""The outbox relay as a real process, against real PostgreSQL and a Redis of its own."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx
import redis.asyncio as redis

from outbox.envelope import STREAM_FIELDS
from tests.support.flow import Flow
from tests.support.markets import REGISTER, seed_body
from tests.support.outbox import (
    read_stream,
    seed_outbox,
    unpublished,
    wait_until,
)
from tests.support.processes import ManagedProcess

STREAM = "markets:events"


async def test_entries_carry_exactly_the_design_fields(flow: Flow) -> None:
    await seed_outbox(flow.db, 3, markets=1)
    flow.launch_relay()
    await flow.all_published()

    entries = await read_stream(flow.stream, STREAM)
    rows = await flow.db.fetch("SELECT * FROM outbox ORDER BY id")
    assert [tuple(e) for e in entries] == [STREAM_FIELDS] * 3
    for fields, row in zip(entries, rows, strict=True):
        assert fields["outbox_id"] == str(row["id"])
        assert fields["event_id"] == row["event_id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["occurred_at"])
        assert json.loads(fields["payload"]) == json.loads(row["payload"])
        assert json.loads(fields["context"]) == {}


async def test_10000_registrations_all_reach_the_stream_in_order_per_market(
    flow: Flow,
) -> None:
    flow.launch_relay()
    api, base_url = flow.start_api("api-10k")
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
    await flow.all_published()
    report = await flow.check()
    assert report.distinct == 20_000
    print(f"\n10,000 registrations: {report.entries} entries, {report.duplicates} duplicates")


async def test_kill_9_mid_drain_then_restart_loses_no_row(flow: Flow) -> None:
    total = 200_000
    await seed_outbox(flow.db, total, markets=500)
    first = flow.launch_relay("relay-killed")

    async def a_quarter_published() -> bool:
        return await unpublished(flow.db) < total * 3 // 4

    await wait_until(a_quarter_published, 60, "the relay to drain a quarter of the backlog")
    first.kill()
    left = await unpublished(flow.db)
    assert 0 < left < total, "the kill was meant to land mid-drain"

    flow.launch_relay("relay-restarted")
    await flow.all_published()

    report = await flow.check()
    assert report.distinct == total
    print(f"\nkill -9 with {left} rows left: {report.duplicates} duplicates on the stream")


async def test_two_relays_one_publishes_and_the_standby_takes_over_a_kill_9(
    flow: Flow,
) -> None:
    active = flow.launch_relay("relay-a")
    active.wait_for_log("leading")
    standby = flow.launch_relay("relay-b")
    standby.wait_for_log("waiting as standby")

    stop_writing = asyncio.Event()

    async def write_steadily() -> None:
        while not stop_writing.is_set():
            await seed_outbox(flow.db, 20, markets=10)
            await flow.db.execute("NOTIFY outbox")
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write_steadily())
    try:
        await asyncio.sleep(1)
        names = [c["name"] for c in await flow.stream.client_list()]
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

    await flow.all_published()
    report = await flow.check()
    print(
        f"\nstandby took over in {takeover:.2f} s; {report.distinct} rows, "
        f"{report.duplicates} duplicates"
    )


async def test_redis_restarted_empty_is_refilled_from_the_retention_window(
    flow: Flow,
) -> None:
    await seed_outbox(flow.db, 1000, markets=50)
    process = flow.launch_relay()
    await flow.all_published()
    assert await flow.stream.xlen(STREAM) == 1000

    flow.redis_server.restart_empty()

    async def refilled() -> bool:
        try:
            return bool(await flow.stream.xlen(STREAM) >= 1000)
        except redis.ConnectionError:
            return False

    await wait_until(refilled, 30, "the relay to refill the emptied Redis")
    process.wait_for_log("Redis lost its data")
    report = await flow.check()
    assert report.distinct == 1000


async def test_redis_down_for_10_s_registrations_go_on_and_nothing_is_lost(
    flow: Flow,
) -> None:
    process = flow.launch_relay()
    api, base_url = flow.start_api("api-redis-down")
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
            flow.redis_server.stop()
            before_outage = len(statuses)
            await register_for(10)
            during_outage = len(statuses) - before_outage
            flow.redis_server.start()
            await register_for(1)
    finally:
        api.stop()

    assert set(statuses) == {201}
    assert during_outage > 0
    await flow.all_published(within=60)
    report = await flow.check()
    assert report.distinct == 2 * len(statuses)
    process.wait_for_log("Redis unavailable")
    process.wait_for_log("Redis available again")


async def test_a_lost_notify_only_delays_publication(flow: Flow) -> None:
    flow.launch_relay(OUTBOX_POLL_INTERVAL_S="0.2").wait_for_log("leading")
    await asyncio.sleep(0.5)

    await seed_outbox(flow.db, 10)  # no NOTIFY: only the fallback poll can find these

    await flow.all_published(within=30)
    assert await flow.stream.xlen(STREAM) == 10


async def test_retention_deletes_only_old_published_rows(flow: Flow) -> None:
    await seed_outbox(flow.db, 30, age="3 hours", published=True)
    await seed_outbox(flow.db, 20, age="30 minutes", published=True)
    await seed_outbox(flow.db, 10, age="3 hours", published=False)
    flow.launch_relay(OUTBOX_RETENTION_HOURS="1").wait_for_log("retention: deleted")
    await flow.all_published()

    ages = await flow.db.fetch(
        "SELECT now() - created_at < interval '1 hour' AS recent FROM outbox"
    )
    assert sum(row["recent"] for row in ages) == 20
    # This Redis is new to the relay, so it got the retention window (the 20 recent rows)
    # and the 10 old rows still waiting; the 30 expired ones were not re-sent.
    assert await flow.stream.xlen(STREAM) == 30


async def test_replay_republishes_retained_rows_of_one_stream(flow: Flow) -> None:
    await seed_outbox(flow.db, 10, stream=STREAM)
    await seed_outbox(flow.db, 5, stream="entity-permissions:events")
    flow.launch_relay()
    await flow.all_published()
    since = (await flow.db.fetchval("SELECT min(created_at) FROM outbox")).isoformat()

    replay = ManagedProcess(
        "replay",
        ["-m", "relay", "replay", "--since", since, "--stream", STREAM],
        flow.env(),
        flow.log_dir,
    )
    assert replay.process.wait(60) == 0, replay.log_tail()
    await flow.all_published()

    async def republished() -> bool:
        return bool(await flow.stream.xlen(STREAM) == 20)

    await wait_until(republished, 30, "the replayed rows on the stream")
    assert await flow.stream.xlen("entity-permissions:events") == 5
    assert "10 rows" in replay.log_text()


async def test_sigterm_finishes_releases_the_lock_and_exits_0(flow: Flow) -> None:
    total = 50_000
    await seed_outbox(flow.db, total, markets=100)
    process = flow.launch_relay()

    async def a_quarter_published() -> bool:
        return await unpublished(flow.db) < total * 3 // 4

    await wait_until(a_quarter_published, 60, "the relay to drain a quarter of the backlog")
    assert process.stop() == 0, process.log_tail()
    left = await unpublished(flow.db)
    assert 0 < left < total, "the stop was meant to land mid-drain"

    # The batch in hand when the signal came was finished: every batch on the stream is
    # marked published, every row marked published is on the stream, each once.
    entries = [int(fields["outbox_id"]) for fields in await read_stream(flow.stream, STREAM)]
    on_stream = set(entries)
    published = {
        row["id"]
        for row in await flow.db.fetch("SELECT id FROM outbox WHERE published_at IS NOT NULL")
    }
    unmarked, absent = sorted(on_stream - published), sorted(published - on_stream)
    assert not unmarked, f"{len(unmarked)} rows on the stream left unpublished: {unmarked[:5]}"
    assert not absent, f"{len(absent)} rows marked published are not on the stream: {absent[:5]}"
    assert len(entries) == len(on_stream), "a batch was appended twice"
    held = await flow.db.fetchval(
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
    )
    assert held == 0


async def test_a_redis_restarted_from_an_older_snapshot_is_refilled(flow: Flow) -> None:
    await seed_outbox(flow.db, 100, markets=10)
    process = flow.launch_relay()
    await flow.all_published()
    assert await flow.stream.xlen(STREAM) == 100

    # What a restart from a snapshot looks like: the marker is there, set on another run.
    await flow.stream.set("market-backend:outbox-relay:marker", "an-earlier-run")

    async def refilled() -> bool:
        return bool(await flow.stream.xlen(STREAM) == 200)

    await wait_until(refilled, 30, "the retention window published again")
    process.wait_for_log("Redis restarted (run_id an-earlier-run")
    await flow.check()
