"""The Entity Permissions Core simulator as a test drives it: the consumer's settings to
poll it, its approval requests, its faults, and documents put on its feed."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.outbox import wait_until

API_KEY = "test-epc-key"
ENTITY = "9b2f7c1e-2222-4a5b-8c9d-0123456789ab"  # the entity of every market seed_body registers


def polling(simulator: str, **overrides: str) -> dict[str, str]:
    """A consumer process that also polls the simulator's feed."""
    return {
        "PERMISSIONS_SERVICE_BASE_URL": simulator,
        "PERMISSIONS_SERVICE_API_KEY": API_KEY,
        "PERMISSIONS_POLL_INTERVAL_S": "0.2",
        **overrides,
    }


async def requested(simulator: str, market_ids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=simulator) as http:

        async def listed() -> bool:
            pending = (await http.get("/api/v1/requests", params={"status": "pending"})).json()
            return set(market_ids) <= {r["market_id"] for r in pending}

        await wait_until(listed, 60, "the simulator to list the approval requests")


async def approve(simulator: str, market_ids: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=simulator) as http:
        events = []
        for market_id in market_ids:
            response = await http.post(f"/api/v1/requests/{market_id}/approve", json={})
            assert response.status_code == 200, response.text
            events.append(response.json())
        return events


async def set_faults(simulator: str, **faults: Any) -> None:
    async with httpx.AsyncClient(base_url=simulator) as http:
        (await http.put("/api/v1/faults", json=faults)).raise_for_status()


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
