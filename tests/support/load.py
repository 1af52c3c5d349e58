"""Steady mixed load on a running Stack, as its real users make it.

Issuers register markets at a fixed rate and retry, with the same Idempotency-Key, until
they get their 201; an administrator decides every approval request the simulator has
seen, approving most; readers fetch markets back. Everything accepted is recorded, so
that the end state can be counted against it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.support.markets import REGISTER, seed_body

# What a client retries besides a refused or cut connection: PostgreSQL is away.
RETRIED_STATUSES = frozenset({503})
RETRY_AFTER_S = 0.2


@dataclass
class Accepted:
    """What the service and Entity Permissions Core said yes to."""

    markets: set[str] = field(default_factory=set)
    decisions: dict[str, tuple[str, str]] = field(default_factory=dict)  # market -> event, verdict
    retries: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)  # "what: status" -> count


class SteadyLoad:
    def __init__(
        self, api_url: str, epc_url: str, rng: random.Random, *, registrations_per_s: float
    ) -> None:
        self._api = httpx.AsyncClient(base_url=api_url, timeout=10)
        self._epc = httpx.AsyncClient(base_url=epc_url, timeout=10)
        self._rng = rng
        self._interval = 1 / registrations_per_s
        self._registering: set[asyncio.Task[None]] = set()
        self.accepted = Accepted()

    async def aclose(self) -> None:
        for task in self._registering:
            task.cancel()
        await asyncio.gather(*self._registering, return_exceptions=True)
        await self._api.aclose()
        await self._epc.aclose()

    async def run(self, seconds: float, *, settle_s: float = 120) -> None:
        """Register for `seconds`; then decide until every registered market is decided."""
        registering_done = asyncio.Event()
        admin = asyncio.create_task(self._decide_all(registering_done))
        try:
            await self._register_steadily(seconds)
            registering_done.set()
            await asyncio.wait_for(asyncio.shield(admin), settle_s)
        finally:
            admin.cancel()

    async def _register_steadily(self, seconds: float) -> None:
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - started < seconds:
            task = asyncio.create_task(self._register(sent))
            self._registering.add(task)
            task.add_done_callback(self._registering.discard)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent * self._interval - now))
        await asyncio.gather(*self._registering)

    async def _register(self, n: int) -> None:
        headers = {"Idempotency-Key": f"load-{uuid.uuid4()}"}
        body = seed_body(name=f"Load market {n}")
        while True:
            response = await self._send(
                self._api, "POST", REGISTER, "register", json=body, headers=headers
            )
            if response is None:
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            if response.status_code == 201:
                market_id = response.json()["market"]["id"]
                self.accepted.markets.add(market_id)
                # A reader looks the new market up, as an issuer's front end would.
                await self._send(self._api, "GET", f"/api/v1/markets/{market_id}", "read market")
            return

    async def _decide_all(self, registering_done: asyncio.Event) -> None:
        while not (
            registering_done.is_set() and self.accepted.markets <= self.accepted.decisions.keys()
        ):
            response = await self._send(
                self._epc, "GET", "/api/v1/requests", "list requests", params={"status": "pending"}
            )
            pending = response.json() if response is not None and response.is_success else []
            for request in pending:
                await self._decide(request["market_id"])
            await asyncio.sleep(0.1)

    async def _decide(self, market_id: str) -> None:
        approve = self._rng.random() < 0.7
        path = f"/api/v1/requests/{market_id}/{'approve' if approve else 'reject'}"
        body = {"actor_id": "load-admin"} | ({} if approve else {"reason": "load rejection"})
        response = await self._send(self._epc, "POST", path, "decide", json=body)
        if response is not None and response.status_code == 200:
            event = response.json()
            self.accepted.decisions[market_id] = (event["event_id"], event["payload"]["decision"])

    async def _send(
        self, client: httpx.AsyncClient, method: str, path: str, what: str, **kwargs: object
    ) -> httpx.Response | None:
        """One request; None when it is to be retried (refused, cut short, or a status
        that means "not now"). Any other refusal is counted as unexpected."""
        try:
            response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError:
            self.accepted.retries += 1
            return None
        if response.status_code in RETRIED_STATUSES:
            self.accepted.retries += 1
            return None
        if response.status_code >= 400:
            self.accepted.unexpected[f"{what}: {response.status_code}"] += 1
        return response
