"""What the approval consumers have done: events processed, entries pending in their
group, markets made active."""

from __future__ import annotations

import uuid

import asyncpg

from outbox import ENTITY_PERMISSIONS_EVENTS
from tests.support.flow import Flow
from tests.support.outbox import wait_until

GROUP = "market-approvals"


async def wait_processed(db: asyncpg.Connection, count: int) -> None:
    async def recorded() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM processed_events") >= count)

    await wait_until(recorded, 60, f"{count} processed events")


async def pending(flow: Flow) -> int:
    summary = await flow.stream.xpending(ENTITY_PERMISSIONS_EVENTS, GROUP)
    return int(summary["pending"])


async def all_active(flow: Flow, market_ids: list[str], within: float = 60) -> None:
    ids = [uuid.UUID(m) for m in market_ids]

    async def active() -> bool:
        count = await flow.db.fetchval(
            "SELECT count(*) FROM markets WHERE id = ANY($1) AND status = 'active'", ids
        )
        return bool(count == len(ids))

    await wait_until(active, within, f"{len(ids)} markets to become active")
