"""Redis stream names (docs/design.md, Streams), and what the processes share about them."""

from datetime import UTC, datetime
from typing import Final

MARKETS_EVENTS: Final = "markets:events"
ENTITY_PERMISSIONS_EVENTS: Final = "entity-permissions:events"
ENTITY_PERMISSIONS_DEAD: Final = "entity-permissions:events:dead"

# The streams the relay writes, and trims to their STREAM_MAXLEN.
TRIMMED_STREAMS: Final = (MARKETS_EVENTS, ENTITY_PERMISSIONS_EVENTS)
# The approval consumers' group on entity-permissions:events.
APPROVALS_GROUP: Final = "market-approvals"
# Streams read only by this service's own consumer group: trimmed only below what every
# group has acknowledged, and not at all while that group is missing, so that a
# consumer outage costs memory, never a decision. Other streams have readers outside
# the service and are trimmed to their length.
OUR_GROUP_OF_STREAM: Final = {ENTITY_PERMISSIONS_EVENTS: APPROVALS_GROUP}


def lost_entries_key(stream: str) -> str:
    """The Redis hash counting, per consumer group, the entries of `stream` trimmed before
    the group read them (the relay writes it, /metrics reads it)."""
    return f"market-backend:stream-entries-lost:{stream}"


def entry_time(entry_id: str) -> datetime:
    """When Redis made a stream entry (the milliseconds of its id). Ids can be given by
    hand, past what a datetime holds: those read as the latest time one can hold."""
    milliseconds, _, _ = entry_id.partition("-")
    try:
        return datetime.fromtimestamp(int(milliseconds) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.max.replace(tzinfo=UTC)
