"""Who may call the webhook, and how often: an address allow list and a rate limit.

The caller is the peer, or, when the peer is one of TRUSTED_PROXIES, the address the
nearest of our proxies was given: X-Forwarded-For, every header line joined in order
(a client may write a line of its own, and some proxies, HAProxy's `option forwardfor`
among them, append theirs as a new line), read from the right past our proxies. A hop
our proxy passed on that is not an address is refused by the allow list; with none,
such callers share one rate-limit bucket per proxy.

The rate limit counts in Redis, so it holds across API workers and hosts, per IPv4
address and per IPv6 /64 (what one customer usually holds; counting per /128 would let
one machine take 2^64 buckets). When Redis is unreachable the limit is not applied: a
decision must still be accepted (it only needs PostgreSQL), and an outage is no time to
refuse one.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as redis

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The ways a hop is written: `ip`, `ip:port` (IPv4 only: in IPv6 the colons are the
# address's own), `[v6]` and `[v6]:port`; spaces around any of them.
_BRACKETED = re.compile(r"\[(?P<address>[^\]]+)\](?::[0-9]{1,5})?")
_IPV4_AND_PORT = re.compile(r"(?P<address>[0-9.]+):[0-9]{1,5}")
IPV6_BUCKET_PREFIX = 64
_SHOWN = 64  # characters of an unreadable hop repeated in an answer


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as far as we may believe it."""

    address: Address | None  # None: not an address (a hop our proxy passed on, a socket)
    rate_key: str  # the rate-limit bucket
    name: str  # for answers and logs


def _networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


class SourceGuard:
    def __init__(self, allowed_cidrs: Sequence[str], trusted_proxies: Sequence[str]) -> None:
        self._allowed = _networks(allowed_cidrs)
        self._proxies = _networks(trusted_proxies)

    def identify(self, peer: str | None, forwarded_for: Sequence[str]) -> Caller:
        """The caller, from the peer and every X-Forwarded-For line, in the order received."""
        address = parse_hop(peer or "")
        if address is None:
            return Caller(None, "peer-not-an-address", f"peer {_shown(peer or '')}")
        # Right to left: the hops our proxies appended; the first that is not a proxy of
        # ours is the client (anything left of it is the client's own say).
        for hop in reversed(_hops(forwarded_for)):
            if not self._is_proxy(address):
                break
            via, address = address, parse_hop(hop)
            if address is None:
                return Caller(
                    None,
                    f"unreadable-via-{rate_bucket(via)}",
                    f"X-Forwarded-For hop {_shown(hop)} from {via}, not an address,",
                )
        return Caller(address, rate_bucket(address), str(address))

    def allows(self, caller: Caller) -> bool:
        if not self._allowed:
            return True
        address = caller.address
        return address is not None and any(address in network for network in self._allowed)

    def _is_proxy(self, address: Address) -> bool:
        return any(address in network for network in self._proxies)


def from_this_machine(peer: str | None, headers: Mapping[str, str]) -> bool:
    """The socket's peer is a loopback address, and no proxy or tunnel says it forwarded
    the request: a local reverse proxy or a tunnel (ngrok and the like) connects from
    loopback on behalf of a caller anywhere, and says so in headers such as these.

    `headers` has its names in lower case, as the framework gives them. X-Forwarded-For
    never makes a caller local: only the socket's own peer address counts.
    """
    address = parse_hop(peer or "")
    if address is None or not address.is_loopback:
        return False
    return not any(_is_forwarding_header(name) for name in headers)


def _is_forwarding_header(name: str) -> bool:
    return name in ("forwarded", "x-real-ip", "via") or name.startswith("x-forwarded-")


def _hops(lines: Sequence[str]) -> list[str]:
    """Every hop of every line, in order; empty list elements are ignored (RFC 9110 5.6.1)."""
    return [hop for line in lines for hop in (part.strip() for part in line.split(",")) if hop]


def parse_hop(hop: str) -> Address | None:
    """An address written as `ip`, `ip:port`, `[v6]` or `[v6]:port`; IPv4-mapped IPv6 as
    IPv4, without an IPv6 zone. None for anything else."""
    hop = hop.strip()
    written = _BRACKETED.fullmatch(hop) or _IPV4_AND_PORT.fullmatch(hop)
    try:
        address = ipaddress.ip_address(written["address"] if written else hop)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:  # a zone (%eth0) means nothing off the sender's host
            return ipaddress.IPv6Address(address.packed)
    return address


def rate_bucket(address: Address) -> str:
    """An IPv4 address; an IPv6 address's /64."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, IPV6_BUCKET_PREFIX), strict=False))


def _shown(text: str) -> str:
    return repr(text[:_SHOWN] + ("..." if len(text) > _SHOWN else ""))


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
