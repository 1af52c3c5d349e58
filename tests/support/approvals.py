"""What the approval consumers have done: events processed, entries pending in their
group, markets made active."""

from __future__ import annotations

import uuid
from typing import NamedTuple

import asyncpg

from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS
from tests.support.flow import Flow, decision_event
from tests.support.outbox import wait_until
from tests.support.processes import ManagedProcess

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


def poison(market_id: str, event_id: str = "poison") -> dict[str, str]:
    """The stream fields of a decision that fails on every delivery: PostgreSQL cannot
    store the NUL character of its reason."""
    return decision_event(market_id, "rejected", event_id=event_id, reason="\x00").stream_fields(0)


async def poison_record(flow: Flow, event_id: str = "poison") -> asyncpg.Record | None:
    return await flow.db.fetchrow("SELECT * FROM processed_events WHERE event_id = $1", event_id)


class Poisoned(NamedTuple):
    api: str  # the API's base URL
    market_id: str  # the market the poison entry decides
    consumer: ManagedProcess
    entry_id: str  # the poison entry's stream id


async def poisoned_consumer(flow: Flow, *, dead_letters_fail: bool = False) -> Poisoned:
    """An API with one market, and a consumer (3 deliveries at most, a pending entry
    claimed after 200 ms) given a `poison` entry for it. With `dead_letters_fail`, the
    dead-letter stream's key holds a string first, so that every read of it and append
    to it fails (WRONGTYPE)."""
    _, api = flow.start_api()
    [market] = await flow.register_markets(api, 1)
    if dead_letters_fail:
        await flow.stream.set(ENTITY_PERMISSIONS_DEAD, "not a stream")
    consumer = flow.launch_consumer(0, MAX_DELIVERIES="3", CLAIM_IDLE_MS="200")
    consumer.wait_for_log("consuming")
    entry_id = await flow.stream.xadd(ENTITY_PERMISSIONS_EVENTS, poison(market["id"]))
    return Poisoned(api, market["id"], consumer, entry_id)
