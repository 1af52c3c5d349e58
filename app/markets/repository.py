"""Markets and their assets in PostgreSQL, within the caller's transaction."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import asyncpg
import msgspec

from app.db import Connection
from app.markets.domain import (
    SYMBOL_PATTERN,
    Asset,
    AssetType,
    Market,
    MarketStatus,
    Registration,
)


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    decision: str
    actor_id: str | None
    reason: str | None
    occurred_at: datetime
    processed_at: datetime


_SELECT_REGISTRATIONS = """
SELECT m.id, m.name, m.issuer_id, m.entity_id, m.status, m.rejection_reason, m.decided_by,
       m.decided_at, m.created_at, m.updated_at,
       a.id AS asset_id, a.asset_type, a.token_symbol, a.token_name, a.total_supply,
       a.asset_details
FROM markets m JOIN assets a ON a.market_id = m.id
"""


TOKEN_SYMBOL = re.compile(SYMBOL_PATTERN)


class MarketCursor(NamedTuple):
    """Where a page of markets, newest first, ends: its last market's created_at and id."""

    created_at: datetime
    id: uuid.UUID


def search_clauses(search: str) -> list[tuple[str, object]]:
    """The ways a search matches a market, each one SQL condition on one index: an id is
    a market's or its issuer's; text is the start of a name (any case) or a token symbol."""
    try:
        as_id = uuid.UUID(search)
    except ValueError:
        pass
    else:
        return [("m.id = $?", as_id), ("m.issuer_id = $?", as_id)]
    pattern = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    clauses: list[tuple[str, object]] = [("lower(m.name) LIKE $?", pattern + "%")]
    if TOKEN_SYMBOL.fullmatch(search.upper()):
        clauses.append(("a.token_symbol = $?", search.upper()))
    return clauses


class MarketRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def add(self, registration: Registration) -> None:
        market, asset = registration.market, registration.asset
        await self._connection.execute(
            """
            WITH new_market AS (
                INSERT INTO markets (id, name, issuer_id, entity_id, status, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $6)
                RETURNING id
            )
            INSERT INTO assets (id, market_id, asset_type, token_symbol, token_name,
                                total_supply, asset_details)
            SELECT $7, id, $8, $9, $10, $11, $12 FROM new_market
            """,
            market.id,
            market.name,
            market.issuer_id,
            market.entity_id,
            market.status.value,
            market.created_at,
            asset.id,
            asset.asset_type.value,
            asset.token_symbol,
            asset.token_name,
            Decimal(asset.total_supply),
            asset.asset_details,
        )

    async def page(
        self,
        *,
        status: MarketStatus | None = None,
        search: str | None = None,
        before: MarketCursor | None = None,
        limit: int = 50,
    ) -> tuple[list[Registration], MarketCursor | None]:
        """Markets newest first, after `before` (keyset), of a status and matching a search.

        Each way a search can match is its own query, merged here: one condition per
        query lets the planner pick its index (a rare name by the name index, a common one
        by creation order), where an OR across tables would read every market.
        """
        ways = search_clauses(search) if search else [("TRUE", None)]
        found: dict[uuid.UUID, asyncpg.Record] = {}
        for clause, value in ways:
            for row in await self._page_where(clause, value, status, before, limit + 1):
                found.setdefault(row["id"], row)
        rows = sorted(found.values(), key=lambda r: (r["created_at"], r["id"]), reverse=True)
        items = [self._registration(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return items, None
        last = items[-1].market
        return items, MarketCursor(last.created_at, last.id)

    async def _page_where(
        self,
        clause: str,
        value: object,
        status: MarketStatus | None,
        before: MarketCursor | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        args: list[object] = []
        conditions = []
        if value is not None:
            args.append(value)
            conditions.append(clause.replace("$?", f"${len(args)}"))
        if status is not None:
            args.append(status.value)
            conditions.append(f"m.status = ${len(args)}")
        if before is not None:
            args.extend(before)
            conditions.append(f"(m.created_at, m.id) < (${len(args) - 1}, ${len(args)})")
        where = " AND ".join(conditions) or "TRUE"
        args.append(limit)
        return await self._connection.fetch(
            f"{_SELECT_REGISTRATIONS} WHERE {where}"
            f" ORDER BY m.created_at DESC, m.id DESC LIMIT ${len(args)}",
            *args,
        )

    async def get(self, market_id: uuid.UUID) -> Registration | None:
        row = await self._connection.fetchrow(_SELECT_REGISTRATIONS + " WHERE m.id = $1", market_id)
        return None if row is None else self._registration(row)

    async def lock_many(self, market_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Registration]:
        """Markets with their rows locked until the transaction ends, taken in id order.

        Every writer of a market holds its row, so a market's events commit in order;
        locking in id order keeps two transactions from deadlocking.
        """
        if not market_ids:
            return {}
        rows = await self._connection.fetch(
            _SELECT_REGISTRATIONS + " WHERE m.id = ANY($1) ORDER BY m.id FOR UPDATE OF m",
            sorted(market_ids),
        )
        return {row["id"]: self._registration(row) for row in rows}

    async def save_decisions(self, markets: Sequence[Market]) -> None:
        await self._connection.execute(
            """
            UPDATE markets AS m
            SET status = d.status, rejection_reason = d.rejection_reason,
                decided_by = d.decided_by, decided_at = d.decided_at, updated_at = d.updated_at
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                        $6::timestamptz[])
                 AS d(id, status, rejection_reason, decided_by, decided_at, updated_at)
            WHERE m.id = d.id
            """,
            [m.id for m in markets],
            [m.status.value for m in markets],
            [m.rejection_reason for m in markets],
            [m.decided_by for m in markets],
            [m.decided_at for m in markets],
            [m.updated_at for m in markets],
        )

    async def record_approvals(self, records: Sequence[tuple[uuid.UUID, ApprovalRecord]]) -> None:
        await self._connection.execute(
            """
            INSERT INTO market_approval_events (market_id, event_id, decision, actor_id, reason,
                                                occurred_at, processed_at)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::timestamptz[], $7::timestamptz[])
            """,
            [market_id for market_id, _ in records],
            [r.event_id for _, r in records],
            [r.decision for _, r in records],
            [r.actor_id for _, r in records],
            [r.reason for _, r in records],
            [r.occurred_at for _, r in records],
            [r.processed_at for _, r in records],
        )

    @staticmethod
    def _registration(row: asyncpg.Record) -> Registration:
        market = Market(
            id=row["id"],
            name=row["name"],
            issuer_id=row["issuer_id"],
            entity_id=row["entity_id"],
            status=MarketStatus(row["status"]),
            rejection_reason=row["rejection_reason"],
            decided_by=row["decided_by"],
            decided_at=row["decided_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        asset = Asset(
            id=row["asset_id"],
            market_id=row["id"],
            asset_type=AssetType(row["asset_type"]),
            token_symbol=row["token_symbol"],
            token_name=row["token_name"],
            total_supply=int(row["total_supply"]),
            asset_details=row["asset_details"],
        )
        return Registration(market=market, asset=asset)

    async def approval_history(self, market_id: uuid.UUID) -> list[ApprovalRecord]:
        rows = await self._connection.fetch(
            """
            SELECT event_id, decision, actor_id, reason, occurred_at, processed_at
            FROM market_approval_events WHERE market_id = $1 ORDER BY processed_at, id
            """,
            market_id,
        )
        return [ApprovalRecord(**dict(row)) for row in rows]
