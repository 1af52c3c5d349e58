"""Several API workers behind one port (API_WORKERS): every guarantee holds whichever
worker answers: idempotency, the webhook's rate limit, one metrics count, console
sessions, a graceful stop, and a startup failure reported."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.admin import TOKEN
from tests.support.flow import Flow
from tests.support.markets import REGISTER, seed_body
from tests.support.metrics import metric
from tests.support.processes import ManagedProcess, free_port
from tests.support.webhooks import WEBHOOK, clear_of_a_minute_boundary, seed_event, stored

WORKERS = 2


class Workers:
    """An API of WORKERS processes, and clients of one connection each, spread so that
    every worker holds some of them (the kernel hands each accept to either)."""

    def __init__(self, process: ManagedProcess, base_url: str, port: int) -> None:
        self.process = process
        self.base_url = base_url
        self.port = port
        self.clients: list[httpx.AsyncClient] = []

    def pids(self) -> set[int]:
        """The worker processes: the supervisor's children but multiprocessing's
        resource tracker."""
        parent = self.process.process.pid
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        return {
            int(pid)
            for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }

    def holders(self) -> set[int]:
        """Which processes hold an established connection on the API's port."""
        listing = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {int(pid) for pid in re.findall(r"pid=(\d+)", listing)}

    async def spread(self, stack: AsyncExitStack, at_least: int = 8) -> None:
        """Open connections until there are `at_least` and every worker holds one."""
        while len(self.clients) < at_least or self.holders() != self.pids():
            assert len(self.clients) < 200, f"connections reached only {self.holders()}"
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=self.base_url, limits=httpx.Limits(max_connections=1), timeout=30
                )
            )
            assert (await http.get("/health")).status_code == 200  # accepted, and kept open
            self.clients.append(http)


def launch_workers(flow: Flow, name: str, **overrides: str) -> tuple[ManagedProcess, int]:
    """`python -m app` with WORKERS workers on a free port; returns it and its port."""
    port = free_port()
    process = flow.launch("app", name, API_WORKERS=str(WORKERS), HTTP_PORT=str(port), **overrides)
    return process, port


def start_workers(flow: Flow, tmp_path: Path, **overrides: str) -> Workers:
    process, port = launch_workers(
        flow, "api-workers", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), **overrides
    )
    base_url = f"http://127.0.0.1:{port}"
    process.wait_http_ok(f"{base_url}/health")
    deadline = time.monotonic() + 60
    while process.log_text().count("Application startup complete") < WORKERS:
        assert time.monotonic() < deadline, f"not every worker started:\n{process.log_tail()}"
        time.sleep(0.05)
    return Workers(process, base_url, port)


@pytest.fixture
async def workers(flow: Flow, tmp_path: Path) -> AsyncIterator[Workers]:
    api = start_workers(flow, tmp_path, ADMIN_TOKEN=TOKEN, WEBHOOK_RATE_LIMIT_PER_MINUTE="20")
    try:
        async with AsyncExitStack() as stack:
            await api.spread(stack)
            yield api
    finally:
        api.process.stop()  # SIGTERM: the flow's SIGKILL at the end would orphan the workers


async def test_concurrent_identical_idempotency_keys_across_workers_register_one_market(
    workers: Workers, flow: Flow
) -> None:
    headers = {"Idempotency-Key": "across-workers"}
    responses = await asyncio.gather(
        *(http.post(REGISTER, json=seed_body(), headers=headers) for http in workers.clients)
    )
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["market"]["id"] for r in responses}) == 1
    assert await flow.db.fetchval("SELECT count(*) FROM markets") == 1
    assert workers.holders() == workers.pids()  # both workers answered some of them


async def test_the_webhook_rate_limit_holds_across_workers(workers: Workers, flow: Flow) -> None:
    await clear_of_a_minute_boundary()
    clients = workers.clients
    codes = [
        (await clients[n % len(clients)].post(WEBHOOK, json=seed_event())).status_code
        for n in range(25)
    ]
    assert codes.count(200) == 20 and codes[20:] == [429] * 5, codes
    assert await stored(flow.db) == 20


async def test_every_scrape_counts_every_workers_requests(workers: Workers) -> None:
    for n in range(40):
        answer = await workers.clients[n % len(workers.clients)].get("/api/v1/markets/nope")
        assert answer.status_code == 400
    counts = set()
    for http in workers.clients:  # a scrape answered by each worker in turn
        text = (await http.get("/metrics")).text
        counts.add(metric(text, "market_requests_total", path="/api/v1/markets/{id}", method="GET"))
    assert counts == {40.0}


async def test_a_console_session_signed_in_on_one_worker_holds_on_every_worker(
    workers: Workers,
) -> None:
    first = workers.clients[0]
    form = await first.get("/console/sign-in")
    token = re.search(r'name="sign_in_token" value="([^"]+)"', form.text)
    assert token is not None
    signed = await first.post(
        "/console/sign-in",
        data={"sign_in_token": token[1], "operator": "ops", "token": TOKEN, "next": "/console/"},
    )
    assert signed.status_code == 303, signed.text
    cookies = dict(first.cookies)
    for http in workers.clients:
        http.cookies.update(cookies)
        page = await http.get("/console/")
        assert page.status_code == 200, page.text


async def test_sigterm_stops_every_worker_and_exits_0(flow: Flow, tmp_path: Path) -> None:
    api = start_workers(flow, tmp_path)
    pids = api.pids()
    assert len(pids) == WORKERS
    assert api.process.stop(signal.SIGTERM, timeout=30) == 0
    assert not any(_running(pid) for pid in pids), pids
    assert api.process.log_text().count("Application shutdown complete") == WORKERS


async def test_workers_stop_when_their_supervisor_is_killed(flow: Flow, tmp_path: Path) -> None:
    api = start_workers(flow, tmp_path)
    pids = api.pids()
    api.process.kill()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their supervisor"
        await asyncio.sleep(0.1)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (exited, its status not yet collected)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


async def test_a_worker_that_cannot_start_stops_the_api_with_status_1(
    flow: Flow, tmp_path: Path
) -> None:
    process, _ = launch_workers(
        flow,
        "api-workers-failing",
        # Starting needs one connection, and nothing listens there.
        DATABASE_POOL_MIN="1",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/marketdb_test",
    )
    assert process.process.wait(120) == 1, process.log_tail()
    assert "an API worker failed to start" in process.log_text()


async def test_a_worker_whose_app_cannot_be_built_stops_the_api_with_status_1(
    flow: Flow,
) -> None:
    """Not its lifespan this time: the app factory itself fails (tracing asked of an
    exporter that does not exist), which uvicorn alone would answer with a new worker,
    failing the same way, forever."""
    process, _ = launch_workers(
        flow, "api-workers-unbuildable", OTEL_TRACES_EXPORTER="no-such-exporter"
    )
    assert process.process.wait(120) == 1, process.log_tail()
    log = process.log_text()
    assert "an API worker failed to start" in log
    assert "died" not in log  # no worker was replaced
