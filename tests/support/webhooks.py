"""The webhook of Entity Permissions Core decisions: its path, the test's secret, the
seed's body, and what it stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

WEBHOOK = "/api/v1/webhooks/entity-permissions"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def seed_event(market_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """The seed's webhook test body."""
    body: dict[str, Any] = {
        "event_id": f"test-{uuid.uuid4()}",
        "event_type": "market.approved",
        "source": "entity_permissions_core",
        "payload": {
            "market_id": market_id or str(uuid.uuid4()),
            "entity_id": "9b2f7c1e-2222-4a5b-8c9d-0123456789ab",
            "decision": "approved",
        },
        "context": {"actor_id": "admin-uuid"},
    }
    body.update(changes)
    return body


async def stored(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE stream = 'entity-permissions:events'"
    )
    return count


async def clear_of_a_minute_boundary(needed_s: float = 15) -> None:
    """Wait, if need be, until the rest of the current minute lasts `needed_s`: the rate
    limit counts per wall-clock minute, and a test's requests must fall in one."""
    left = 60 - time.time() % 60
    if left < needed_s:
        await asyncio.sleep(left + 0.1)
