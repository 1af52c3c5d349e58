"""Hostile input on the ways decisions come in (review items 8, 9 and 12), over real
processes: a poisoned feed page, decisions that could not be read at first, event ids
reused with other content, and a feed whose cursor does not advance."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx

from tests.support.flow import Flow
from tests.support.outbox import wait_until
from tests.support.processes import ManagedProcess
from tests.test_polling import API_KEY, all_active, approve, polling, requested
from tests.test_webhook import WEBHOOK, seed_event

ENTITY = "9b2f7c1e-2222-4a5b-8c9d-0123456789ab"  # the entity of every market seed_body registers


def nested_event(event_id: str, market_id: str, depth: int) -> bytes:
    """An approval whose payload carries a value nested `depth` levels deep, as raw JSON:
    Python's own encoder could not even write the deeper ones."""
    head = json.dumps(
        {
            "event_id": event_id,
            "event_type": "market.approved",
            "source": "entity_permissions_core",
            "payload": {"market_id": market_id, "entity_id": ENTITY, "decision": "approved"},
        }
    )
    return head[:-2].encode() + b', "note": ' + b"[" * depth + b"]" * depth + b"}}"


async def put_on_feed(simulator: str, document: bytes | dict[str, Any]) -> None:
    """A document on the simulator's feed, byte for byte."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    async with httpx.AsyncClient(base_url=simulator) as http:
        response = await http.post(
            "/api/v1/events", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 201, response.text


async def post_webhook(api: str, event: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        return await http.post(WEBHOOK, json=event)


async def unreadable_rows(flow: Flow) -> list[asyncpg.Record]:
    """The failed records of deliveries that could not be read, oldest first."""
    return await flow.db.fetch(
        "SELECT event_id, event_type, processing_error, payload FROM processed_events"
        " WHERE event_id LIKE 'unreadable:%' ORDER BY id"
    )


async def wait_unreadable(flow: Flow, count: int) -> list[asyncpg.Record]:
    async def recorded() -> bool:
        return len(await unreadable_rows(flow)) >= count

    await wait_until(recorded, 60, f"{count} unreadable deliveries recorded")
    return await unreadable_rows(flow)


def claimed_id(row: asyncpg.Record) -> str | None:
    """The event_id an unreadable record's delivery claimed, from what was kept of it."""
    kept = json.loads(row["payload"])
    document = kept.get("document") or kept.get("payload", {}).get("fields") or {}
    found = document.get("event_id")
    return str(found) if found is not None else None


async def outcome(flow: Flow, event_id: str) -> str | None:
    status: str | None = await flow.db.fetchval(
        "SELECT processing_status FROM processed_events WHERE event_id = $1", event_id
    )
    return status


async def wait_outcome(flow: Flow, event_id: str, status: str) -> None:
    async def there() -> bool:
        return await outcome(flow, event_id) == status

    await wait_until(there, 60, f"{event_id} recorded {status}")


def assert_alive(process: ManagedProcess) -> None:
    assert process.process.poll() is None, f"{process.name} died:\n{process.log_tail()}"
    assert "Traceback" not in process.log_text(), process.log_tail(80)


# -- item 9: an event_id reused with other content -------------------------------------


async def test_item_9_the_webhook_reports_a_different_copy_under_a_recorded_event_id(
    flow: Flow,
) -> None:
    api_process, api = flow.start_api()
    flow.launch_relay()
    [market] = [m["id"] for m in await flow.register_markets(api, 1)]
    first = seed_event(market, occurred_at="2026-11-26T15:00:00Z")
    first["payload"]["weight"] = 100
    # The same event: context and occurred_at may differ between the two paths, and the
    # payload's key order and number spelling are not content.
    same = {
        **{k: v for k, v in first.items() if k != "occurred_at"},
        "context": {"actor_id": "another", "request_id": "r-2"},
        "payload": {**dict(reversed(first["payload"].items())), "weight": 1e2},
    }
    rejected = {
        **first,
        "event_type": "market.rejected",
        "payload": {**first["payload"], "decision": "rejected"},
    }
    elsewhere = {**first, "payload": {**first["payload"], "market_id": str(uuid.uuid4())}}

    async def outbox_rows() -> int:
        count: int = await flow.db.fetchval(
            "SELECT count(*) FROM outbox WHERE event_id = $1", first["event_id"]
        )
        return count

    assert (await post_webhook(api, first)).json()["status"] == "accepted"
    for recorded_in in ("the outbox", "processed_events"):
        assert (await post_webhook(api, same)).json()["status"] == "already_processed"
        for other, differs in ((rejected, "event_type"), (elsewhere, "payload")):
            answer = await post_webhook(api, other)
            assert answer.status_code == 409, (recorded_in, answer.text)
            assert first["event_id"] in answer.json()["detail"]
            assert differs in [e["field"] for e in answer.json()["errors"]]
        assert await outbox_rows() == (1 if recorded_in == "the outbox" else 0)
        if recorded_in == "the outbox":
            # Applied, then the outbox row gone with its retention window.
            flow.launch_consumer()
            await all_active(flow, [market])
            await flow.db.execute("DELETE FROM outbox WHERE event_id = $1", first["event_id"])

    api_process.wait_for_log(f"event {first['event_id']} differs from the copy already received")
    assert await flow.db.fetchval("SELECT count(*) FROM processed_events") == 1


async def test_item_9_the_poller_logs_a_different_copy_and_passes(flow: Flow) -> None:
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    _, api = flow.start_api()
    flow.launch_relay()
    consumer = flow.launch_consumer(**polling(simulator))
    first, second = (m["id"] for m in await flow.register_markets(api, 2))
    await requested(simulator, [second])
    by_webhook = seed_event(first, event_id="reused-id")
    assert (await post_webhook(api, by_webhook)).json()["status"] == "accepted"

    await put_on_feed(
        simulator,
        {**by_webhook, "payload": {**by_webhook["payload"], "market_id": second}},
    )
    await approve(simulator, [second])

    await all_active(flow, [first, second])
    consumer.wait_for_log("event reused-id differs from the copy already received")
    history = await flow.db.fetch(
        "SELECT market_id FROM market_approval_events WHERE event_id = 'reused-id'"
    )
    assert [str(h["market_id"]) for h in history] == [first]
    assert_alive(consumer)
