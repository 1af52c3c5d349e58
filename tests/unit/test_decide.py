"""decide() and read_decision(), table-driven: every market state by every decision."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.approvals.domain import (
    Decision,
    InvalidDecision,
    Reason,
    Status,
    decide,
    read_decision,
)
from app.markets.domain import Asset, AssetType, Market, MarketStatus
from app.markets.events import Announced, Decided
from outbox import EventEnvelope, new_event

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
NOW = CREATED + timedelta(days=2)
ENTITY = uuid.uuid4()


def _market(status: MarketStatus) -> Market:
    return Market(
        id=uuid.uuid4(),
        name="Harbour Lofts",
        issuer_id=uuid.uuid4(),
        entity_id=ENTITY,
        status=status,
        created_at=CREATED,
        updated_at=CREATED,
    )


def _asset(market: Market) -> Asset:
    return Asset(
        id=uuid.uuid4(),
        market_id=market.id,
        asset_type=AssetType.REAL_ESTATE,
        token_symbol="HBR",
        token_name="Harbour Lofts Token",
        total_supply=2**64,
        asset_details={},
    )


def _decision(market: Market, *, approved: bool, entity_id: uuid.UUID | None = ENTITY) -> Decision:
    return Decision(
        event_id="evt-1",
        market_id=market.id,
        approved=approved,
        entity_id=entity_id,
        reason=None if approved else "documents missing",
        actor_id="admin-7",
        occurred_at=NOW,
    )


# (state, approved) -> (status, reason); a success changes the market, nothing else does.
REFUSED_OR_APPLIED = [
    (MarketStatus.PENDING_APPROVAL, True, Status.SUCCESS, None),
    (MarketStatus.PENDING_APPROVAL, False, Status.SUCCESS, None),
    (MarketStatus.ACTIVE, True, Status.SKIPPED, Reason.ALREADY_DECIDED),
    (MarketStatus.ACTIVE, False, Status.SKIPPED, Reason.ALREADY_DECIDED),
    (MarketStatus.REJECTED, True, Status.SKIPPED, Reason.APPROVAL_AFTER_REJECTION),
    (MarketStatus.REJECTED, False, Status.SKIPPED, Reason.ALREADY_DECIDED),
]


@pytest.mark.parametrize(("state", "approved", "status", "reason"), REFUSED_OR_APPLIED)
@pytest.mark.parametrize("entity_id", [ENTITY, None], ids=["entity-given", "entity-absent"])
def test_every_state_and_decision(
    state: MarketStatus,
    approved: bool,
    status: Status,
    reason: Reason | None,
    entity_id: uuid.UUID | None,
) -> None:
    market = _market(state)
    verdict = decide(
        _decision(market, approved=approved, entity_id=entity_id), market, _asset(market), NOW
    )
    assert (verdict.status, verdict.reason) == (status, reason)
    if status is Status.SUCCESS:
        assert verdict.error is None
        assert verdict.market is not None
    else:
        assert verdict.error
        assert (verdict.market, verdict.events) == (None, [])


@pytest.mark.parametrize("state", list(MarketStatus))
@pytest.mark.parametrize("approved", [True, False], ids=["approve", "reject"])
def test_another_entity_fails_in_every_state(state: MarketStatus, approved: bool) -> None:
    market = _market(state)
    other = uuid.uuid4()
    verdict = decide(
        _decision(market, approved=approved, entity_id=other), market, _asset(market), NOW
    )
    assert (verdict.status, verdict.reason) == (Status.FAILED, Reason.ENTITY_MISMATCH)
    assert str(other) in (verdict.error or "")
    assert (verdict.market, verdict.events) == (None, [])


def test_approval_activates_and_requests_the_token() -> None:
    market = _market(MarketStatus.PENDING_APPROVAL)
    asset = _asset(market)
    verdict = decide(_decision(market, approved=True), market, asset, NOW)
    assert verdict.market is not None
    assert verdict.market.status is MarketStatus.ACTIVE
    assert (verdict.market.decided_by, verdict.market.decided_at) == ("admin-7", NOW)
    assert (verdict.market.updated_at, verdict.market.rejection_reason) == (NOW, None)
    assert [e.event_type for e in verdict.events] == [
        Announced.ACTIVATED,
        Announced.TOKEN_DEPLOYMENT_REQUESTED,
    ]
    activated, deployment = verdict.events
    assert activated.context == {"causation_id": "evt-1", "actor_id": "admin-7"}
    assert {e.aggregate_type for e in verdict.events} == {"market"}
    assert {e.aggregate_id for e in verdict.events} == {str(market.id)}
    # Supplies above 2**53 travel as text.
    assert deployment.payload["total_supply"] == str(2**64)
    assert deployment.payload["token_symbol"] == "HBR"


def test_rejection_records_the_reason() -> None:
    market = _market(MarketStatus.PENDING_APPROVAL)
    verdict = decide(_decision(market, approved=False), market, _asset(market), NOW)
    assert verdict.market is not None
    assert verdict.market.status is MarketStatus.REJECTED
    assert verdict.market.rejection_reason == "documents missing"
    [rejected] = verdict.events
    assert rejected.event_type == Announced.REJECTED
    assert rejected.payload["reason"] == "documents missing"
    assert rejected.payload["decided_by"] == "admin-7"


def _envelope(
    event_type: str, payload: dict[str, Any], context: dict[str, Any] | None = None
) -> EventEnvelope:
    return new_event(
        event_id="evt-1",
        event_type=event_type,
        source="entity_permissions_core",
        aggregate_type="market",
        aggregate_id="m",
        payload=payload,
        context=context,
        occurred_at=NOW,
    )


MARKET_ID = uuid.uuid4()


@pytest.mark.parametrize(
    ("event_type", "decision", "approved"),
    [(Decided.APPROVED, "approved", True), (Decided.REJECTED, "rejected", False)],
)
def test_a_decision_agreeing_with_its_event_type_is_read(
    event_type: str, decision: str, approved: bool
) -> None:
    read = read_decision(
        _envelope(
            event_type,
            {"market_id": str(MARKET_ID), "decision": decision},
            {"actor_id": "admin-7"},
        )
    )
    assert read is not None
    assert (read.market_id, read.approved, read.actor_id) == (MARKET_ID, approved, "admin-7")
    # Accepted before entity_id was required: read without it, checked when given.
    assert read.entity_id is None


@pytest.mark.parametrize(
    ("event_type", "decision"),
    [(Decided.APPROVED, "rejected"), (Decided.REJECTED, "approved")],
)
def test_a_decision_contradicting_its_event_type_is_invalid(event_type: str, decision: str) -> None:
    with pytest.raises(InvalidDecision, match=f"contradicts {event_type}"):
        read_decision(_envelope(event_type, {"market_id": str(MARKET_ID), "decision": decision}))


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"market_id": "not-a-uuid", "decision": "approved"},
        {"market_id": str(MARKET_ID), "decision": "maybe"},
        {"market_id": str(MARKET_ID)},
    ],
)
def test_an_unreadable_payload_is_invalid(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidDecision, match="invalid payload"):
        read_decision(_envelope(Decided.APPROVED, payload))


@pytest.mark.parametrize(
    "event_type", [Announced.REGISTERED, Announced.ACTIVATED, "entity.updated"]
)
def test_other_event_types_carry_no_decision(event_type: str) -> None:
    assert read_decision(_envelope(event_type, {"anything": 1})) is None
