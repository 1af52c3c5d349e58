"""One active process of a kind, across machines: a PostgreSQL advisory lock.

The lock belongs to a session, so it is released the moment the holder's connection
ends: on a clean exit, and also when the process is killed (-9) or its host vanishes
and the server notices. A standby polls for it and takes over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Callable

import asyncpg

from app.backoff import Backoff, sleep_unless
from app.db import RETRYABLE_ERRORS, UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Leadership:
    """Hold `name`'s advisory lock on a connection of its own, which also LISTENs."""

    def __init__(
        self, database_url: str, name: str, *, poll_s: float = 0.5, heartbeat_s: float = 1.0
    ) -> None:
        self._database_url = database_url
        self.name = name
        self._key = lock_key(name)
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self.connection: asyncpg.Connection | None = None
        self.lost = asyncio.Event()
        self.session_name = f"{name}:{socket.gethostname()}:{os.getpid()}"[:63]
        self._heartbeat: asyncio.Task[None] | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a hot standby until the lock is ours (True) or `stop` is set (False)."""
        backoff = Backoff("PostgreSQL (leadership)", log)
        announced = False
        while not stop.is_set():
            try:
                if self.connection is None or self.connection.is_closed():
                    self.connection = await asyncpg.connect(
                        self._database_url,
                        timeout=5,
                        # Seen by the API's /metrics: who runs, and who leads.
                        server_settings={"application_name": self.session_name},
                    )
                if await self.connection.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                    backoff.succeeded()
                    self.lost.clear()
                    self._heartbeat = asyncio.create_task(self._watch(), name=f"{self.name}-lock")
                    return True
                backoff.succeeded()
                if not announced:
                    log.info("%s: another process holds the lock; waiting as standby", self.name)
                    announced = True
                await sleep_unless(stop, self._poll_s)
            except UNAVAILABLE_ERRORS as error:
                await self._drop_connection()
                await backoff.wait_after(error, stop)
        return False

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Call `on_notify` for each NOTIFY on `channel`, on the lock's own session."""
        assert self.connection is not None
        await self.connection.add_listener(channel, lambda *_: on_notify())

    async def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed():
            try:
                # Closing the session releases the lock and the LISTEN together.
                await asyncio.wait_for(connection.close(), timeout=5)
            except RETRYABLE_ERRORS:
                connection.terminate()

    async def _watch(self) -> None:
        """Notice a lost session (server restart, network) within a heartbeat."""
        assert self.connection is not None
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await asyncio.wait_for(self.connection.fetchval("SELECT 1"), timeout=5)
            except RETRYABLE_ERRORS as error:
                log.warning("%s: lost the lock's connection (%r); stepping down", self.name, error)
                self.lost.set()
                return

    async def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.terminate()
