"""The polling fallback and the Entity Permissions Core simulator, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tests.support.approvals import all_active
from tests.support.feed import API_KEY, approve, polling, requested, set_faults
from tests.support.feed_recorder import FeedRecorder
from tests.support.flow import Flow
from tests.support.outbox import wait_until
from tests.support.processes import ManagedProcess
from tests.support.webhooks import SECRET, WEBHOOK


async def applied_once(flow: Flow, events: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    for table in ("processed_events", "market_approval_events"):
        rows = await flow.db.fetch(f"SELECT event_id FROM {table} WHERE event_id = ANY($1)", ids)
        assert sorted(r["event_id"] for r in rows) == sorted(ids), table
    inbound = await flow.db.fetch(
        "SELECT event_id FROM outbox WHERE stream = 'entity-permissions:events'"
    )
    assert sorted(r["event_id"] for r in inbound) == sorted(ids)


async def test_polling_alone_activates_the_market(flow: Flow) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer(**polling(simulator))
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    await requested(simulator, [market])

    events = await approve(simulator, [market])

    await all_active(flow, [market])
    await applied_once(flow, events)
    consumer.wait_for_log("Polled events from Entity Permissions Core")


async def test_the_webhook_alone_activates_the_market(flow: Flow) -> None:
    _, api = flow.start_api()
    _, simulator = flow.start_simulator(EPC_WEBHOOK_URL=f"{api}{WEBHOOK}")
    flow.launch_relay()
    flow.launch_consumer()
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    await requested(simulator, [market])

    events = await approve(simulator, [market])

    await all_active(flow, [market])
    await applied_once(flow, events)


async def webhook_took(api: ManagedProcess, events: list[dict[str, Any]]) -> None:
    """The webhook answered 2xx for each event: `accepted`, or `already_processed` when
    the feed's copy came first (the API logs each; the poller's copies are not logged
    there)."""

    async def answered() -> bool:
        log = api.log_text()
        return all(f"inbound event {e['event_id']}: " in log for e in events)

    await wait_until(answered, 60, "the webhook to take every decision")


async def feed_stored_to(flow: Flow, cursor: str) -> None:
    """The poller stored the feed's pages up to `cursor`: each event before it went to
    the intake in the transaction that saved the cursor."""

    async def stored() -> bool:
        return bool(await flow.db.fetchval("SELECT cursor FROM poller_cursors") == cursor)

    await wait_until(stored, 60, f"the poller to store the feed up to cursor {cursor}")


async def test_both_paths_at_once_apply_each_decision_once(flow: Flow) -> None:
    api_process, api = flow.start_api()
    _, simulator = flow.start_simulator(
        EPC_API_KEY=API_KEY, EPC_WEBHOOK_URL=f"{api}{WEBHOOK}", EPC_WEBHOOK_SECRET=SECRET
    )
    flow.launch_relay()
    flow.launch_consumer(**polling(simulator))
    markets = [m["id"] for m in await flow.register_markets(api, 5)]
    await requested(simulator, markets)

    events = await approve(simulator, markets)

    await all_active(flow, markets)
    # Every decision arrived both ways, whichever came first: neither path may be dead.
    await webhook_took(api_process, events)
    await feed_stored_to(flow, str(len(events)))  # the simulator's cursor: a position
    await applied_once(flow, events)


async def test_a_failing_feed_leaves_the_poller_recovering_and_losing_nothing(
    flow: Flow,
) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer(**polling(simulator, PERMISSIONS_SERVICE_TIMEOUT_MS="300"))
    markets = [m["id"] for m in await flow.register_markets(api, 6)]
    await requested(simulator, markets)

    for faults, market in zip(
        [
            {"error_status": 500},
            {"error_status": 429},
            {"latency_ms": 1000},  # beyond the 300 ms time-out
            {"malformed": True},
            {"error_status": 503},
            {},
        ],
        markets,
        strict=True,
    ):
        await set_faults(simulator, **faults)
        await approve(simulator, [market])
        await asyncio.sleep(1.5)

    await all_active(flow, markets)
    log = consumer.log_text()
    assert "Entity Permissions Core unavailable" in log
    assert "Entity Permissions Core available again" in log
    await applied_once(flow, [{"event_id": e} for e in await _feed_ids(simulator)])


async def _feed_ids(simulator: str) -> list[str]:
    async with httpx.AsyncClient(base_url=simulator, headers={"X-API-Key": API_KEY}) as http:
        feed = (await http.get("/api/v1/events", params={"limit": 1000})).json()
    return [e["event_id"] for e in feed["data"]]


async def test_an_invalid_event_is_recorded_failed_and_passed(flow: Flow) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    await requested(simulator, [market])
    async with httpx.AsyncClient(base_url=simulator) as http:
        await http.post(
            "/api/v1/events",
            json={"event_id": "broken-1", "event_type": "market.approved", "payload": {}},
        )
        await http.post("/api/v1/events", json=["not", "an", "event"])
    events = await approve(simulator, [market])
    flow.launch_consumer(**polling(simulator))

    await all_active(flow, [market])
    rows = await flow.db.fetch(
        "SELECT event_id, processing_error, payload FROM processed_events"
        " WHERE processing_status = 'failed' ORDER BY id"
    )
    # Under keys of their own, never the event_id they claim (which stays free for a
    # readable copy), each with the document as it came.
    assert all(r["event_id"].startswith("unreadable:") for r in rows)
    documents = [json.loads(r["payload"])["document"] for r in rows]
    assert sorted(documents, key=json.dumps) == [
        ["not", "an", "event"],
        {"event_id": "broken-1", "event_type": "market.approved", "payload": {}},
    ]
    assert all("invalid event" in r["processing_error"] for r in rows)
    await applied_once(flow, events)


async def test_a_poller_killed_mid_feed_loses_and_doubles_nothing(flow: Flow) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    markets = [m["id"] for m in await flow.register_markets(api, 250)]
    await requested(simulator, markets)
    events = await approve(simulator, markets)
    await set_faults(simulator, latency_ms=700)  # time to act between two pages

    # Each poller reads the feed through a recorder of its own: what it asked for first
    # is where it started.
    with FeedRecorder(simulator) as victims_feed, FeedRecorder(simulator) as successors_feed:
        victim = flow.launch_consumer(0, **polling(victims_feed.url))

        async def first_page_stored() -> bool:
            cursor = await flow.db.fetchval("SELECT cursor FROM poller_cursors")
            return cursor is not None

        await wait_until(first_page_stored, 60, "the first page of the feed stored")
        victim.kill()
        cursor = await flow.db.fetchval("SELECT cursor FROM poller_cursors")
        assert cursor in ("100", "200"), "the kill was meant to land mid-feed"
        assert victims_feed.requested()[0] is None  # a poller with no cursor yet

        flow.launch_consumer(1, **polling(successors_feed.url))
        await all_active(flow, markets, within=120)
        await applied_once(flow, events)
        # The successor resumed at the stored cursor and never asked for the pages
        # before it.
        resumed = successors_feed.requested()
        assert resumed[0] == cursor, resumed
        assert all(after is not None and int(after) >= int(cursor) for after in resumed), resumed
