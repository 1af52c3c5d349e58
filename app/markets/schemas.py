"""The wire format of the markets API: camelCase JSON, validated with msgspec."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.app_error import FieldError
from app.markets.domain import (
    SYMBOL_PATTERN,
    Asset,
    AssetType,
    Market,
    MarketStatus,
    RegisterMarket,
    Registration,
)
from app.validation import RequestValidationError
from app.wire import WireStruct

# Token contracts hold their supply in an unsigned 256-bit integer.
MAX_TOTAL_SUPPLY = 2**256 - 1

PositiveInteger = Annotated[int, msgspec.Meta(gt=0, description="A JSON integer of any size")]
DecimalDigits = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[1-9][0-9]{0,77}$",
        description="The same integer as decimal digits, for clients whose numbers are doubles",
    ),
]


class RegisterMarketRequest(WireStruct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    issuer_id: uuid.UUID
    asset_type: AssetType
    token_symbol: Annotated[
        str,
        msgspec.Meta(pattern=SYMBOL_PATTERN, description="2-11 upper-case letters or digits"),
    ]
    token_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    total_supply: PositiveInteger | DecimalDigits
    entity_id: uuid.UUID
    asset_details: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_command(self) -> RegisterMarket:
        supply = int(self.total_supply)
        if supply > MAX_TOTAL_SUPPLY:
            raise RequestValidationError(
                [FieldError("totalSupply", "must be at most 2^256 - 1 (a uint256)")]
            )
        return RegisterMarket(
            name=self.name,
            issuer_id=self.issuer_id,
            entity_id=self.entity_id,
            asset_type=self.asset_type,
            token_symbol=self.token_symbol,
            token_name=self.token_name,
            total_supply=supply,
            asset_details=self.asset_details,
        )


class MarketView(WireStruct, frozen=True):
    id: uuid.UUID
    name: str
    issuer_id: uuid.UUID
    entity_id: uuid.UUID
    status: MarketStatus
    rejection_reason: str | None
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, market: Market) -> MarketView:
        return cls(**msgspec.structs.asdict(market))


class AssetView(WireStruct, frozen=True):
    id: uuid.UUID
    market_id: uuid.UUID
    asset_type: AssetType
    token_symbol: str
    token_name: str
    total_supply: Annotated[str, msgspec.Meta(description="Exact decimal digits")]
    asset_details: dict[str, Any]

    @classmethod
    def of(cls, asset: Asset) -> AssetView:
        fields = msgspec.structs.asdict(asset)
        fields["total_supply"] = str(asset.total_supply)
        return cls(**fields)


class RegistrationView(WireStruct, frozen=True):
    market: MarketView
    asset: AssetView

    @classmethod
    def of(cls, registration: Registration) -> RegistrationView:
        return cls(
            market=MarketView.of(registration.market), asset=AssetView.of(registration.asset)
        )


class ApprovalEventView(WireStruct, frozen=True):
    event_id: str
    decision: str
    actor_id: str | None
    reason: str | None
    occurred_at: datetime
    processed_at: datetime


class MarketDetailView(WireStruct, frozen=True):
    market: MarketView
    asset: AssetView
    approval_history: list[ApprovalEventView]
