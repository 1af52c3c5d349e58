"""What a decision does to a market, free of Redis and PostgreSQL.

Each inbound event ends in one of the statuses of docs/async-approval-flow.md:
`success` (the market changed), `skipped` (nothing to change: already decided, or an
event type we do not act on) or `failed` (it cannot be applied: invalid payload, unknown
market), and, when it was not applied, a Reason. A refusal is a decision we would not
apply: every `failed`, and a decision for a market already decided. An approver may be
waiting on it, so each is logged and counted, and the failed-events alert counts them.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec

from app.inbound.events import AcceptedDecisionPayload, contradiction
from app.markets.domain import Asset, Market, MarketStatus, market_event
from app.markets.events import DECISION_OF_EVENT, Announced
from outbox import EventEnvelope


class Status(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class Reason(enum.StrEnum):
    """Why an inbound event was not applied (processed_events.processing_reason)."""

    UNKNOWN_MARKET = "unknown_market"
    ENTITY_MISMATCH = "entity_mismatch"  # the decision's entity_id is not the market's
    INVALID_PAYLOAD = "invalid_payload"
    UNREADABLE = "unreadable"  # not an event at all (a feed document, a stream entry)
    DEAD_LETTERED = "dead_lettered"  # failed MAX_DELIVERIES times
    ALREADY_DECIDED = "already_decided"
    APPROVAL_AFTER_REJECTION = "approval_after_rejection"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"  # recorded for the audit, nothing to do


# Decisions recorded `skipped` that we refused: the market was already decided.
REFUSED_SKIPS: frozenset[Reason] = frozenset(
    {Reason.ALREADY_DECIDED, Reason.APPROVAL_AFTER_REJECTION}
)
# Events we refused to apply (every `failed` one, and the refused skips), as opposed to
# events that ask nothing of us.
REFUSALS: frozenset[Reason] = frozenset(Reason) - {Reason.UNKNOWN_EVENT_TYPE}


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    market_id: uuid.UUID
    approved: bool
    entity_id: uuid.UUID | None
    reason: str | None
    actor_id: str | None
    occurred_at: datetime


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for one event: its status, why, and what changes if it succeeded."""

    status: Status
    error: str | None = None
    reason: Reason | None = None
    market: Market | None = None
    events: list[EventEnvelope] = msgspec.field(default_factory=list)


class InvalidDecision(ValueError):
    """The event cannot be read as a decision; it is recorded `failed`."""


def read_decision(envelope: EventEnvelope) -> Decision | None:
    """The decision an inbound event carries; None for event types we do not act on."""
    expected = DECISION_OF_EVENT.get(envelope.event_type)
    if expected is None:
        return None
    try:
        payload = msgspec.convert(envelope.payload, AcceptedDecisionPayload)
    except msgspec.ValidationError as error:
        raise InvalidDecision(f"invalid payload: {error}") from error
    if disagreement := contradiction(envelope.event_type, payload.decision):
        raise InvalidDecision(f"invalid payload: decision {disagreement}")
    actor = envelope.context.get("actor_id")
    return Decision(
        event_id=envelope.event_id,
        market_id=payload.market_id,
        approved=payload.decision == "approved",
        entity_id=payload.entity_id,
        reason=payload.reason,
        actor_id=str(actor) if actor is not None else None,
        occurred_at=envelope.occurred_at,
    )


def decide(decision: Decision, market: Market, asset: Asset, now: datetime) -> Verdict:
    """Apply a decision to a market awaiting one; anything else is skipped or failed."""
    if decision.entity_id is not None and decision.entity_id != market.entity_id:
        return Verdict(
            status=Status.FAILED,
            error=f"entity_id {decision.entity_id} is not the market's ({market.entity_id})",
            reason=Reason.ENTITY_MISMATCH,
        )
    if market.status == MarketStatus.REJECTED and decision.approved:
        return Verdict(
            status=Status.SKIPPED,
            error="approval after rejection: market rejected",
            reason=Reason.APPROVAL_AFTER_REJECTION,
        )
    if market.status != MarketStatus.PENDING_APPROVAL:
        return Verdict(
            status=Status.SKIPPED,
            error=f"market already decided: {market.status}",
            reason=Reason.ALREADY_DECIDED,
        )
    decided = msgspec.structs.replace(
        market,
        status=MarketStatus.ACTIVE if decision.approved else MarketStatus.REJECTED,
        rejection_reason=None if decision.approved else decision.reason,
        decided_by=decision.actor_id,
        decided_at=now,
        updated_at=now,
    )
    context = {"causation_id": decision.event_id, "actor_id": decision.actor_id}
    common = {
        "market_id": str(market.id),
        "entity_id": str(market.entity_id),
        "decided_by": decision.actor_id,
        "decided_at": _timestamp(now),
    }
    if decision.approved:
        events = [
            market_event(Announced.ACTIVATED, market, now, context, common),
            market_event(
                Announced.TOKEN_DEPLOYMENT_REQUESTED,
                market,
                now,
                context,
                {
                    "market_id": str(market.id),
                    "issuer_id": str(market.issuer_id),
                    "asset_type": asset.asset_type.value,
                    "token_symbol": asset.token_symbol,
                    "token_name": asset.token_name,
                    "total_supply": str(asset.total_supply),
                },
            ),
        ]
    else:
        events = [
            market_event(
                Announced.REJECTED,
                market,
                now,
                context,
                {**common, "reason": decision.reason},
            )
        ]
    return Verdict(status=Status.SUCCESS, market=decided, events=events)


def _timestamp(moment: datetime) -> str:
    return str(msgspec.to_builtins(moment))
