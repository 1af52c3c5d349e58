"""Redis clients, configured the same way in every process."""

from __future__ import annotations

import os
import socket
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


class HiredisPackingConnection(redis.Connection):
    """Commands packed in C by hiredis.

    redis-py's asyncio connection packs commands in Python (its synchronous one already
    uses hiredis): for the relay's batch of thousands of arguments that was half its CPU.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        command, *rest = args
        # As redis-py does: "CLIENT SETNAME" is two words of the protocol.
        head = tuple(command.split()) if isinstance(command, str) else (command,)
        return [hiredis.pack_command((*head, *rest))]


def connect_redis(
    url: str,
    role: str,
    *,
    socket_timeout: float | None = 5.0,
    connect_timeout: float = 2.0,
    decode_responses: bool = False,
) -> redis.Redis:
    """A client named `role:host:pid` in CLIENT LIST, with no silent retries.

    redis-py would otherwise retry a failed command on its own, hiding an outage from the
    caller's back-off and, for a blocking read, re-issuing it unseen. Callers retry.
    """
    options: dict[str, Any] = {}
    if urlsplit(url).scheme == "redis":
        options["connection_class"] = HiredisPackingConnection
    return redis.Redis.from_url(
        url,
        client_name=f"{role}:{socket.gethostname()}:{os.getpid()}",
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
        **options,
    )


StreamEntry = tuple[str, dict[str, str] | None]


def text(value: Any) -> str:
    """A reply's bytes or str as str: entries are read by clients of either decoding."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def entries_of(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """An XRANGE / XREVRANGE reply as (entry id, fields) text pairs, whatever the client
    decodes; redis-py types the reply loosely, so this is where it is made precise."""
    return [
        (text(entry_id), {text(name): text(value) for name, value in (fields or {}).items()})
        for entry_id, fields in reply or []
    ]


async def read_group(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    start: str,
    *,
    count: int,
    block_ms: int | None = None,
) -> list[StreamEntry]:
    """XREADGROUP of one stream, as (entry id, fields) pairs; a client decoding responses.

    `start` is `>` for new entries or an id to re-read this consumer's pending ones
    (fields come back None for an entry trimmed away since).
    """
    reply = cast(
        "list[tuple[str, list[StreamEntry]]]",
        await client.xreadgroup(group, consumer, {stream: start}, count=count, block=block_ms),
    )
    return reply[0][1] if reply else []
