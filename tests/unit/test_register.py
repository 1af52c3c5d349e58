"""register_market() and the request it is built from: valid input and each refusal."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.markets.domain import MarketStatus, RegisterMarket, register_market
from app.markets.events import Announced
from app.markets.schemas import RegisterMarketRequest
from app.validation import RequestValidationError, decode_body

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ISSUER, ENTITY = uuid.uuid4(), uuid.uuid4()
VALID: dict[str, Any] = {
    "name": "Harbour Lofts",
    "issuerId": str(ISSUER),
    "entityId": str(ENTITY),
    "assetType": "real_estate",
    "tokenSymbol": "HBR",
    "tokenName": "Harbour Lofts Token",
    "totalSupply": 2**64,
    "assetDetails": {"city": "Lisbon"},
}


def _command(body: dict[str, Any]) -> RegisterMarket:
    return decode_body(json.dumps(body).encode(), RegisterMarketRequest).to_command()


def test_a_valid_request_registers_a_pending_market_and_asks_for_approval() -> None:
    context = {"correlation_id": "req-1"}
    registration, events = register_market(_command(VALID), NOW, context)
    market, asset = registration.market, registration.asset
    assert market.status is MarketStatus.PENDING_APPROVAL
    assert (market.issuer_id, market.entity_id, market.name) == (ISSUER, ENTITY, "Harbour Lofts")
    assert (market.created_at, market.updated_at, market.decided_at) == (NOW, NOW, None)
    assert asset.market_id == market.id
    assert (asset.token_symbol, asset.total_supply) == ("HBR", 2**64)
    assert [e.event_type for e in events] == [Announced.REGISTERED, Announced.APPROVAL_REQUESTED]
    assert {e.aggregate_type for e in events} == {"market"}
    assert {e.aggregate_id for e in events} == {str(market.id)}
    assert all(e.context == context for e in events)
    registered, requested = events
    # Supplies above 2**53 travel as text.
    assert registered.payload["asset"]["total_supply"] == str(2**64)
    assert requested.payload["entity_id"] == str(ENTITY)
    assert requested.payload["market_name"] == "Harbour Lofts"


def test_each_registration_is_a_new_market() -> None:
    first, _ = register_market(_command(VALID), NOW, {})
    second, _ = register_market(_command(VALID), NOW, {})
    assert first.market.id != second.market.id
    assert first.asset.id != second.asset.id


@pytest.mark.parametrize(
    "supply",
    [1, "1", str(2**256 - 1), 2**256 - 1],
    ids=["one", "digits", "uint256-max-digits", "uint256-max"],
)
def test_every_supply_a_token_holds_is_taken(supply: int | str) -> None:
    assert _command({**VALID, "totalSupply": supply}).total_supply == int(supply)


# (change to the valid request, the field named in the refusal)
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-name", {"name": ""}, "name"),
    ("long-name", {"name": "x" * 201}, "name"),
    ("issuer-not-uuid", {"issuerId": "issuer"}, "issuerId"),
    ("entity-not-uuid", {"entityId": 7}, "entityId"),
    ("unknown-asset-type", {"assetType": "spaceship"}, "assetType"),
    ("lower-case-symbol", {"tokenSymbol": "hbr"}, "tokenSymbol"),
    ("one-letter-symbol", {"tokenSymbol": "H"}, "tokenSymbol"),
    ("twelve-letter-symbol", {"tokenSymbol": "ABCDEFGHIJKL"}, "tokenSymbol"),
    ("empty-token-name", {"tokenName": ""}, "tokenName"),
    ("zero-supply", {"totalSupply": 0}, "totalSupply"),
    ("negative-supply", {"totalSupply": -5}, "totalSupply"),
    ("leading-zero-digits", {"totalSupply": "0100"}, "totalSupply"),
    ("above-uint256", {"totalSupply": 2**256}, "totalSupply"),
    ("fractional-supply", {"totalSupply": 1.5}, "totalSupply"),
    ("details-not-object", {"assetDetails": []}, "assetDetails"),
    ("unknown-field", {"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in REFUSALS], ids=[i for i, _, _ in REFUSALS]
)
def test_each_refusal_names_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestValidationError) as refused:
        _command({**VALID, **change})
    assert [e.field for e in refused.value.errors] == [field]


@pytest.mark.parametrize("missing", sorted(set(VALID) - {"assetDetails"}))
def test_each_required_field_is_named_when_missing(missing: str) -> None:
    body = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(RequestValidationError) as refused:
        _command(body)
    assert [(e.field, e.reason) for e in refused.value.errors] == [(missing, "required")]


def test_every_wrong_field_is_named_at_once() -> None:
    with pytest.raises(RequestValidationError) as refused:
        _command({**VALID, "name": "", "tokenSymbol": "x", "totalSupply": 0})
    assert {e.field for e in refused.value.errors} == {"name", "tokenSymbol", "totalSupply"}


@pytest.mark.parametrize("raw", [b"[]", b"not json", b'"text"'])
def test_a_body_that_is_not_an_object_is_refused(raw: bytes) -> None:
    with pytest.raises(RequestValidationError) as refused:
        decode_body(raw, RegisterMarketRequest)
    assert [e.field for e in refused.value.errors] == ["body"]
