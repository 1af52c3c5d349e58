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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from tests.conftest import TABLES
from tests.support.load import SteadyLoad
from tests.support.outbox import wait_until
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.stack import CONSUMERS, Stack
from tests.support.tally import count_everything, settled
from tests.test_polling import set_faults

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


Inject = Callable[[Target], Awaitable[None]]


async def _down_for_a_moment(target: Target) -> None:
    await asyncio.sleep(target.rng.uniform(0.2, 1.5))


def restart(choose: Callable[[random.Random], str], sig: int = signal.SIGKILL) -> Inject:
    """Stop a process with `sig`, leave it down a moment, start it again."""

    async def inject(target: Target) -> None:
        name = choose(target.rng)
        status = await asyncio.to_thread(target.stack.stop, name, sig)
        if sig == signal.SIGTERM:
            assert status == graceful_exit(name), f"{name} exited {status} on SIGTERM"
        await _down_for_a_moment(target)
        await asyncio.to_thread(target.stack.start, name)

    return inject


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
    """The feed answers 503, then bodies that are not JSON, then recovers."""
    await set_faults(target.stack.epc_url, error_status=503)
    await asyncio.sleep(target.rng.uniform(1.0, 2.5))
    await set_faults(target.stack.epc_url, malformed=True)
    await asyncio.sleep(target.rng.uniform(0.5, 1.5))
    await set_faults(target.stack.epc_url)


@dataclass(frozen=True)
class Fault:
    inject: Inject
    strikes: int
    # False: the simulator pushes no webhook, so every decision must come through the
    # poller; a fault of the polling path cannot hide behind the webhook.
    webhook: bool = True


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
}


@pytest.fixture
async def servers(
    own_postgres: PostgresServer,
) -> AsyncIterator[tuple[PostgresServer, RedisServer]]:
    """The matrix's PostgreSQL, emptied, and a Redis server of the test's own."""
    connection = await asyncpg.connect(own_postgres.url)
    try:
        await connection.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()
    redis_server = RedisServer()
    redis_server.start()
    try:
        yield own_postgres, redis_server
    finally:
        redis_server.stop()


async def strike(fault: Fault, target: Target) -> None:
    """The fault, `strikes` times, each at a random point of the load."""
    started = time.monotonic()
    for at in sorted(target.rng.uniform(1.0, LOAD_S - 1.0) for _ in range(fault.strikes)):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await fault.inject(target)


@pytest.mark.parametrize("name", FAULTS)
async def test_nothing_is_lost_under_load_when(
    name: str, servers: tuple[PostgresServer, RedisServer], log_dir: Path
) -> None:
    fault = FAULTS[name]
    postgres, redis_server = servers
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 2**32))
    print(f"FAULT_SEED={seed}")
    (log_dir / name).mkdir(exist_ok=True)
    stack = Stack(postgres.url, redis_server.url, log_dir / name, webhook=fault.webhook)
    target = Target(stack, redis_server, postgres, random.Random(seed))
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
            return await settled(db, client, load.accepted)

        try:
            await wait_until(done, 120, "every decision applied and every row published")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{stack.log_tails()}") from None
        tally = await count_everything(db, client, load.accepted)
    finally:
        stack.stop_all()
        await load.aclose()
        if client is not None:
            await client.aclose()
        if db is not None:
            await db.close()
    assert tally.markets >= LOAD_S * REGISTRATIONS_PER_S * 0.5, "the load never got going"
    print(f"{name}: {tally}, {load.accepted.retries} retried requests")
