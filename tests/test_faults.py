"""The fault matrix: the whole service under steady load while one fault strikes at
random points; at the end every registered market and every accepted decision is
counted against PostgreSQL and the streams.

Each run prints its seed; FAULT_SEED=<seed> replays the same points.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from outbox import ENTITY_PERMISSIONS_EVENTS
from tests.conftest import emptied_database, migrated
from tests.support import netns
from tests.support.feed import nested_event, put_on_feed, set_faults
from tests.support.load import SteadyLoad
from tests.support.netns import TAKEOVER_BOUND_S, IsolatedHost
from tests.support.outbox import wait_until
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.relays import end_lock_session, pause_between_read_and_append
from tests.support.stack import CONSUMERS, Stack
from tests.support.tally import CONSUMER_GROUP, count_everything, settled

WORKERS = ("api", "relay", *CONSUMERS, "poller")
LOAD_S = 8.0
REGISTRATIONS_PER_S = 25.0


@dataclass
class Target:
    """What a fault acts on: the running stack and the servers under it."""

    stack: Stack
    redis_server: RedisServer
    postgres: PostgresServer
    rng: random.Random
    isolated: IsolatedHost | None = None


Inject = Callable[[Target], Awaitable[None]]


async def _down_for_a_moment(target: Target) -> None:
    await asyncio.sleep(target.rng.uniform(0.2, 1.5))


def restart(choose: Callable[[random.Random], str], sig: int = signal.SIGKILL) -> Inject:
    """Stop a process with `sig`, leave it down a moment, start it again."""

    async def inject(target: Target) -> None:
        name = choose(target.rng)
        await strike_process(target, name, sig)
        await _down_for_a_moment(target)
        await start_again(target, name)

    return inject


async def strike_process(target: Target, name: str, sig: int = signal.SIGKILL) -> None:
    """`sig` to a process of the stack that must be running, and must end by it: a strike
    on a process already gone would prove nothing."""
    struck = target.stack.processes[name].process
    assert struck.poll() is None, f"{name} had exited ({struck.returncode}) before it was struck"
    status = await asyncio.to_thread(target.stack.stop, name, sig)
    expected = graceful_exit(name) if sig == signal.SIGTERM else -sig
    assert status == expected, f"{name} exited {status} on {signal.Signals(sig).name}"


async def start_again(target: Target, name: str) -> None:
    """Start a stopped process as its supervisor would; it must come up (Stack.start waits
    until it is ready) as a new process."""
    stopped = target.stack.processes[name].process
    restarted = (await asyncio.to_thread(target.stack.start, name)).process
    assert restarted.poll() is None, f"{name} exited ({restarted.returncode}) once restarted"
    assert restarted.pid != stopped.pid


def graceful_exit(name: str) -> int:
    """The status after a clean shutdown on SIGTERM. Uvicorn, once it has drained its
    requests, re-raises the signal, as process managers expect; our workers exit 0."""
    return -signal.SIGTERM if name == "api" else 0


def kill_9(choose: Callable[[random.Random], str]) -> Inject:
    return restart(choose, signal.SIGKILL)


async def restart_redis_empty(target: Target) -> None:
    await asyncio.to_thread(target.redis_server.restart_empty)


async def restart_postgres(target: Target) -> None:
    await asyncio.to_thread(target.postgres.stop)
    await _down_for_a_moment(target)
    await target.postgres.start()


async def fail_epc(target: Target) -> None:
    """The feed answers 503, then bodies that are not JSON, recovering after each: the
    poller must report each failure (it logs the first of a run of failures) and then
    the feed's recovery, so that the case cannot pass with a fault never felt."""
    phases = (
        ({"error_status": 503}, "FeedUnavailable: HTTP 503", (1.0, 2.5)),
        ({"malformed": True}, "FeedUnavailable: invalid feed body", (0.5, 1.5)),
    )
    for faults, failure, lasting in phases:
        await fault_felt(target, ["poller"], faults, failure)
        await asyncio.sleep(target.rng.uniform(*lasting))
        await fault_felt(target, ["poller"], {}, "Entity Permissions Core available again")


async def fault_felt(
    target: Target, pollers: list[str], faults: dict[str, Any], logged: str, within: float = 30
) -> None:
    """Set the simulator's faults, then wait until one of `pollers` logs `logged`."""
    processes = [target.stack.processes[name] for name in pollers]
    offsets = [len(process.log_text()) for process in processes]
    await set_faults(target.stack.epc_url, **faults)

    async def logged_since() -> bool:
        for process, offset in zip(processes, offsets, strict=True):
            assert process.process.poll() is None, f"{process.name} exited"
            if logged in process.log_text()[offset:]:
                return True
        return False

    await wait_until(logged_since, within, f"{' or '.join(pollers)} to log {logged!r}")


