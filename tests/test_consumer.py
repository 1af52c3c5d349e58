"""Approval consumers as real processes: each decision applied exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx

from app.markets.events import Announced, Decided
from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from tests.support.approvals import (
    GROUP,
    pending,
    poison_record,
    poisoned_consumer,
    wait_processed,
)
from tests.support.flow import Flow, decision_event
from tests.support.outbox import read_stream, wait_until
from tests.support.postgres_server import PostgresServer
from tests.support.tally import group_settled

FAST_CLAIMS = {"CLAIM_IDLE_MS": "500"}


async def market_of(base_url: str, market_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get(f"/api/v1/markets/{market_id}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body


async def wait_for_status(db: asyncpg.Connection, market_ids: list[str], status: str) -> None:
    ids = [uuid.UUID(m) for m in market_ids]

    async def all_there() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM markets WHERE id = ANY($1) AND status = $2", ids, status
        )
        return bool(count == len(ids))

    await wait_until(all_there, 60, f"{len(ids)} markets to become {status}")


async def outbound_types(flow: Flow, market_id: str) -> list[str]:
    entries = await read_stream(flow.stream, MARKETS_EVENTS)
    return [e["event_type"] for e in entries if e["aggregate_id"] == market_id]


async def test_an_approval_on_the_stream_activates_the_market(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer()
    [market] = await flow.register_markets(api, 1)

    await flow.enqueue_decisions([decision_event(market["id"], entity_id=market["entityId"])])
    await wait_for_status(flow.db, [market["id"]], "active")

    detail = await market_of(api, market["id"])
    assert detail["market"]["status"] == "active"
    assert detail["market"]["decidedBy"] == "admin-1"
    assert [h["decision"] for h in detail["approvalHistory"]] == ["approved"]
    await flow.all_published()

    async def outbound_there() -> bool:
        return len(await outbound_types(flow, market["id"])) == 4

    await wait_until(outbound_there, 30, "the outbound events on markets:events")
    assert await outbound_types(flow, market["id"]) == [
        Announced.REGISTERED,
        Announced.APPROVAL_REQUESTED,
        Announced.ACTIVATED,
        Announced.TOKEN_DEPLOYMENT_REQUESTED,
    ]
    status = await flow.db.fetchval("SELECT processing_status FROM processed_events")
    assert status == "success"


async def test_a_rejection_stores_its_reason(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer()
    [market] = await flow.register_markets(api, 1)

    await flow.enqueue_decisions([decision_event(market["id"], "rejected", reason="KYC failed")])
    await wait_for_status(flow.db, [market["id"]], "rejected")

    detail = await market_of(api, market["id"])
    assert detail["market"]["rejectionReason"] == "KYC failed"
    await flow.all_published()

    async def rejected_there() -> bool:
        return Announced.REJECTED in await outbound_types(flow, market["id"])

    await wait_until(rejected_there, 30, "market.rejected on markets:events")


async def test_outcomes_follow_the_seed_statuses(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    flow.launch_consumer()
    approved, rejected = (m["id"] for m in await flow.register_markets(api, 2))
    events = [
        decision_event(approved, event_id="ok-1"),
        decision_event(approved, event_id="again-1"),
        decision_event(rejected, "rejected", event_id="no-1", reason="incomplete"),
        decision_event(rejected, event_id="late-1"),
        decision_event(approved, event_id="odd-1", event_type="market.suspended"),
        decision_event(str(uuid.uuid4()), event_id="ghost-1"),
        decision_event("not-a-uuid", event_id="bad-1"),
        decision_event(
            approved, "rejected", event_id="contradiction-1", event_type=Decided.APPROVED
        ),
        decision_event(approved, event_id="wrong-entity-1", entity_id=str(uuid.uuid4())),
    ]
    await flow.enqueue_decisions(events)
    await wait_processed(flow.db, len(events))

    rows = await flow.db.fetch(
        "SELECT event_id, processing_status, processing_error FROM processed_events"
    )
    outcome = {r["event_id"]: (r["processing_status"], r["processing_error"] or "") for r in rows}
    assert outcome["ok-1"] == ("success", "")
    assert outcome["no-1"] == ("success", "")
    assert outcome["again-1"][0] == "skipped" and "already decided" in outcome["again-1"][1]
    assert outcome["late-1"][0] == "skipped" and "approval after rejection" in outcome["late-1"][1]
    assert outcome["odd-1"][0] == "skipped" and "unknown event type" in outcome["odd-1"][1]
    assert outcome["ghost-1"][0] == "failed" and "unknown market" in outcome["ghost-1"][1]
    assert outcome["bad-1"][0] == "failed" and "invalid payload" in outcome["bad-1"][1]
    assert outcome["contradiction-1"][0] == "failed"
    assert outcome["wrong-entity-1"][0] == "failed"

    await wait_until(lambda: group_settled(flow.stream), 30, "every entry read and acknowledged")


async def test_duplicates_5_times_and_50_copies_across_3_consumers_apply_once(
    flow: Flow,
) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    first, second = (m["id"] for m in await flow.register_markets(api, 2))
    await flow.all_published()

    for slot in range(3):
        flow.launch_consumer(slot).wait_for_log("consuming")
    await flow.xadd_decision(decision_event(first, event_id="five-times"), copies=5)
    await flow.xadd_decision(decision_event(second, event_id="fifty-copies"), copies=50)

    async def all_read_and_acked() -> bool:
        # Pending 0 alone holds before any consumer has read a copy.
        return await group_settled(flow.stream)

    await wait_until(all_read_and_acked, 60, "all 55 copies read and acknowledged")
    assert await flow.stream.xlen(ENTITY_PERMISSIONS_EVENTS) == 55
    for market_id, event_id in ((first, "five-times"), (second, "fifty-copies")):
        history = await flow.db.fetch(
            "SELECT * FROM market_approval_events WHERE market_id = $1", uuid.UUID(market_id)
        )
        assert [h["event_id"] for h in history] == [event_id]
        outbound = await flow.db.fetch(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1 AND stream = $2 ORDER BY id",
            market_id,
            MARKETS_EVENTS,
        )
        assert [o["event_type"] for o in outbound] == [
            Announced.REGISTERED,
            Announced.APPROVAL_REQUESTED,
            Announced.ACTIVATED,
            Announced.TOKEN_DEPLOYMENT_REQUESTED,
        ]
    statuses = await flow.db.fetch("SELECT processing_status FROM processed_events")
    assert [s["processing_status"] for s in statuses] == ["success", "success"]


async def test_a_consumer_killed_holding_entries_is_taken_over(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    markets = [m["id"] for m in await flow.register_markets(api, 20)]
    await flow.all_published()
    victim = flow.launch_consumer(0, **FAST_CLAIMS)
    victim.wait_for_log("consuming")

    # Hold every market's row, so the victim's transactions wait while it holds entries.
    blocker = await asyncpg.connect(flow.env()["DATABASE_URL"])
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM markets WHERE id = ANY($1) FOR UPDATE",
                [uuid.UUID(m) for m in markets],
            )
            await flow.enqueue_decisions([decision_event(m) for m in markets])

            async def victim_holds_them() -> bool:
                consumers = await flow.stream.xinfo_consumers(ENTITY_PERMISSIONS_EVENTS, GROUP)
                return any(c["pending"] == len(markets) for c in consumers)

            await wait_until(victim_holds_them, 30, "the victim to hold every entry")
            victim.kill()
    finally:
        await blocker.close()

    flow.launch_consumer(1, **FAST_CLAIMS)
    await wait_for_status(flow.db, markets, "active")

    await wait_until(lambda: group_settled(flow.stream), 30, "every entry read and acknowledged")
    assert await flow.db.fetchval("SELECT count(*) FROM market_approval_events") == len(markets)
    assert await flow.db.fetchval("SELECT count(*) FROM processed_events") == len(markets)


async def test_postgres_stopped_for_10_s_leaves_entries_pending_then_applies_them(
    flow: Flow, own_postgres: PostgresServer
) -> None:
    db = await asyncpg.connect(own_postgres.url)
    try:
        env = {"DATABASE_URL": own_postgres.url}
        flow.launch_relay(**env)
        consumer = flow.launch_consumer(0, **env)
        consumer.wait_for_log("consuming")
        markets = [str(uuid.uuid4()) for _ in range(10)]
        await db.executemany(
            """
            INSERT INTO markets (id, name, issuer_id, entity_id, status)
            VALUES ($1, 'Outage market', gen_random_uuid(), gen_random_uuid(), 'pending_approval');
            """,
            [(uuid.UUID(m),) for m in markets],
        )
        await db.executemany(
            """
            INSERT INTO assets (id, market_id, asset_type, token_symbol, token_name, total_supply,
                                asset_details)
            VALUES (gen_random_uuid(), $1, 'real_estate', 'OUT', 'Outage', 1000, '{}')
            """,
            [(uuid.UUID(m),) for m in markets],
        )
        await db.close()
        own_postgres.stop()

        for market_id in markets:
            await flow.xadd_decision(decision_event(market_id))
        await asyncio.sleep(10)
        # Nothing acknowledged: whatever the consumer took is still pending.
        [group] = await flow.stream.xinfo_groups(ENTITY_PERMISSIONS_EVENTS)
        assert group["pending"] >= 1
        assert group["entries-read"] == group["pending"]

        await own_postgres.start()
        db = await asyncpg.connect(own_postgres.url)
        await wait_for_status(db, markets, "active")

        await wait_until(
            lambda: group_settled(flow.stream), 30, "every entry read and acknowledged"
        )
        assert await db.fetchval("SELECT count(*) FROM processed_events") == len(markets)
        consumer.wait_for_log("PostgreSQL unavailable")
        consumer.wait_for_log("PostgreSQL available again")
    finally:
        await db.close()


async def test_a_poison_entry_is_dead_lettered_after_max_deliveries(flow: Flow) -> None:
    api, market_id, _, entry_id = await poisoned_consumer(flow)

    async def dead_lettered_recorded_and_acked() -> bool:
        # The dead letter read first: once it is there, its record must already be.
        dead = await flow.stream.xlen(ENTITY_PERMISSIONS_DEAD)
        recorded = await poison_record(flow)
        assert not dead or recorded is not None, "a dead letter without its failed record"
        return bool(dead and recorded is not None and await group_settled(flow.stream))

    await wait_until(
        dead_lettered_recorded_and_acked, 60, "the poison entry dead-lettered, recorded, acked"
    )
    [letter] = await read_stream(flow.stream, ENTITY_PERMISSIONS_DEAD)
    assert letter["event_id"] == "poison"
    assert letter["original_id"] == entry_id
    assert letter["delivery_count"] == "3"
    assert "Error" in letter["last_error"]
    row = await poison_record(flow)
    assert row is not None
    assert (row["processing_status"], row["processing_reason"]) == ("failed", "dead_lettered")
    assert row["attempts"] == 3
    assert json.loads(row["payload"])["payload"]["reason"] == "\\u0000"
    detail = await market_of(api, market_id)
    assert detail["market"]["status"] == "pending_approval"


async def test_a_dead_letter_not_appended_leaves_the_entry_recorded_and_pending_until_it_is(
    flow: Flow,
) -> None:
    # As when Redis fails between the record and the append.
    _, _, consumer, entry_id = await poisoned_consumer(flow, dead_letters_fail=True)
    first = consumer.wait_for_log(f"could not dead-letter {entry_id} yet", 60)
    row = await poison_record(flow)
    assert row is not None, "the dead letter was attempted before the failure was recorded"
    assert (row["processing_status"], row["processing_reason"]) == ("failed", "dead_lettered")
    # A later delivery finds the event recorded, and tries the dead letter again rather
    # than acknowledging the entry as a duplicate.
    consumer.wait_for_log(f"could not dead-letter {entry_id} yet", 60, after=first)
    assert await pending(flow) == 1

    await flow.stream.delete(ENTITY_PERMISSIONS_DEAD)

    async def dead_lettered_and_acked() -> bool:
        dead = await flow.stream.xlen(ENTITY_PERMISSIONS_DEAD)
        return bool(dead and await group_settled(flow.stream))

    await wait_until(dead_lettered_and_acked, 60, "the dead letter appended and the entry acked")
    [letter] = await read_stream(flow.stream, ENTITY_PERMISSIONS_DEAD)
    assert letter["original_id"] == entry_id
    assert int(letter["delivery_count"]) > 3
    assert letter["last_error"] == row["processing_error"]
    assert await flow.db.fetchval("SELECT count(*) FROM processed_events") == 1
    assert await poison_record(flow) == row  # recorded once, never again


async def test_an_entry_dead_lettered_but_not_acknowledged_is_not_dead_lettered_twice(
    flow: Flow,
) -> None:
    _, _, consumer, entry_id = await poisoned_consumer(flow, dead_letters_fail=True)
    consumer.wait_for_log(f"could not dead-letter {entry_id} yet", 60)
    # As if an earlier delivery had appended the dead letter and stopped before the ack:
    # in one transaction, so that the consumer never sees the stream without it.
    async with flow.stream.pipeline(transaction=True) as both:
        both.delete(ENTITY_PERMISSIONS_DEAD)
        both.xadd(ENTITY_PERMISSIONS_DEAD, {"original_id": entry_id, "consumer": "earlier"})
        await both.execute()

    async def acked() -> bool:
        return await group_settled(flow.stream)

    await wait_until(acked, 60, "the entry acknowledged")
    [letter] = await read_stream(flow.stream, ENTITY_PERMISSIONS_DEAD)
    assert letter == {"original_id": entry_id, "consumer": "earlier"}


async def test_redis_restarted_empty_every_decision_ends_applied_once(flow: Flow) -> None:
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer()
    markets = [m["id"] for m in await flow.register_markets(api, 30)]
    await flow.enqueue_decisions([decision_event(m) for m in markets[:15]])
    await wait_for_status(flow.db, markets[:15], "active")

    flow.redis_server.restart_empty()
    await flow.enqueue_decisions([decision_event(m) for m in markets[15:]])
    await wait_for_status(flow.db, markets, "active")

    async def refilled_and_consumed() -> bool:
        # The refilled copies of the first 15 decisions read too: each must be a duplicate.
        length = await flow.stream.xlen(ENTITY_PERMISSIONS_EVENTS)
        return length == 30 and await group_settled(flow.stream)

    await wait_until(refilled_and_consumed, 60, "the refilled stream consumed")
    consumer.wait_for_log("created it again at 0")
    assert await flow.db.fetchval("SELECT count(*) FROM market_approval_events") == 30
    assert (
        await flow.db.fetchval(
            "SELECT count(*) FROM processed_events WHERE processing_status = 'success'"
        )
        == 30
    )
    activated = await flow.db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'market.activated'"
    )
    assert activated == 30


async def test_sigterm_exits_0(flow: Flow) -> None:
    consumer = flow.launch_consumer()
    consumer.wait_for_log("consuming")

    assert consumer.stop() == 0
    assert "stopped" in consumer.log_text()


async def test_a_copy_of_an_event_already_recorded_failed_is_a_duplicate(flow: Flow) -> None:
    _, api = flow.start_api()
    [market] = await flow.register_markets(api, 1)
    await flow.db.execute(
        """
        INSERT INTO processed_events (event_id, event_type, source, processing_status, payload)
        VALUES ('dead-copy', 'market.approved', 'entity_permissions_core', 'failed', '{}')
        """
    )
    consumer = flow.launch_consumer()
    consumer.wait_for_log("consuming")

    await flow.xadd_decision(decision_event(market["id"], event_id="dead-copy"))

    async def acked() -> bool:
        [group] = await flow.stream.xinfo_groups(ENTITY_PERMISSIONS_EVENTS)
        return bool(group["entries-read"] == 1 and group["pending"] == 0)

    await wait_until(acked, 30, "the copy acknowledged as a duplicate")
    detail = await market_of(api, market["id"])
    assert detail["market"]["status"] == "pending_approval"
