"""An administrator's decision, taken over the JSON API or on the approver screen."""

from __future__ import annotations

from typing import Any

from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException

from simulator.state import AlreadyDecided, Registry, UnknownRequest


def decide(
    state: State,
    registry: Registry,
    market_id: str,
    *,
    approved: bool,
    actor_id: str,
    reason: str | None,
) -> dict[str, Any]:
    """Record the decision, put it on the feed and push it to the webhook (when one is
    set); 404 for a market never requested, 409 for one decided already."""
    try:
        event = registry.decide(market_id, approved=approved, actor_id=actor_id, reason=reason)
    except UnknownRequest:
        raise NotFoundException(f"no approval request for market {market_id}") from None
    except AlreadyDecided:
        raise HTTPException(status_code=409, detail=f"market {market_id} is decided") from None
    if state.pusher is not None:
        state.pusher.push(event, registry.trace_of.get(market_id))
    return event
