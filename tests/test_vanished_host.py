"""A leader whose host vanishes: its standby on another host leads within the bound.

The leader runs in a network namespace of the test's own, reaching PostgreSQL and
Redis over a veth pair; the test cuts the link, which sends no FIN or RST (a kill -9
does, which is why a crash is noticed at once). The server notices the silent session
through the TCP keepalives and user time-out every session asks for, ends it, and the
advisory lock goes with it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from tests.conftest import emptied_database, migrated
from tests.support import netns
from tests.support.markets import REGISTER, seed_body
from tests.support.netns import TAKEOVER_BOUND_S, IsolatedHost
from tests.support.outbox import (
    check_stream_against_outbox,
    unpublished,
    wait_until,
    write_steadily,
)
from tests.support.postgres_server import PostgresServer
from tests.support.processes import ManagedProcess, free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.skipif(
    not netns.available(), reason="needs root and iproute2 for a network namespace"
)

EPC_API_KEY = "vanished-host-key"


@dataclass
class Site:
    """PostgreSQL and Redis reachable from this host and from the isolated one."""

    host: IsolatedHost
    postgres: PostgresServer
    redis_server: RedisServer
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def env(self, *, isolated: bool, **overrides: str) -> dict[str, str]:
        address = self.host.host_address if isolated else "127.0.0.1"
        return {
            "APP_ENV": "test",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": f"postgresql://postgres@{address}:{self.postgres.port}/marketdb_test",
            "REDIS_URL": f"redis://{address}:{self.redis_server.port}/0",
            **overrides,
        }

    def launch(
        self, name: str, args: list[str], *, isolated: bool = False, **overrides: str
    ) -> ManagedProcess:
        process = ManagedProcess(
            f"{name}-{uuid.uuid4().hex[:6]}",
            args,
            self.env(isolated=isolated, **overrides),
            self.log_dir,
            wrapper=self.host.wrapper if isolated else (),
        )
        self.processes.append(process)
        return process


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    host = IsolatedHost()
    host.create()
    redis_server = RedisServer(bind=f"127.0.0.1 {host.host_address}")
    try:
        async with migrated(PostgresServer.reachable_from(host)) as postgres:
            redis_server.start()
            yield Site(host, postgres, redis_server, tmp_path_factory.mktemp("vanished"))
    finally:
        redis_server.destroy()
        host.destroy()


@pytest.fixture
def fresh_host(site: Site) -> Iterator[Site]:
    """The site with a new isolated host (the last test cut its link) and no processes."""
    site.host.destroy()
    site.host.create()
    try:
        yield site
    finally:
        for process in site.processes:
            process.kill()
        site.processes.clear()


@pytest.fixture
async def db(fresh_host: Site) -> AsyncIterator[asyncpg.Connection]:
    async with emptied_database(fresh_host.postgres.url) as connection:
        yield connection


@pytest.fixture
async def stream(fresh_host: Site) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(fresh_host.redis_server.url, decode_responses=True)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_standby_that_never_took_over_leads_within_the_bound_when_the_relay_host_dies(
    fresh_host: Site, db: asyncpg.Connection, stream: redis.Redis
) -> None:
    site = fresh_host
    leader = site.launch("relay-isolated", ["-m", "relay"], isolated=True)
    leader.wait_for_log("leading")
    standby = site.launch("relay-standby", ["-m", "relay"])
    standby.wait_for_log("waiting as standby")
    stop = asyncio.Event()
    writer = asyncio.create_task(write_steadily(db, stop))
    try:

        async def the_isolated_leader_published() -> bool:
            return bool(await stream.exists("markets:events"))

        await wait_until(the_isolated_leader_published, 30, "the isolated leader to publish")
        cut_at = len(standby.log_text())
        site.host.cut()
        standby.wait_for_log("leading", after=cut_at, timeout=TAKEOVER_BOUND_S)
        await asyncio.sleep(1)  # the new leader publishes under load
    finally:
        stop.set()
        await writer

    async def all_published() -> bool:
        return await unpublished(db) == 0

    await wait_until(all_published, 60, "the new leader to publish every row")
    report = await check_stream_against_outbox(db, stream)
    assert report.distinct == await db.fetchval("SELECT count(*) FROM outbox")
    print(f"\n{report.distinct} rows published, {report.duplicates} duplicates")


async def test_a_standby_that_never_took_over_polls_within_the_bound_when_the_poller_host_dies(
    fresh_host: Site, db: asyncpg.Connection, stream: redis.Redis
) -> None:
    site = fresh_host
    epc_port = free_port()
    epc_url = f"http://{site.host.host_address}:{epc_port}"
    api_port = free_port()
    site.launch(
        "epc",
        ["-m", "simulator"],
        EPC_HOST=site.host.host_address,
        EPC_PORT=str(epc_port),
        EPC_API_KEY=EPC_API_KEY,
    ).wait_http_ok(f"{epc_url}/health")
    site.launch("api", ["-m", "app"], HTTP_PORT=str(api_port)).wait_http_ok(
        f"http://127.0.0.1:{api_port}/health"
    )
    site.launch("relay", ["-m", "relay"]).wait_for_log("leading")
    site.launch("consumer", ["-m", "app.approvals"]).wait_for_log("consuming")
    polling = {
        "PERMISSIONS_SERVICE_BASE_URL": epc_url,
        "PERMISSIONS_SERVICE_API_KEY": EPC_API_KEY,
        "PERMISSIONS_POLL_INTERVAL_S": "0.2",
    }
    leader = site.launch("poller-isolated", ["-m", "app.inbound"], isolated=True, **polling)
    leader.wait_for_log("Polled events from Entity Permissions Core")
    standby = site.launch("poller-standby", ["-m", "app.inbound"], **polling)
    standby.wait_for_log("waiting as standby")

    async with httpx.AsyncClient(timeout=30) as http:
        markets = []
        for n in range(6):
            response = await http.post(
                f"http://127.0.0.1:{api_port}{REGISTER}", json=seed_body(name=f"Market {n}")
            )
            assert response.status_code == 201, response.text
            markets.append(response.json()["market"]["id"])
        await requested(http, epc_url, markets)
        decisions = [await approve(http, epc_url, market) for market in markets[:3]]
        await all_active(db, markets[:3])  # polled by the isolated leader

        cut_at = len(standby.log_text())
        site.host.cut()
        standby.wait_for_log("polling", after=cut_at, timeout=TAKEOVER_BOUND_S)
        decisions += [await approve(http, epc_url, market) for market in markets[3:]]
        await all_active(db, markets)

    applied = await db.fetch("SELECT event_id FROM market_approval_events")
    recorded = await db.fetch("SELECT event_id, processing_status FROM processed_events")
    assert sorted(r["event_id"] for r in applied) == sorted(decisions)
    assert sorted((r["event_id"], r["processing_status"]) for r in recorded) == sorted(
        (event_id, "success") for event_id in decisions
    )


async def requested(http: httpx.AsyncClient, epc_url: str, market_ids: list[str]) -> None:
    async def listed() -> bool:
        pending = await http.get(f"{epc_url}/api/v1/requests", params={"status": "pending"})
        return set(market_ids) <= {r["market_id"] for r in pending.json()}

    await wait_until(listed, 60, "the simulator to list the approval requests")


async def approve(http: httpx.AsyncClient, epc_url: str, market_id: str) -> str:
    response = await http.post(f"{epc_url}/api/v1/requests/{market_id}/approve", json={})
    assert response.status_code == 200, response.text
    event_id: str = response.json()["event_id"]
    return event_id


async def all_active(db: asyncpg.Connection, market_ids: list[str]) -> None:
    ids = [uuid.UUID(m) for m in market_ids]

    async def active() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM markets WHERE id = ANY($1) AND status = 'active'", ids
        )
        return bool(count == len(ids))

    await wait_until(active, 60, f"{len(ids)} markets to become active")
