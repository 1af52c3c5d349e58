"""Market rules and the events they produce, free of HTTP and storage."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import msgspec

from app.markets.events import AGGREGATE_TYPE, Announced
from outbox import EventEnvelope, new_event

SOURCE = "market_backend"
SYMBOL_PATTERN = r"^[A-Z0-9]{2,11}$"  # a token symbol: 2-11 upper-case letters or digits


class MarketStatus(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    REJECTED = "rejected"


class AssetType(enum.StrEnum):
    """The kinds of asset a market may tokenise."""

    REAL_ESTATE = "real_estate"
    EQUITY = "equity"
    DEBT = "debt"
    FUND = "fund"
    COMMODITY = "commodity"
    ART = "art"
    COLLECTIBLE = "collectible"
    OTHER = "other"


class RegisterMarket(msgspec.Struct, frozen=True, kw_only=True):
    """An issuer's request to open a market for one tokenised asset."""

    name: str
    issuer_id: uuid.UUID
    entity_id: uuid.UUID
    asset_type: AssetType
    token_symbol: str
    token_name: str
    total_supply: int
    asset_details: dict[str, Any]


class Market(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    issuer_id: uuid.UUID
    entity_id: uuid.UUID
    status: MarketStatus
    created_at: datetime
    updated_at: datetime
    rejection_reason: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    market_id: uuid.UUID
    asset_type: AssetType
    token_symbol: str
    token_name: str
    total_supply: int
    asset_details: dict[str, Any]


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    market: Market
    asset: Asset


def register_market(
    command: RegisterMarket, now: datetime, context: dict[str, Any]
) -> tuple[Registration, list[EventEnvelope]]:
    """A new market awaiting approval, with the events announcing it and requesting approval.

    Approval is never awaited here: an administrator decides in Entity Permissions
    Core, minutes or days later, and the decision arrives as an event of its own.
    """
    market = Market(
        id=uuid.uuid4(),
        name=command.name,
        issuer_id=command.issuer_id,
        entity_id=command.entity_id,
        status=MarketStatus.PENDING_APPROVAL,
        created_at=now,
        updated_at=now,
    )
    asset = Asset(
        id=uuid.uuid4(),
        market_id=market.id,
        asset_type=command.asset_type,
        token_symbol=command.token_symbol,
        token_name=command.token_name,
        total_supply=command.total_supply,
        asset_details=command.asset_details,
    )
    registration = Registration(market=market, asset=asset)
    snapshot = msgspec.to_builtins(registration)
    # Supplies above 2**53 lose precision in many JSON readers: events carry them as text.
    snapshot["asset"]["total_supply"] = str(asset.total_supply)
    events = [
        market_event(Announced.REGISTERED, market, now, context, snapshot),
        market_event(
            Announced.APPROVAL_REQUESTED,
            market,
            now,
            context,
            {
                "market_id": str(market.id),
                "entity_id": str(market.entity_id),
                "issuer_id": str(market.issuer_id),
                "market_name": market.name,
                "token_symbol": asset.token_symbol,
                "requested_at": snapshot["market"]["created_at"],
            },
        ),
    ]
    return registration, events


def market_event(
    event_type: str,
    market: Market,
    now: datetime,
    context: dict[str, Any],
    payload: dict[str, Any],
) -> EventEnvelope:
    return new_event(
        event_type=event_type,
        source=SOURCE,
        aggregate_type=AGGREGATE_TYPE,
        aggregate_id=str(market.id),
        payload=payload,
        context=context,
        occurred_at=now,
    )
