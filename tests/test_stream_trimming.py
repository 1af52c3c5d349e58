"""Trimming: streams our own groups read lose nothing unacknowledged; streams read
outside the service keep their length, and what a group lost unread is counted and
logged with its ids."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support.flow import Flow, decision_event
from tests.support.metrics import metric, scrape
from tests.support.outbox import seed_outbox, unpublished, wait_until
from tests.support.processes import start_api

MARKETS = "markets:events"
DECISIONS = "entity-permissions:events"
LOST = "market-backend:stream-entries-lost:"


async def test_markets_events_keeps_its_length_and_counts_and_logs_what_a_group_lost(
    flow: Flow,
) -> None:
    await flow.stream.xgroup_create(MARKETS, "slow-reader", id="0", mkstream=True)
    await seed_outbox(flow.db, 5000)
    relay = flow.launch_relay(STREAM_MAXLEN=f"{MARKETS}=100", OUTBOX_BATCH_SIZE="50")
    await flow.all_published()

    async def trimmed() -> bool:
        return bool(await flow.stream.xlen(MARKETS) < 300)

    await wait_until(trimmed, 30, f"{MARKETS} trimmed towards its length")
    length = await flow.stream.xlen(MARKETS)
    assert length >= 100  # approximate trimming keeps at least the asked length
    # The group read nothing: every entry trimmed was lost to it, and counted.
    lost = int(await flow.stream.hget(LOST + MARKETS, "slow-reader") or 0)
    assert lost == 5000 - length
    relay.wait_for_log(f"of {MARKETS} that group slow-reader had not read")
    relay.wait_for_log("make replay SINCE=")
    process, api = start_api(flow.env(STREAM_MAXLEN=f"{MARKETS}=100"), flow.log_dir, "api-trim")
    flow.processes.append(process)
    async with httpx.AsyncClient(base_url=api) as http:
        text = await scrape(http)
    assert metric(text, "market_stream_entries_lost_total", group="slow-reader") == lost
    assert metric(text, "market_stream_maxlen", stream=MARKETS) == 100


async def test_trimming_deletes_no_decision_before_every_group_acknowledged_it(
    flow: Flow,
) -> None:
    """Consumers stopped for longer than the stream holds at its length: every decision
    is still applied, once, when they are back."""
    await flow.stream.xgroup_create(DECISIONS, "market-approvals", id="0", mkstream=True)
    events = [decision_event(str(uuid.uuid4())) for _ in range(2000)]
    await flow.enqueue_decisions(events)
    relay = flow.launch_relay(STREAM_MAXLEN=f"{DECISIONS}=100", OUTBOX_BATCH_SIZE="50")
    await flow.all_published()
    relay.wait_for_log(f"{DECISIONS} holds 2000 entries, over its length of 100")
    assert await flow.stream.xlen(DECISIONS) == 2000

    flow.launch_consumer()

    async def all_recorded() -> bool:
        return bool(await flow.db.fetchval("SELECT count(*) FROM processed_events") == 2000)

    await wait_until(all_recorded, 60, "every decision recorded")
    recorded = await flow.db.fetch("SELECT event_id FROM processed_events")
    assert sorted(r["event_id"] for r in recorded) == sorted(e.event_id for e in events)

    async def acknowledged_and_trimmed() -> bool:
        return bool(await flow.stream.xlen(DECISIONS) < 300)

    await wait_until(acknowledged_and_trimmed, 30, f"{DECISIONS} trimmed once acknowledged")
    assert not await flow.stream.exists(LOST + DECISIONS)
    relay.wait_for_log(f"{DECISIONS} is back within its length")


async def test_pending_decisions_deleted_by_hand_are_logged_with_ids_and_counted(
    flow: Flow,
) -> None:
    await flow.stream.xgroup_create(DECISIONS, "market-approvals", id="0", mkstream=True)
    for n in range(3):
        await flow.xadd_decision(decision_event(str(uuid.uuid4()), event_id=f"held-{n}"))
    # A consumer that read them and died; then an operator deleted them.
    held = await flow.stream.xreadgroup("market-approvals", "gone", {DECISIONS: ">"}, count=10)
    ids = [entry_id for entry_id, _ in held[0][1]]
    await flow.stream.xdel(DECISIONS, *ids)
    _, api = flow.start_api()
    consumer = flow.launch_consumer(CLAIM_IDLE_MS="200")

    consumer.wait_for_log(f"3 entries pending in group market-approvals are gone from {DECISIONS}")
    assert all(entry_id in consumer.log_text() for entry_id in ids)
    assert await flow.stream.hget(LOST + DECISIONS, "market-approvals") == "3"
    async with httpx.AsyncClient(base_url=api) as http:
        text = await scrape(http)
    lost = metric(text, "market_stream_entries_lost_total", stream=DECISIONS)
    assert lost == 3


async def test_a_stream_deleted_and_made_again_empty_is_published_again(flow: Flow) -> None:
    """Deleted while decisions waited on it unread, then made again empty (as a consumer's
    XGROUP CREATE ... MKSTREAM does): the relay notices and publishes it again."""
    events = [decision_event(str(uuid.uuid4())) for _ in range(200)]
    await flow.enqueue_decisions(events)
    relay = flow.launch_relay()
    await flow.all_published()
    await flow.stream.delete(DECISIONS)
    await flow.stream.xgroup_create(DECISIONS, "market-approvals", id="0", mkstream=True)
    relay.wait_for_log(f"stream {DECISIONS} is gone")

    flow.launch_consumer()

    async def all_recorded() -> bool:
        return bool(await flow.db.fetchval("SELECT count(*) FROM processed_events") == 200)

    await wait_until(all_recorded, 60, "every decision recorded")
    await flow.check(DECISIONS)


async def test_trimming_keeps_up_with_a_drain(flow: Flow) -> None:
    await seed_outbox(flow.db, 100_000)
    await flow.db.execute("ANALYZE outbox")
    flow.launch_relay(STREAM_MAXLEN=f"{MARKETS}=1000")
    longest = 0
    while await unpublished(flow.db):
        longest = max(longest, await flow.stream.xlen(MARKETS))
        await asyncio.sleep(0.01)
    # Each batch trims what it added: at most a batch and a node of Redis over.
    assert longest <= 1000 + 1000 + 100, longest


async def test_no_decision_is_trimmed_while_our_group_is_missing(flow: Flow) -> None:
    """Another group on the stream (read from its end) says nothing of what ours needs."""
    await flow.stream.xgroup_create(DECISIONS, "someone-else", id="$", mkstream=True)
    await flow.enqueue_decisions([decision_event(str(uuid.uuid4())) for _ in range(2000)])
    relay = flow.launch_relay(STREAM_MAXLEN=f"{DECISIONS}=100", OUTBOX_BATCH_SIZE="50")
    await flow.all_published()
    relay.wait_for_log(f"{DECISIONS} holds 2000 entries")
    assert await flow.stream.xlen(DECISIONS) == 2000
