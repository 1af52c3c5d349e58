"""The flow under test: the test database, a Redis of the test's own, real processes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis

from outbox import ENTITY_PERMISSIONS_EVENTS, EventEnvelope, enqueue, new_event
from tests.support.markets import REGISTER, seed_body
from tests.support.outbox import StreamReport, check_stream_against_outbox, unpublished, wait_until
from tests.support.processes import ManagedProcess, free_port, start_api
from tests.support.redis_server import RedisServer


def decision_event(
    market_id: str,
    decision: str = "approved",
    *,
    event_id: str | None = None,
    reason: str | None = None,
    entity_id: str | None = None,
    event_type: str | None = None,
) -> EventEnvelope:
    """An Entity Permissions decision in the seed's shape."""
    payload: dict[str, Any] = {"market_id": market_id, "decision": decision}
    if entity_id is not None:
        payload["entity_id"] = entity_id
    if reason is not None:
        payload["reason"] = reason
    return new_event(
        event_id=event_id or f"epc-{uuid.uuid4()}",
        event_type=event_type or f"market.{decision}",
        source="entity_permissions_core",
        aggregate_type="market",
        aggregate_id=market_id,
        payload=payload,
        context={"actor_id": "admin-1"},
    )


class Flow:
    def __init__(
        self,
        db: asyncpg.Connection,
        server: RedisServer,
        client: redis.Redis,
        log_dir: Path,
        env: dict[str, str],
    ) -> None:
        self.db = db
        self.redis_server = server
        self.stream = client
        self.log_dir = log_dir
        self._env = env
        self.processes: list[ManagedProcess] = []

    def env(self, **overrides: str) -> dict[str, str]:
        return {**self._env, "REDIS_URL": self.redis_server.url, **overrides}

    def launch(self, module: str, name: str, **overrides: str) -> ManagedProcess:
        process = ManagedProcess(
            f"{name}-{time.monotonic_ns()}", ["-m", module], self.env(**overrides), self.log_dir
        )
        self.processes.append(process)
        return process

    def launch_relay(self, name: str = "relay", **overrides: str) -> ManagedProcess:
        return self.launch("relay", name, **overrides)

    def launch_consumer(self, slot: int = 0, **overrides: str) -> ManagedProcess:
        return self.launch(
            "app.approvals", f"consumer-{slot}", CONSUMER_SLOT=str(slot), **overrides
        )

    def start_simulator(self, **overrides: str) -> tuple[ManagedProcess, str]:
        """The Entity Permissions Core simulator on a free port; returns its base URL."""
        port = free_port()
        process = self.launch("simulator", "epc", EPC_PORT=str(port), **overrides)
        base_url = f"http://127.0.0.1:{port}"
        process.wait_http_ok(f"{base_url}/health")
        return process, base_url

    def start_api(self, name: str = "api", **overrides: str) -> tuple[ManagedProcess, str]:
        process, base_url = start_api(self.env(**overrides), self.log_dir, name)
        self.processes.append(process)
        return process, base_url

    async def enqueue_decisions(self, events: list[EventEnvelope]) -> None:
        """Decisions into the outbox, as the webhook and the poller write them."""
        async with self.db.transaction():
            await enqueue(self.db, ENTITY_PERMISSIONS_EVENTS, events)

    async def xadd_decision(self, event: EventEnvelope, copies: int = 1) -> None:
        """A decision straight onto the stream, in the entry format of DESIGN.md."""
        fields: dict[Any, Any] = event.stream_fields(0)  # xadd's types are invariant
        for _ in range(copies):
            await self.stream.xadd(ENTITY_PERMISSIONS_EVENTS, fields)

    async def all_published(self, within: float = 120) -> None:
        async def done() -> bool:
            return await unpublished(self.db) == 0

        await wait_until(done, within, "the relay to publish every outbox row")

    async def check(self, stream: str = "markets:events") -> StreamReport:
        return await check_stream_against_outbox(self.db, self.stream, stream)

    async def register_markets(self, base_url: str, count: int) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            markets = []
            for n in range(count):
                response = await http.post(REGISTER, json=seed_body(name=f"Market {n}"))
                assert response.status_code == 201, response.text
                markets.append(response.json()["market"])
            return markets
