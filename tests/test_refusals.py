"""Refusals without a word: a decision the domain refuses is logged once at WARNING,
counted by reason in /metrics, and fires the failed-events alert."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.support.admin import ADMIN, TOKEN, alerts
from tests.support.approvals import wait_processed
from tests.support.flow import Flow, decision_event
from tests.support.metrics import metric, scrape
from tests.support.outbox import wait_until
from tests.support.processes import start_api


def lines_naming(log: str, event_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"event {event_id} " in line]


async def test_refusals_without_a_word_are_logged_once_counted_and_alerted(flow: Flow) -> None:
    api, base_url = start_api(
        flow.env(ADMIN_TOKEN=TOKEN, METRICS_REFRESH_INTERVAL_S="1"), flow.log_dir, "api-refusals"
    )
    flow.processes.append(api)
    flow.launch_relay()
    consumer = flow.launch_consumer()
    approved, other = (m["id"] for m in await flow.register_markets(base_url, 2))
    ghost = str(uuid.uuid4())
    events = [
        decision_event(approved, event_id="ok-1"),
        decision_event(approved, event_id="again-1"),
        decision_event(ghost, event_id="ghost-1"),
        decision_event(other, event_id="wrong-entity-1", entity_id=str(uuid.uuid4())),
        decision_event(other, event_id="odd-1", event_type="market.suspended"),
    ]
    await flow.enqueue_decisions(events)
    await wait_processed(flow.db, len(events))
    # The same refused decision delivered again: a duplicate, not a second refusal.
    await flow.xadd_decision(events[2], copies=2)

    async def duplicates_dropped() -> bool:
        summary = await flow.stream.xpending("entity-permissions:events", "market-approvals")
        entries = await flow.stream.xlen("entity-permissions:events")
        return bool(summary["pending"] == 0 and entries == len(events) + 2)

    await wait_until(duplicates_dropped, 30, "the duplicates read and acknowledged")
    consumer.wait_for_log("consuming")

    reasons = dict(await flow.db.fetch("SELECT event_id, processing_reason FROM processed_events"))
    assert reasons == {
        "ok-1": None,
        "again-1": "already_decided",
        "ghost-1": "unknown_market",
        "wrong-entity-1": "entity_mismatch",
        "odd-1": "unknown_event_type",
    }
    log = consumer.log_text()
    for event_id, market, reason in (
        ("again-1", approved, "already_decided"),
        ("ghost-1", ghost, "unknown_market"),
        ("wrong-entity-1", other, "entity_mismatch"),
    ):
        [line] = lines_naming(log, event_id)
        assert " WARNING " in line and f"for market {market} " in line and f"({reason})" in line
    [informational] = lines_naming(log, "odd-1")
    assert " INFO " in informational and "(unknown_event_type)" in informational
    assert not lines_naming(log, "ok-1")

    async with httpx.AsyncClient(base_url=base_url) as http:

        async def counted() -> bool:
            text = await scrape(http)
            return all(
                metric(text, "market_decisions_refused_recent", reason=reason, window="1h") == 1
                for reason in ("already_decided", "unknown_market", "entity_mismatch")
            )

        await wait_until(counted, 30, "the refusals counted by reason in /metrics")
        text = await scrape(http)
        assert metric(text, "market_decisions_refused_recent", reason="invalid_payload") == 0
        assert not re.search(r"market_decisions_refused_recent\{[^}]*unknown_event_type", text)
        # 3 refused of 5 events in the last hour: far over 5 %.
        assert (await alerts(http))["FailedEventRateHigh"]
        response = await http.get("/api/v1/admin/processed-events/ghost-1", headers=ADMIN)
        assert response.json()["processingReason"] == "unknown_market"
