"""1,000 decisions for 200 markets, 20 % of them duplicates, delivered by webhook and by
polling at once, applied by 3 consumers: the final state equals a model computed here."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict

import httpx

from app.markets.events import Announced
from tests.support.feed import API_KEY, polling
from tests.support.flow import Flow
from tests.support.outbox import wait_until
from tests.support.webhooks import WEBHOOK

MARKETS = 200
DELIVERIES = 1000
DUPLICATE_SHARE = 0.2


async def seed_markets(flow: Flow, count: int) -> dict[str, str]:
    """Pending markets straight in the database; market id -> entity id."""
    rows = await flow.db.fetch(
        """
        WITH new AS (
            INSERT INTO markets (id, name, issuer_id, entity_id, status)
            SELECT gen_random_uuid(), 'Model ' || g, gen_random_uuid(), gen_random_uuid(),
                   'pending_approval'
            FROM generate_series(1, $1) AS g
            RETURNING id, entity_id
        ), assets AS (
            INSERT INTO assets (id, market_id, asset_type, token_symbol, token_name,
                                total_supply, asset_details)
            SELECT gen_random_uuid(), id, 'real_estate', 'MODEL', 'Model', 1000, '{}' FROM new
        )
        SELECT id::text AS id, entity_id::text AS entity_id FROM new
        """,
        count,
    )
    return {row["id"]: row["entity_id"] for row in rows}


def decision(market_id: str, entity_id: str, approved: bool) -> dict[str, object]:
    verdict = "approved" if approved else "rejected"
    payload: dict[str, object] = {
        "market_id": market_id,
        "entity_id": entity_id,
        "decision": verdict,
    }
    if not approved:
        payload["reason"] = "model rejection"
    return {
        "event_id": f"model-{uuid.uuid4()}",
        "event_type": f"market.{verdict}",
        "source": "entity_permissions_core",
        "payload": payload,
        "context": {"actor_id": "model-admin"},
    }


async def test_concurrent_decisions_by_both_paths_end_as_the_model_says(flow: Flow) -> None:
    rng = random.Random(20261126)
    markets = await seed_markets(flow, MARKETS)
    unique = int(DELIVERIES * (1 - DUPLICATE_SHARE))
    ids = list(markets)
    # Every market gets at least one decision; some get several, which may disagree.
    events = [
        decision(ids[n % MARKETS], markets[ids[n % MARKETS]], rng.random() < 0.7)
        for n in range(unique)
    ]
    deliveries = events + [rng.choice(events) for _ in range(DELIVERIES - unique)]
    rng.shuffle(deliveries)
    by_webhook = deliveries[: DELIVERIES // 2]
    by_polling = deliveries[DELIVERIES // 2 :]

    _, api = flow.start_api()
    _, simulator = flow.start_simulator(EPC_API_KEY=API_KEY)
    flow.launch_relay()
    for slot in range(3):
        flow.launch_consumer(slot, **polling(simulator))

    async with (
        httpx.AsyncClient(base_url=simulator) as epc,
        httpx.AsyncClient(base_url=api) as http,
    ):
        gate = asyncio.Semaphore(16)

        async def post(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> int:
            async with gate:
                return (await client.post(path, json=body)).status_code

        codes = await asyncio.gather(
            *(post(http, WEBHOOK, body) for body in by_webhook),
            *(post(epc, "/api/v1/events", body) for body in by_polling),
        )
    assert set(codes) <= {200, 201}

    async def all_recorded() -> bool:
        count = await flow.db.fetchval("SELECT count(*) FROM processed_events")
        return bool(count == unique)

    await wait_until(all_recorded, 120, f"{unique} distinct events recorded")

    # The model: per market, exactly one of its decisions takes effect; all others are
    # skipped; every distinct event is recorded once, whichever path brought it first.
    decisions_of: defaultdict[str, set[str]] = defaultdict(set)
    for event in events:
        payload = event["payload"]
        assert isinstance(payload, dict)
        decisions_of[str(payload["market_id"])].add(str(payload["decision"]))
    statuses = Counter(
        r["processing_status"]
        for r in await flow.db.fetch("SELECT processing_status FROM processed_events")
    )
    assert statuses == {"success": MARKETS, "skipped": unique - MARKETS}
    rows = await flow.db.fetch(
        """
        SELECT m.id::text AS id, m.status, a.decision, count(*) OVER (PARTITION BY m.id) AS n
        FROM markets m JOIN market_approval_events a ON a.market_id = m.id
        """
    )
    assert len(rows) == MARKETS
    for row in rows:
        assert row["n"] == 1
        assert row["decision"] in decisions_of[row["id"]]
        assert row["status"] == ("active" if row["decision"] == "approved" else "rejected")
    outbound = Counter(
        r["event_type"]
        for r in await flow.db.fetch(
            "SELECT event_type FROM outbox WHERE stream = 'markets:events'"
        )
    )
    approved = sum(1 for row in rows if row["decision"] == "approved")
    assert outbound == {
        Announced.ACTIVATED: approved,
        Announced.TOKEN_DEPLOYMENT_REQUESTED: approved,
        Announced.REJECTED: MARKETS - approved,
    }
