"""Trimming: streams our own groups read lose nothing unacknowledged; streams read
outside the service keep their length, and what a group lost unread is counted and
logged with its ids."""

from __future__ import annotations

import uuid

from tests.support.flow import Flow, decision_event
from tests.support.outbox import seed_outbox, wait_until

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