# More decisions than one node of a stream (100 entries) holds: with the stream's
# length at 1, trimming that ignored the consumer group would drop most of them.
OUTLASTING_ENTRIES = 120


async def stop_consumers_until_the_stream_outlasts_its_length(target: Target) -> None:
    """Both consumers down while more decisions arrive than the stream's length."""
    for name in CONSUMERS:
        await strike_process(target, name)
    client = redis.Redis.from_url(target.redis_server.url, decode_responses=True)
    try:

        async def outlasted() -> bool:
            groups = await client.xinfo_groups(ENTITY_PERMISSIONS_EVENTS)
            lag = sum(g["lag"] or 0 for g in groups if g["name"] == CONSUMER_GROUP)
            return bool(lag >= OUTLASTING_ENTRIES)

        await wait_until(outlasted, 30, f"{OUTLASTING_ENTRIES} decisions unread")
    finally:
        await client.aclose()
    for name in CONSUMERS:
        await start_again(target, name)


async def pause_the_leading_relay_past_its_lock(target: Target) -> None:
    """The leader paused holding a batch, its lock session ended, the standby leading;
    then the old leader wakes and tries to append what it held: refused (fenced)."""
    leader = target.stack.processes["relay"]
    standby = target.stack.processes["relay-standby"]
    db = await asyncpg.connect(target.postgres.url)
    try:
        await pause_between_read_and_append(db, leader.process)
        taking_over = len(standby.log_text())
        await end_lock_session(db, leader.process.pid)
    finally:
        await db.close()
    await asyncio.to_thread(standby.wait_for_log, "claimed", 30, taking_over)
    resumed = len(leader.log_text())
    os.kill(leader.process.pid, signal.SIGCONT)
    await asyncio.to_thread(leader.wait_for_log, "fenced off: FENCED", 30, resumed)


async def cut_off_the_leading_relays_host(target: Target) -> None:
    """The leader's host vanishes; the standby leads within the README's bound."""
    assert target.isolated is not None
    standby = target.stack.processes["relay"]
    cut_at = len(standby.log_text())
    target.isolated.cut()
    await asyncio.to_thread(standby.wait_for_log, "leading", TAKEOVER_BOUND_S, cut_at)


POISONS = (400, 5000)  # depths of the events put on the feed: a walk's limit, a decoder's


async def poison_the_feed(target: Target) -> None:
    """Events nested too deep on the feed, then a page that is not a page; the consumers,
    whose processes also poll, go on applying the webhook's decisions. The poller may
    read the events before the bad page or only once it is gone: the case waits for
    their records either way (Fault.unreadable)."""
    for depth in POISONS:
        await put_on_feed(
            target.stack.epc_url, nested_event(f"poison-{depth}", str(uuid.uuid4()), depth)
        )
    bad_page = {"page": '["not", "a", "page"]'}
    await fault_felt(target, list(CONSUMERS), bad_page, "FeedUnavailable: invalid feed body")
    await asyncio.sleep(target.rng.uniform(1.0, 2.0))
    await set_faults(target.stack.epc_url)


@dataclass(frozen=True)
class Fault:
    inject: Inject
    strikes: int
    # False: the simulator pushes no webhook, so every decision must come through the
    # poller; a fault of the polling path cannot hide behind the webhook.
    webhook: bool = True
    env: dict[str, str] = field(default_factory=dict)
    standby_relay: bool = False
    isolated_relay: bool = False  # the leading relay on a host of its own (network namespace)
    early: bool = False  # strike in the first seconds, so the fault outlasts the load
    poller_in_consumers: bool = False  # the consumer processes poll (`make consume`)
    unreadable: int = 0  # deliveries the fault makes that are recorded unreadable

    @property
    def trimmed(self) -> tuple[str, ...]:
        """Streams given a STREAM_MAXLEN short enough to be trimmed during the run."""
        pairs = self.env.get("STREAM_MAXLEN", "").split()
        return tuple(pair.rpartition("=")[0] for pair in pairs)


