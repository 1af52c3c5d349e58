"""Counting, not sampling: the end state of a run against everything that was accepted."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

import asyncpg
import redis.asyncio as redis

from app.markets.events import Announced
from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from tests.support.load import Accepted
from tests.support.outbox import check_stream_against_outbox, read_stream, unpublished

CONSUMER_GROUP = "market-approvals"
OUTBOUND = {
    "approved": Counter(
        {
            Announced.REGISTERED: 1,
            Announced.APPROVAL_REQUESTED: 1,
            Announced.ACTIVATED: 1,
            Announced.TOKEN_DEPLOYMENT_REQUESTED: 1,
        }
    ),
    "rejected": Counter(
        {Announced.REGISTERED: 1, Announced.APPROVAL_REQUESTED: 1, Announced.REJECTED: 1}
    ),
}
FINAL_STATUS = {"approved": "active", "rejected": "rejected"}


@dataclass(frozen=True)
class Tally:
    markets: int
    decisions: int
    stream_entries: int
    stream_duplicates: int


async def group_settled(
    client: redis.Redis, stream: str = ENTITY_PERMISSIONS_EVENTS, group: str = CONSUMER_GROUP
) -> bool:
    """The group has read every entry ever added to the stream and acknowledged them all.

    A missing stream or group is not settled (Redis restarted, nothing read yet), nor is
    a group that has read nothing (its entries-read is unknown). Entries read are
    compared with the entries ever added, which is the stream's length unless it was
    trimmed: trimming removes only what the group has acknowledged.
    """
    try:
        info = await client.xinfo_stream(stream)
        groups = await client.xinfo_groups(stream)
    except redis.ResponseError:
        return False  # the stream is gone (Redis restarted) until something refills it
    ours = [g for g in groups if g["name"] == group]
    if not ours:
        return False
    [state] = ours
    return bool(
        state["lag"] == 0
        and state["entries-read"] is not None
        and state["entries-read"] == info["entries-added"]
        and state["pending"] == 0
    )


async def settled(
    db: asyncpg.Connection, client: redis.Redis, accepted: Accepted, *, unreadable: int = 0
) -> bool:
    """Every decision applied, every outbox row published, every entry read and
    acknowledged; and at least `unreadable` deliveries recorded unreadable, those the
    caller made (the poller may store them after every decision is applied)."""
    decided = [uuid.UUID(market) for market in accepted.decisions]
    applied = await db.fetchval(
        "SELECT count(*) FROM markets WHERE id = ANY($1) AND status <> 'pending_approval'",
        decided,
    )
    if applied != len(decided) or await unpublished(db):
        return False
    if unreadable and await recorded_unreadable(db) < unreadable:
        return False
    return await group_settled(client)


async def recorded_unreadable(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM processed_events WHERE processing_reason = 'unreadable'"
    )
    return count


async def count_everything(
    db: asyncpg.Connection,
    client: redis.Redis,
    accepted: Accepted,
    *,
    outbox_kept: bool = True,
    trimmed: tuple[str, ...] = (),
    unreadable: int = 0,
) -> Tally:
    """Assert the end state equals what was accepted; `outbox_kept=False` when retention
    has deleted old outbox and processed_events rows during the run; `trimmed`: streams
    trimmed during the run, not compared with the outbox entry by entry; `unreadable`:
    how many unreadable deliveries were recorded `failed` besides the decisions."""
    assert not accepted.unexpected, f"unexpected answers: {dict(accepted.unexpected)}"
    stored = {str(r["id"]) for r in await db.fetch("SELECT id FROM markets")}
    assert stored == accepted.markets, (
        f"{len(stored - accepted.markets)} markets stored but never acknowledged, "
        f"{len(accepted.markets - stored)} acknowledged but not stored"
    )
    assert accepted.decisions.keys() == accepted.markets, "a registered market was never decided"

    # Each decision applied exactly once: its status, one history row, one processed event.
    rows = await db.fetch(
        """
        SELECT m.id::text AS market_id, m.status, a.event_id, a.decision
        FROM markets m LEFT JOIN market_approval_events a ON a.market_id = m.id
        """
    )
    history: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        expected_status = FINAL_STATUS[accepted.decisions[row["market_id"]][1]]
        assert row["status"] == expected_status, f"market {row['market_id']}: {row['status']}"
        history[row["market_id"]].append((row["event_id"], row["decision"]))
    for market, applied in history.items():
        assert applied == [accepted.decisions[market]], f"market {market}: history {applied}"
    if outbox_kept:
        processed = await db.fetch(
            "SELECT event_id, processing_status FROM processed_events"
            " WHERE processing_reason IS DISTINCT FROM 'unreadable'"
        )
        found = await recorded_unreadable(db)
        assert found == unreadable, f"{found} unreadable records, {unreadable} expected"
        assert Counter(r["processing_status"] for r in processed) == {
            "success": len(accepted.decisions)
        }
        assert {r["event_id"] for r in processed} == {e for e, _ in accepted.decisions.values()}
        for stream in (MARKETS_EVENTS, ENTITY_PERMISSIONS_EVENTS):
            if stream not in trimmed:
                await check_stream_against_outbox(db, client, stream)
    assert await unpublished(db) == 0
    assert await client.xlen(ENTITY_PERMISSIONS_DEAD) == 0, "an entry was dead-lettered"

    # Every market's events on markets:events: each distinct event once per market.
    entries = await read_stream(client, MARKETS_EVENTS)
    distinct = {(f["event_id"], f["aggregate_id"], f["event_type"]) for f in entries}
    per_market: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for _, market, event_type in distinct:
        per_market[market][event_type] += 1
    assert per_market.keys() == accepted.markets, "markets:events misses a market's events"
    for market, (_, verdict) in accepted.decisions.items():
        assert per_market[market] == OUTBOUND[verdict], f"market {market}: {per_market[market]}"
    return Tally(
        markets=len(stored),
        decisions=len(accepted.decisions),
        stream_entries=len(entries),
        stream_duplicates=len(entries) - len(distinct),
    )
