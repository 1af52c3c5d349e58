"""One active process of a kind, across machines: a PostgreSQL advisory lock.

The lock belongs to a session, so it is released the moment the holder's connection
ends: on a clean exit, when the process is killed (-9), and when its host vanishes,
which the server notices within seconds because the session asks for TCP keepalives
(app/db.py DEAD_CLIENT_SETTINGS). A standby polls for it and takes over.

A lock is not a fence: a leader that pauses (a stopped process, a long stall) can wake
after its session ended and a standby took over, still holding work it started. Where
that matters, each leadership draws a term from a PostgreSQL sequence, increasing with
every new leader, for the shared resource to refuse the older terms.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

import asyncpg

from app.backoff import Backoff, sleep_unless
from app.db import DEAD_CLIENT_SETTINGS, RETRYABLE_ERRORS, UNAVAILABLE_ERRORS

IDLE_SESSION_TIMEOUT = "10s"

# The locks, one per kind of process. Each holder's session is named after its lock
# (`Leadership.session_name`), which is how /metrics tells who runs and who leads.
RELAY_LOCK: Final = "market-backend:outbox-relay"
POLLER_LOCK: Final = "market-backend:epc-poller"


def sessions_of(name: str) -> str:
    """The prefix of the session names of every holder of, or standby for, lock `name`."""
    return f"{name}:"


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Leadership:
    """Hold `name`'s advisory lock on a connection of its own, which also LISTENs."""

    def __init__(
        self,
        database_url: str,
        name: str,
        *,
        term_sequence: str | None = None,
        poll_s: float = 0.5,
        heartbeat_s: float = 1.0,
        log: logging.Logger,
    ) -> None:
        """`term_sequence`: a sequence to draw each leadership's term from (see `term`).
        `log`: the holder's logger, so that standing by and stepping down read as its own."""
        self._log = log
        self._database_url = database_url
        self.name = name
        self._term_sequence = term_sequence
        self.term = 0  # this leadership's term, when a term_sequence is given
        self._key = lock_key(name)
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self.connection: asyncpg.Connection | None = None
        self.lost = asyncio.Event()
        self.session_name = f"{sessions_of(name)}{socket.gethostname()}:{os.getpid()}"[:63]
        self._heartbeat: asyncio.Task[None] | None = None
        # One query at a time on the lock's connection (asyncpg allows no more): the
        # heartbeat and the relay's term queries would otherwise collide, and a collision
        # reads as a lost lock.
        self._session = asyncio.Lock()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a hot standby until the lock is ours (True) or `stop` is set (False)."""
        backoff = Backoff("PostgreSQL (leadership)", self._log)
        announced = False
        while not stop.is_set():
            try:
                if self.connection is None or self.connection.is_closed():
                    self.connection = await asyncpg.connect(
                        self._database_url,
                        timeout=5,
                        server_settings={
                            **DEAD_CLIENT_SETTINGS,
                            # A paused or hung process answers keepalives from its
                            # kernel but sends nothing: the server ends the session, and
                            # the lock, once it is idle this long (the heartbeat queries
                            # every second while the process runs).
                            "idle_session_timeout": IDLE_SESSION_TIMEOUT,
                            # Seen by the API's /metrics: who runs, and who leads.
                            "application_name": self.session_name,
                        },
                    )
                if await self.connection.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                    if self._term_sequence:
                        self.term = await self._draw_term()
                    backoff.succeeded()
                    self.lost.clear()
                    self._heartbeat = asyncio.create_task(self._watch(), name=f"{self.name}-lock")
                    return True
                backoff.succeeded()
                if not announced:
                    self._log.info(
                        "%s: another process holds the lock; waiting as standby", self.name
                    )
                    announced = True
                await sleep_unless(stop, self._poll_s)
            except UNAVAILABLE_ERRORS as error:
                await self._drop_connection()
                await backoff.wait_after(error, stop)
        return False

    async def newest_term(self) -> int:
        """The highest term any leader has drawn: above ours, another process leads now."""
        assert self.connection is not None and self._term_sequence
        async with self._session:
            value = await self.connection.fetchval(
                """
                SELECT last_value FROM pg_sequences
                WHERE schemaname = current_schema() AND sequencename = $1
                """,
                self._term_sequence,
            )
        return int(value or 0)

    async def _draw_term(self) -> int:
        assert self.connection is not None and self._term_sequence
        async with self._session:
            term = await self.connection.fetchval("SELECT nextval($1)", self._term_sequence)
        return int(term)

    async def draw_term_above(self, floor: int) -> int:
        """Move the sequence past `floor` (a term seen elsewhere) and draw our term anew."""
        assert self.connection is not None and self._term_sequence
        newest = await self.newest_term()
        async with self._session:
            await self.connection.execute(
                "SELECT setval($1::text::regclass, greatest($2::bigint, $3::bigint))",
                self._term_sequence,
                floor,
                newest,
            )
        self.term = await self._draw_term()
        return self.term

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
                await asyncio.wait_for(self._ping(), timeout=5)
            except RETRYABLE_ERRORS as error:
                self._log.warning(
                    "%s: lost the lock's connection (%r); stepping down", self.name, error
                )
                self.lost.set()
                return

    async def _ping(self) -> None:
        assert self.connection is not None
        async with self._session:
            await self.connection.fetchval("SELECT 1")

    async def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.terminate()
