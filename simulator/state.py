"""What the simulator knows: approval requests, the decisions feed, the fault switches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from opentelemetry.trace import SpanContext


class ApprovalRequest(msgspec.Struct, kw_only=True):
    market_id: str
    entity_id: str
    issuer_id: str
    market_name: str
    requested_at: str
    status: Literal["pending", "approved", "rejected"] = "pending"
    event_id: str | None = None


class Faults(msgspec.Struct, kw_only=True):
    """Switches for tests: each applies to every feed request while it is set."""

    latency_ms: int = 0
    error_status: int | None = None  # answer this status instead of the feed
    malformed: bool = False  # answer a body that is not JSON
    page: str | None = None  # answer this text (JSON or not) as every page of the feed


class UnknownRequest(LookupError):
    pass


class AlreadyDecided(Exception):
    pass


class Registry:
    def __init__(self) -> None:
        self.requests: dict[str, ApprovalRequest] = {}
        # Decisions, and documents put on the feed as they were sent (msgspec.Raw: served
        # byte for byte, however deep or malformed, never decoded here).
        self.feed: list[dict[str, Any] | msgspec.Raw] = []
        self.faults = Faults()
        # Per market, the trace its approval request came in (when tracing is on), for
        # the decision's webhook push to continue.
        self.trace_of: dict[str, SpanContext] = {}

    def request_approval(
        self, payload: dict[str, Any], trace_context: SpanContext | None = None
    ) -> None:
        market_id = str(payload["market_id"])
        if trace_context is not None and market_id not in self.requests:
            self.trace_of[market_id] = trace_context
        self.requests.setdefault(
            market_id,
            ApprovalRequest(
                market_id=market_id,
                entity_id=str(payload.get("entity_id", "")),
                issuer_id=str(payload.get("issuer_id", "")),
                market_name=str(payload.get("market_name", "")),
                requested_at=str(payload.get("requested_at", "")),
            ),
        )

    def decide(
        self, market_id: str, *, approved: bool, actor_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Record an administrator's decision; the event in the webhook shape of
        docs/async-approval-flow.md."""
        request = self.requests.get(market_id)
        if request is None:
            raise UnknownRequest(market_id)
        if request.status != "pending":
            raise AlreadyDecided(market_id)
        decision: Literal["approved", "rejected"] = "approved" if approved else "rejected"
        payload: dict[str, Any] = {
            "market_id": market_id,
            "entity_id": request.entity_id,
            "decision": decision,
        }
        if reason is not None:
            payload["reason"] = reason
        event_id = f"epc-{uuid.uuid4()}"
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_type": f"market.{decision}",
            "source": "entity_permissions_core",
            "payload": payload,
            "context": {"actor_id": actor_id},
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        request.status = decision
        request.event_id = event_id
        self.feed.append(event)
        return event

    def page(self, after: str | None, limit: int) -> dict[str, Any]:
        """The polling feed: events after a cursor (a position in the feed)."""
        start = int(after) if after else 0
        data = self.feed[start : start + limit]
        end = start + len(data)
        return {
            "data": data,
            "next_cursor": str(end) if end or after else None,
            "has_more": end < len(self.feed),
        }
