"""Apply inbound events in one transaction: record them, change markets, enqueue.

A batch of events is applied in one transaction (one commit for many decisions, which
is what lets a consumer keep up): markets are locked in id order, each market's
decisions are folded in stream order, and every event is recorded in processed_events
in the same transaction as the change it causes. A duplicate, however it arrives and
however many consumers run at once, finds its event_id recorded, or finds the market
already decided once it gets the lock, and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.approvals.domain import (
    Decision,
    InvalidDecision,
    Reason,
    Status,
    Verdict,
    decide,
    read_decision,
)
from app.approvals.processed_events import ProcessedEventRepository, ProcessedEventRow
from app.markets.domain import Market, Registration
from app.markets.repository import ApprovalRecord, MarketRepository
from app.unit_of_work import UnitOfWork
from outbox import MARKETS_EVENTS, EventEnvelope


class Delivery(msgspec.Struct, frozen=True):
    """An event as a consumer received it, with how many times it has been delivered."""

    envelope: EventEnvelope
    attempts: int = 1


class Outcome(msgspec.Struct, frozen=True):
    """What became of an event applied now (a duplicate has none): its status and, when
    it was not applied, why."""

    status: Status
    reason: Reason | None = None
    error: str | None = None


class ConcurrentlyRecorded(Exception):
    """An event judged `success` was recorded by another transaction meanwhile: retry."""


async def apply_events(uow: UnitOfWork, deliveries: Sequence[Delivery]) -> list[Outcome | None]:
    """Apply each delivery at most once, in order; per delivery its outcome, None if a
    duplicate."""
    unique: dict[str, Delivery] = {}
    for delivery in deliveries:
        unique.setdefault(delivery.envelope.event_id, delivery)
    outcomes = await _apply_unique(uow, list(unique.values()))
    results: list[Outcome | None] = []
    for delivery in deliveries:
        # A copy later in the same batch is a duplicate like any other.
        results.append(outcomes.pop(delivery.envelope.event_id, None))
    return results


async def _apply_unique(uow: UnitOfWork, deliveries: list[Delivery]) -> dict[str, Outcome | None]:
    async with uow:
        market_repository = MarketRepository(uow.connection)
        processed_events = ProcessedEventRepository(uow.connection)
        judged = [_read(delivery.envelope) for delivery in deliveries]
        market_ids = sorted({d.market_id for d in judged if isinstance(d, Decision)})
        markets = await market_repository.lock_many(market_ids)
        # Recorded before (a dead letter, an earlier copy): a duplicate, judged no further.
        seen = await processed_events.processed_among([d.envelope.event_id for d in deliveries])
        if seen:
            kept = [
                (d, j)
                for d, j in zip(deliveries, judged, strict=True)
                if d.envelope.event_id not in seen
            ]
            deliveries = [d for d, _ in kept]
            judged = [j for _, j in kept]
        now = datetime.now(UTC)
        verdicts: list[Verdict] = []
        for item in judged:
            if isinstance(item, Decision):
                verdict = _judge(item, markets, now)
                if verdict.market is not None:  # later decisions see this one's effect
                    current = markets[item.market_id]
                    markets[item.market_id] = msgspec.structs.replace(
                        current, market=verdict.market
                    )
                verdicts.append(verdict)
            else:
                verdicts.append(item)
        recorded = await processed_events.record_processed_events(
            [
                _row(delivery, verdict)
                for delivery, verdict in zip(deliveries, verdicts, strict=True)
            ]
        )
        outcomes: dict[str, Outcome | None] = dict.fromkeys(seen)
        changed: dict[uuid.UUID, Market] = {}
        approvals: list[tuple[uuid.UUID, ApprovalRecord]] = []
        events: list[EventEnvelope] = []
        for delivery, item, verdict in zip(deliveries, judged, verdicts, strict=True):
            event_id = delivery.envelope.event_id
            if event_id not in recorded:
                if verdict.market is not None:
                    # Recorded meanwhile without the market's lock (a dead-letter record):
                    # the fold above is stale, so start again.
                    raise ConcurrentlyRecorded(event_id)
                outcomes[event_id] = None
                continue
            outcomes[event_id] = Outcome(verdict.status, verdict.reason, verdict.error)
            if verdict.market is not None and isinstance(item, Decision):
                changed[verdict.market.id] = verdict.market
                approvals.append((verdict.market.id, _approval(item, verdict.market)))
                events.extend(verdict.events)
        if changed:
            await market_repository.save_decisions(list(changed.values()))
            await market_repository.record_approvals(approvals)
            await uow.enqueue(MARKETS_EVENTS, events)
        await uow.commit()
    return outcomes


def markets_decided_by(
    deliveries: Sequence[Delivery], outcomes: Sequence[Outcome | None]
) -> set[str]:
    """The markets these events may have decided: applied now, or before (a duplicate,
    whose first delivery may have been applied without its cache marker written)."""
    markets: set[str] = set()
    for delivery, outcome in zip(deliveries, outcomes, strict=True):
        if outcome is not None and outcome.status != Status.SUCCESS:
            continue
        try:
            decision = read_decision(delivery.envelope)
        except InvalidDecision:
            continue
        if decision is not None:
            markets.add(str(decision.market_id))
    return markets


async def record_failure(uow: UnitOfWork, delivery: Delivery, reason: Reason, error: str) -> bool:
    """Record an event that could not be applied (unreadable, dead-lettered); False if
    already recorded."""
    async with uow:
        row = _row(delivery, Verdict(status=Status.FAILED, error=error, reason=reason))
        recorded = await ProcessedEventRepository(uow.connection).record_processed_events([row])
        await uow.commit()
    return bool(recorded)


async def dead_lettered_among(uow: UnitOfWork, event_ids: Sequence[str]) -> dict[str, str]:
    """Of these events, those recorded failed as dead letters, with the error recorded."""
    async with uow:
        rows = await uow.connection.fetch(
            """
            SELECT event_id, processing_error FROM processed_events
            WHERE event_id = ANY($1) AND processing_status = $2 AND processing_reason = $3
            """,
            list(event_ids),
            Status.FAILED.value,
            Reason.DEAD_LETTERED.value,
        )
    return {row["event_id"]: row["processing_error"] or "" for row in rows}


def audit_payload(envelope: EventEnvelope) -> dict[str, Any]:
    """What processed_events keeps of an event: its payload and context, as received."""
    return {"payload": envelope.payload, "context": envelope.context}


def _read(envelope: EventEnvelope) -> Decision | Verdict:
    """The decision an event carries, or the verdict of one that carries none."""
    try:
        decision = read_decision(envelope)
    except InvalidDecision as invalid:
        return Verdict(status=Status.FAILED, error=str(invalid), reason=Reason.INVALID_PAYLOAD)
    if decision is None:
        return Verdict(
            status=Status.SKIPPED,
            error=f"unknown event type {envelope.event_type!r}",
            reason=Reason.UNKNOWN_EVENT_TYPE,
        )
    return decision


def _judge(decision: Decision, markets: dict[uuid.UUID, Registration], now: datetime) -> Verdict:
    registration = markets.get(decision.market_id)
    if registration is None:
        return Verdict(
            status=Status.FAILED,
            error=f"unknown market {decision.market_id}",
            reason=Reason.UNKNOWN_MARKET,
        )
    return decide(decision, registration.market, registration.asset, now)


def _row(delivery: Delivery, verdict: Verdict) -> ProcessedEventRow:
    envelope = delivery.envelope
    return ProcessedEventRow(
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        source=envelope.source,
        status=verdict.status,
        error=verdict.error,
        reason=verdict.reason,
        payload=audit_payload(envelope),
        attempts=delivery.attempts,
    )


def _approval(decision: Decision, market: Market) -> ApprovalRecord:
    return ApprovalRecord(
        event_id=decision.event_id,
        decision="approved" if decision.approved else "rejected",
        actor_id=decision.actor_id,
        reason=decision.reason,
        occurred_at=decision.occurred_at,
        processed_at=market.updated_at,
    )
