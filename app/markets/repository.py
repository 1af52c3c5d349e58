"""Markets and their assets in PostgreSQL, within the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec

from app.markets.domain import Asset, Market, Registration


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    decision: str
    actor_id: str | None
    reason: str | None
    occurred_at: datetime
    processed_at: datetime


_SELECT_REGISTRATION = """
SELECT m.id, m.name, m.issuer_id, m.entity_id, m.status, m.rejection_reason, m.decided_by,
       m.decided_at, m.created_at, m.updated_at,
       a.id AS asset_id, a.asset_type, a.token_symbol, a.token_name, a.total_supply,
       a.asset_details
FROM markets m JOIN assets a ON a.market_id = m.id
WHERE m.id = $1
"""


class MarketRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
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

    async def get(self, market_id: uuid.UUID) -> Registration | None:
        row = await self._connection.fetchrow(_SELECT_REGISTRATION, market_id)
        if row is None:
            return None
        market = Market(
            id=row["id"],
            name=row["name"],
            issuer_id=row["issuer_id"],
            entity_id=row["entity_id"],
            status=row["status"],
            rejection_reason=row["rejection_reason"],
            decided_by=row["decided_by"],
            decided_at=row["decided_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        asset = Asset(
            id=row["asset_id"],
            market_id=row["id"],
            asset_type=row["asset_type"],
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
