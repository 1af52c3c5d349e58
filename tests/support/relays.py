"""Catching the outbox relay at the worst moments, through PostgreSQL itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import asyncpg

from app.leadership import RELAY_LOCK, sessions_of
from relay.outbox_relay import BATCH_SESSIONS
from tests.support.outbox import unpublished, wait_until


async def batch_sessions(db: asyncpg.Connection, pid: int, condition: str) -> int:
    """How many of relay `pid`'s batch sessions meet `condition` (on pg_stat_activity)."""
    count: int = await db.fetchval(
        f"""
        SELECT count(*) FROM pg_stat_activity
        WHERE application_name LIKE $1 || $2::text || ':%' AND {condition}
        """,
        BATCH_SESSIONS,
        str(pid),
    )
    return count


async def pause_between_read_and_append(
    db: asyncpg.Connection, relay: subprocess.Popen[bytes]
) -> None:
    """SIGSTOP the leading relay while it holds a batch it has read and not yet appended.

    Its next read is held behind a table lock, it is paused, the lock released: the read
    completes on the server and its rows wait, locked, in the paused process's socket.
    A row on a stream of its own (`relay-probe`, which no check reads) is committed with
    the lock's release, so that the batch is never empty.
    """
    async with db.transaction():
        await db.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
        await db.execute(
            """
            INSERT INTO outbox (event_id, stream, event_type, source, aggregate_type,
                                aggregate_id, payload, context, occurred_at)
            VALUES (gen_random_uuid()::text, 'relay-probe', 'relay.probe', 'tests', 'probe',
                    'probe', '{}', '{}', now())
            """
        )
        await wait_until(
            lambda: batch_sessions(db, relay.pid, "wait_event_type = 'Lock'"),
            30,
            "the relay's next batch to wait for the table",
        )
        os.kill(relay.pid, signal.SIGSTOP)
    await wait_until(
        lambda: batch_sessions(
            db, relay.pid, "state = 'idle in transaction' AND query LIKE '%SKIP LOCKED%'"
        ),
        30,
        "the paused relay's batch read to complete",
    )


async def end_lock_session(db: asyncpg.Connection, pid: int) -> None:
    """What a network blip or a server-side time-out does to a leader's lock session."""
    ended = await db.fetchval(
        """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE application_name = $1
        """,
        f"{sessions_of(RELAY_LOCK)}{socket.gethostname()}:{pid}"[:63],
    )
    assert ended == 1, "the relay's lock session was not found"


async def published_more(db: asyncpg.Connection, than: int) -> None:
    async def fewer_left() -> bool:
        return await unpublished(db) < than

    await wait_until(fewer_left, 30, "the leader to publish")
