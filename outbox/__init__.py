"""The transactional outbox: events written with the state change they describe, in one
PostgreSQL transaction, and moved to Redis Streams later by the relay."""

from outbox.envelope import EventEnvelope, new_event
from outbox.streams import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from outbox.writer import (
    NOTIFY_CHANNEL,
    delete_event,
    delete_published_before,
    enqueue,
    mark_for_republish,
)

__all__ = [
    "ENTITY_PERMISSIONS_DEAD",
    "ENTITY_PERMISSIONS_EVENTS",
    "MARKETS_EVENTS",
    "NOTIFY_CHANNEL",
    "EventEnvelope",
    "delete_event",
    "delete_published_before",
    "enqueue",
    "mark_for_republish",
    "new_event",
]
