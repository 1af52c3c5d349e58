"""Who may call the webhook, and how often: an address allow list and a rate limit.

The rate limit counts in Redis, so it holds across API workers and hosts. When Redis
is unreachable the limit is not applied: a decision must still be accepted (it only
needs PostgreSQL), and an outage is no time to refuse one.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence

import redis.asyncio as redis

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


class SourceGuard:
    def __init__(self, allowed_cidrs: Sequence[str], trusted_proxies: Sequence[str]) -> None:
        self._allowed = _networks(allowed_cidrs)
        self._proxies = _networks(trusted_proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller: the peer, or, behind our own proxies, the last address they added."""
        address = _parse(peer)
        if address is None:
            return peer or "unknown"
        if forwarded_for and self._is_proxy(address):
            # Read right to left: addresses our proxies appended; the first one that is
            # not a proxy of ours is the client (anything left of it is the client's say).
            for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
                hop_address = _parse(hop)
                if hop_address is None:
                    break
                address = hop_address
                if not self._is_proxy(hop_address):
                    break
        return str(address)

    def allows(self, client: str) -> bool:
        if not self._allowed:
            return True
        address = _parse(client)
        return address is not None and any(address in network for network in self._allowed)

    def _is_proxy(self, address: Address) -> bool:
        return any(address in network for network in self._proxies)


class RateLimiter:
    """A fixed one-minute window per client, counted in Redis."""

    def __init__(
        self, client: redis.Redis, per_minute: int, prefix: str = "ratelimit:webhook"
    ) -> None:
        self._client = client
        self._per_minute = per_minute
        self._prefix = prefix
        self._redis_down = False

    async def allow(self, caller: str) -> bool:
        window = int(time.time() // 60)
        key = f"{self._prefix}:{caller}:{window}"
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await pipe.execute()
        except redis.RedisError as error:
            if not self._redis_down:
                log.warning("rate limit not applied while Redis is unreachable: %r", error)
                self._redis_down = True
            return True
        if self._redis_down:
            log.info("rate limit applied again: Redis answers")
            self._redis_down = False
        return int(count) <= self._per_minute


def _parse(value: str | None) -> Address | None:
    try:
        return ipaddress.ip_address(value or "")
    except ValueError:
        return None
