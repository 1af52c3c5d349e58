"""Redis stream names (DESIGN.md, Streams)."""

from typing import Final

MARKETS_EVENTS: Final = "markets:events"
ENTITY_PERMISSIONS_EVENTS: Final = "entity-permissions:events"
ENTITY_PERMISSIONS_DEAD: Final = "entity-permissions:events:dead"
