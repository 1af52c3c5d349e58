"""The relay's hand-overs under stress: a refill while a commit is in flight, a Redis
restored from an older snapshot under load, and a leader that pauses past its lock.

Each checks the outcome that matters: every outbox row on its stream, and each
market's events in commit order (first appearances; duplicates are allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import asyncpg

from relay.outbox_relay import BATCH_SESSIONS
from relay.publisher import TERM_KEY
from tests.support.flow import Flow
from tests.support.outbox import seed_outbox, unpublished, wait_until, write_steadily
from tests.support.processes import ManagedProcess
from tests.support.relays import end_lock_session, pause_between_read_and_append, published_more

STREAM = "markets:events"


@contextlib.asynccontextmanager
async def slow_marking(db: asyncpg.Connection, seconds: float) -> AsyncIterator[None]:
    """Every UPDATE of published_at takes `seconds` more: the relay's commits stay in
    flight long enough for a test to act while one is."""
    await db.execute(
        f"""
        CREATE FUNCTION slow_marking() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
        CREATE TRIGGER slow_marking AFTER UPDATE OF published_at ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION slow_marking();
        """
    )
    try:
        yield
    finally:
        await db.execute(
            "DROP TRIGGER IF EXISTS slow_marking ON outbox; DROP FUNCTION IF EXISTS slow_marking()"
        )


async def marking_in_flight(db: asyncpg.Connection) -> bool:
    """A relay batch session is marking rows published (and sleeping in the trigger)."""
    return bool(
        await db.fetchval(
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE application_name LIKE $1 || '%' AND wait_event = 'PgSleep'
            """,
            BATCH_SESSIONS,
        )
    )


async def test_refill_race_a_commit_in_flight_is_settled_before_the_refill(flow: Flow) -> None:
    await seed_outbox(flow.db, 40, markets=4)
    async with slow_marking(flow.db, 1.0):
        relay = flow.launch_relay(OUTBOX_BATCH_SIZE="4")
        relay.wait_for_log("relay marker set")  # its first refill (slow too) is over
        await wait_until(lambda: marking_in_flight(flow.db), 30, "a batch's commit in flight")
        # Redis loses everything while the batch just appended waits for its commit.
        await flow.stream.flushall()
        relay.wait_for_log("Redis lost its data")
        await flow.all_published(within=120)

    await flow.check()  # the batch in flight went out again with the refill


async def test_refill_race_a_redis_restored_from_an_older_snapshot_under_load_keeps_order(
    flow: Flow,
) -> None:
    relay = flow.launch_relay()
    relay.wait_for_log("leading")
    stop = asyncio.Event()
    writer = asyncio.create_task(write_steadily(flow.db, stop))
    try:
        await asyncio.sleep(1)
        flow.redis_server.snapshot()
        await asyncio.sleep(1)  # entries the restored server will not have
        flow.redis_server.restart_from_snapshot()
        await asyncio.sleep(1)
    finally:
        stop.set()
        await writer

    relay.wait_for_log("Redis restarted (run_id")
    await flow.all_published()
    # The rows the old snapshot lacks went out again before anything newer.
    await flow.check()


async def leader_and_standby(flow: Flow) -> tuple[ManagedProcess, ManagedProcess]:
    """A backlog (in small batches: it lasts), a relay publishing it and one standing by."""
    await seed_outbox(flow.db, 100_000, markets=500)
    await flow.db.execute("ANALYZE outbox")
    leader = flow.launch_relay("relay-a", OUTBOX_BATCH_SIZE="100")
    leader.wait_for_log("leading")
    standby = flow.launch_relay("relay-b", OUTBOX_BATCH_SIZE="100")
    standby.wait_for_log("waiting as standby")
    await published_more(flow.db, than=100_000)
    return leader, standby


async def test_two_leaders_for_a_moment_the_paused_leaders_late_append_is_refused(
    flow: Flow,
) -> None:
    leader, standby = await leader_and_standby(flow)

    # Catch the leader between reading a batch and appending it, then end its lock
    # session: the standby takes over while the paused leader still holds its rows.
    await pause_between_read_and_append(flow.db, leader.process)
    await end_lock_session(flow.db, leader.process.pid)
    standby.wait_for_log("ended", timeout=30)  # the paused leader's batch rolled back
    await published_more(flow.db, than=await unpublished(flow.db))

    resumed = len(leader.log_text())
    os.kill(leader.process.pid, signal.SIGCONT)
    leader.wait_for_log("fenced off: FENCED", after=resumed, timeout=30)

    await flow.all_published(within=180)
    await flow.check()  # per-market order intact: the late append never landed


async def test_two_leaders_for_a_moment_a_paused_leader_loses_the_lead_within_seconds(
    flow: Flow,
) -> None:
    """Paused anywhere (SIGSTOP), its kernel still answering keepalives: the server ends
    its idle lock session, the standby leads, and the old leader, resumed, steps down."""
    leader, standby = await leader_and_standby(flow)

    os.kill(leader.process.pid, signal.SIGSTOP)
    standby.wait_for_log("claimed", timeout=30)
    resumed = len(leader.log_text())
    os.kill(leader.process.pid, signal.SIGCONT)
    leader.wait_for_log("waiting to lead again", after=resumed, timeout=30)

    await flow.all_published(within=180)
    await flow.check()


async def test_a_term_in_redis_that_cannot_be_read_or_comes_from_another_life(
    flow: Flow,
) -> None:
    await flow.stream.set(TERM_KEY, "nan")  # unreadable: counts as no term
    await seed_outbox(flow.db, 10)
    first = flow.launch_relay("relay-first")
    await flow.all_published()
    assert await flow.stream.get(TERM_KEY) != "nan"
    first.stop()

    # A term above every term the database has drawn (a restored backup, a shared Redis):
    # the sequence moves past it, instead of one refused take-over after another.
    ahead = await flow.db.fetchval("SELECT last_value FROM outbox_relay_terms") + 10**14
    await flow.stream.set(TERM_KEY, str(ahead))
    await seed_outbox(flow.db, 10)
    second = flow.launch_relay("relay-second")
    second.wait_for_log(f"Redis held term {ahead}, above the database's; leading as term")
    await flow.all_published()
    assert int(await flow.stream.get(TERM_KEY)) > ahead
    assert await flow.stream.xlen(STREAM) == 20
    await flow.check()
