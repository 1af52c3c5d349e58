"""The names of the market's events: those we are sent and those we announce.

Entity Permissions Core decides by sending `market.rejected`; we announce the rejection
with an event of the same name on our own stream. The two are different events in
different streams, so each lives in its own namespace here: `Decided.REJECTED` is read
from entity-permissions:events, `Announced.REJECTED` is written to markets:events.
"""

from __future__ import annotations

from typing import Final

AGGREGATE_TYPE: Final = "market"


class Decided:
    """Inbound: the decisions Entity Permissions Core sends (webhook or polling feed)."""

    APPROVED: Final = "market.approved"
    REJECTED: Final = "market.rejected"


class Announced:
    """Outbound: what this service writes to the outbox, for the relay to publish."""

    REGISTERED: Final = "market.registered"
    APPROVAL_REQUESTED: Final = "market.approval_requested"
    ACTIVATED: Final = "market.activated"
    REJECTED: Final = "market.rejected"
    TOKEN_DEPLOYMENT_REQUESTED: Final = "token.deployment_requested"  # noqa: S105 (a name)


# The `decision` each inbound decision's payload must carry.
DECISION_OF_EVENT: Final = {Decided.APPROVED: "approved", Decided.REJECTED: "rejected"}
