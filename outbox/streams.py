"""Redis stream names (DESIGN.md, Streams)."""

from typing import Final

MARKETS_EVENTS: Final = "markets:events"
ENTITY_PERMISSIONS_EVENTS: Final = "entity-permissions:events"
ENTITY_PERMISSIONS_DEAD: Final = "entity-permissions:events:dead"

# The streams the relay writes, and trims to their STREAM_MAXLEN.
TRIMMED_STREAMS: Final = (MARKETS_EVENTS, ENTITY_PERMISSIONS_EVENTS)
# Read only by this service's own consumer groups: trimmed only below what every group
# has acknowledged, so that a consumer outage costs memory, never a decision. Other
# streams have readers outside the service and are trimmed to their length.
STREAMS_OF_OUR_GROUPS: Final = frozenset({ENTITY_PERMISSIONS_EVENTS})


def lost_entries_key(stream: str) -> str:
    """The Redis hash counting, per consumer group, the entries of `stream` trimmed before
    the group read them (the relay writes it, /metrics reads it)."""
    return f"market-backend:stream-entries-lost:{stream}"