FAULTS = {
    "api-kill-9": Fault(kill_9(lambda _: "api"), strikes=2),
    "relay-kill-9": Fault(kill_9(lambda _: "relay"), strikes=2),
    "consumer-kill-9": Fault(kill_9(lambda rng: rng.choice(CONSUMERS)), strikes=2),
    "poller-kill-9": Fault(kill_9(lambda _: "poller"), strikes=2, webhook=False),
    "redis-restarted-empty": Fault(restart_redis_empty, strikes=1),
    "postgres-restarted": Fault(restart_postgres, strikes=1),
    "epc-failing": Fault(fail_epc, strikes=1, webhook=False),
    # What a deployment does: SIGTERM, each process finishing what it holds, then a restart.
    "rolling-sigterm": Fault(
        restart(lambda rng: rng.choice(WORKERS), signal.SIGTERM), strikes=3, webhook=False
    ),
    "consumers-outlast-the-stream": Fault(
        stop_consumers_until_the_stream_outlasts_its_length,
        strikes=1,
        env={"STREAM_MAXLEN": f"{ENTITY_PERMISSIONS_EVENTS}=1"},
        early=True,
    ),
    "relay-paused-past-its-lock": Fault(
        pause_the_leading_relay_past_its_lock, strikes=1, standby_relay=True
    ),
    "relay-host-vanished": Fault(cut_off_the_leading_relays_host, strikes=1, isolated_relay=True),
    "poisoned-feed-page": Fault(
        poison_the_feed, strikes=1, poller_in_consumers=True, unreadable=len(POISONS)
    ),
}


@pytest.fixture(scope="module")
def isolated_host() -> Iterator[IsolatedHost | None]:
    """A host of the matrix's own for a relay to vanish from (None: no namespaces here)."""
    if not netns.available():
        yield None
        return
    host = IsolatedHost()
    host.create()
    try:
        yield host
    finally:
        host.destroy()


@pytest.fixture(scope="module")
async def own_postgres(isolated_host: IsolatedHost | None) -> AsyncIterator[PostgresServer]:
    """The matrix's PostgreSQL, reachable from the isolated host too."""
    server = (
        PostgresServer() if isolated_host is None else PostgresServer.reachable_from(isolated_host)
    )
    async with migrated(server):
        yield server


@pytest.fixture
async def servers(
    own_postgres: PostgresServer, isolated_host: IsolatedHost | None
) -> AsyncIterator[tuple[PostgresServer, RedisServer]]:
    """The matrix's PostgreSQL, emptied, and a Redis server of the test's own."""
    async with emptied_database(own_postgres.url):
        pass
    bind = "127.0.0.1" if isolated_host is None else f"127.0.0.1 {isolated_host.host_address}"
    redis_server = RedisServer(bind=bind)
    redis_server.start()
    try:
        yield own_postgres, redis_server
    finally:
        redis_server.destroy()


async def strike(fault: Fault, target: Target) -> None:
    """The fault, `strikes` times, each at a random point of the load."""
    started = time.monotonic()
    window = (0.5, 1.5) if fault.early else (1.0, LOAD_S - 1.0)
    for at in sorted(target.rng.uniform(*window) for _ in range(fault.strikes)):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await fault.inject(target)


@pytest.mark.parametrize("name", FAULTS)
async def test_nothing_is_lost_under_load_when(
    name: str,
    servers: tuple[PostgresServer, RedisServer],
    isolated_host: IsolatedHost | None,
    log_dir: Path,
) -> None:
    fault = FAULTS[name]
    if fault.isolated_relay and isolated_host is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    postgres, redis_server = servers
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 2**32))
    print(f"FAULT_SEED={seed}")
    (log_dir / name).mkdir(exist_ok=True)
    isolated = isolated_host if fault.isolated_relay else None
    if isolated is not None:
        isolated.destroy()  # a fresh link: an earlier case may have cut it
        isolated.create()
    stack = Stack(
        postgres.url,
        redis_server.url,
        log_dir / name,
        webhook=fault.webhook,
        env=fault.env,
        standby_relay=fault.standby_relay,
        isolated=isolated,
        poller_in_consumers=fault.poller_in_consumers,
    )
    target = Target(stack, redis_server, postgres, random.Random(seed), isolated)
    load = SteadyLoad(
        stack.api_url, stack.epc_url, target.rng, registrations_per_s=REGISTRATIONS_PER_S
    )
    db = client = None
    try:
        stack.start_all()
        await asyncio.gather(load.run(LOAD_S), strike(fault, target))

        db = await asyncpg.connect(postgres.url)
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)

        async def done() -> bool:
            return await settled(db, client, load.accepted, unreadable=fault.unreadable)

        try:
            await wait_until(done, 120, "every decision applied and every row published")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{stack.log_tails()}") from None
        tally = await count_everything(
            db, client, load.accepted, trimmed=fault.trimmed, unreadable=fault.unreadable
        )
        crashed = [name for name, p in stack.processes.items() if p.process.poll() is not None]
        assert not crashed, f"{crashed} exited on their own\n{stack.log_tails()}"
    finally:
        stack.stop_all()
        await load.aclose()
        if client is not None:
            await client.aclose()
        if db is not None:
            await db.close()
    assert tally.markets >= LOAD_S * REGISTRATIONS_PER_S * 0.5, "the load never got going"
    print(f"{name}: {tally}, {load.accepted.retries} retried requests")
