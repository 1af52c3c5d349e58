"""`make demo`: the seed's flow, step by step, against a running `make run`.

register -> approval requested on markets:events -> approve in the Entity Permissions
Core simulator -> the decision arrives (webhook push, and polling) -> market active.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import redis.asyncio as redis

from app.logging import address_of
from app.markets.events import Announced
from app.redis_client import entries_of
from app.settings import Settings
from scripts.run import SIMULATOR_PORT, local_settings

REGISTER_BODY = {
    "name": "Demo Market",
    "issuerId": "9b2f7c1e-1111-4a5b-8c9d-0123456789ab",
    "assetType": "real_estate",
    "tokenSymbol": "DEMO",
    "tokenName": "Demo Token",
    "totalSupply": 1000000,
    "entityId": "9b2f7c1e-2222-4a5b-8c9d-0123456789ab",
    "assetDetails": {"city": "Lisbon"},
}


def step(number: int, text: str) -> None:
    print(f"\n== {number}. {text}", flush=True)


def show(value: Any) -> None:
    print(json.dumps(value, indent=2), flush=True)


def redis_cli(url: str) -> str:
    """The redis-cli command that reaches REDIS_URL: bare for the default server and
    database, with -h/-p, -n, --tls, --user and --askpass (never the password) otherwise."""
    parts = urlsplit(url)
    args = ["redis-cli"]
    if parts.scheme == "unix":
        args += ["-s", parts.path]
    else:
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if host not in ("127.0.0.1", "localhost") or port != 6379:
            args += ["-h", host, "-p", str(port)]
        if parts.scheme == "rediss":
            args.append("--tls")
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database not in ("", "0"):
        args += ["-n", database]
    if parts.username:
        args += ["--user", unquote(parts.username)]
    if parts.password:
        args.append("--askpass")
    return shlex.join(args)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise SystemExit(f"demo: gave up waiting for {what} after {within:g} s")


def where_redis_is(url: str) -> str:
    """How the demo names the Redis it reads, in a message a person may need to act on."""
    return f"Redis at {address_of(url)} (REDIS_URL; `make run` must use the same one)"


async def demo(settings: Settings) -> None:
    api = f"http://127.0.0.1:{settings.http_port}"
    epc = settings.permissions_service_base_url or f"http://127.0.0.1:{SIMULATOR_PORT}"
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    cli = redis_cli(settings.redis_url)
    redis_named = where_redis_is(settings.redis_url)
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        try:
            await http.get("/health")
            await http.get(f"{epc}/health")
        except httpx.HTTPError:
            raise SystemExit(
                f"demo: nothing answers at {api} and {epc}: run `make run` in another shell first"
            ) from None

        step(1, "An issuer registers a market: the answer comes at once")
        print(f"POST {api}/api/v1/markets/register")
        response = await http.post("/api/v1/markets/register", json=REGISTER_BODY)
        response.raise_for_status()
        market = response.json()["market"]
        show(response.json())
        market_id = market["id"]

        step(2, "The relay put the approval request on markets:events")

        async def requested() -> dict[str, str] | None:
            for _, fields in entries_of(await client.xrevrange("markets:events", count=200)):
                if (
                    fields["aggregate_id"] == market_id
                    and fields["event_type"] == Announced.APPROVAL_REQUESTED
                ):
                    return fields
            return None

        on_the_stream = f"market.approval_requested on markets:events in {redis_named}"
        show(await eventually(requested, on_the_stream))
        print(f"see it yourself: {cli} XREVRANGE markets:events + - COUNT 2")

        step(3, "Entity Permissions Core (the simulator) lists it for an administrator")

        async def pending() -> list[dict[str, Any]] | None:
            listed = (await http.get(f"{epc}/api/v1/requests", params={"status": "pending"})).json()
            return [r for r in listed if r["market_id"] == market_id] or None

        show(await eventually(pending, "the request in the simulator"))

        step(4, "The administrator approves it (minutes or days later, in real life)")
        print(f"POST {epc}/api/v1/requests/{market_id}/approve")
        decision = await http.post(
            f"{epc}/api/v1/requests/{market_id}/approve", json={"actor_id": "admin-demo"}
        )
        decision.raise_for_status()
        show(decision.json())

        step(5, "The decision arrives by webhook (and by polling) and is applied once")

        async def active() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get(f"/api/v1/markets/{market_id}")).json()
            return body if body["market"]["status"] == "active" else None

        show(await eventually(active, "the market to become active"))

        step(6, "Look at the streams")
        for command in (
            ["XRANGE", "entity-permissions:events", "-", "+"],
            ["XINFO", "GROUPS", "entity-permissions:events"],
            ["XPENDING", "entity-permissions:events", "market-approvals"],
            ["XINFO", "GROUPS", "markets:events"],
        ):
            print(f"\n$ {cli} {' '.join(command)}")
            # The exact command the line above prints, sent as redis-cli sends it.
            show(await client.execute_command(*command))  # type: ignore[no-untyped-call]
    await client.aclose()
    print("\ndemo: done: the market is active", flush=True)


async def main() -> None:
    settings = local_settings()  # the same view of `.env` as the `make run` it talks to
    try:
        await demo(settings)
    except redis.RedisError as error:
        raise SystemExit(f"demo: {where_redis_is(settings.redis_url)}: {error}") from None


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
