"""The read-through cache of `GET /api/v1/markets/{id}`: rendered bodies in Redis.

Why Redis and not each process's memory: every API worker and every consumer sees one
copy, so the consumer that applies a decision invalidates it once, for all workers,
with no message that could be missed.

A market's view changes once at most: `pending_approval`, then `active` or `rejected`
with its one approval record, then never again (approvals/domain.decide refuses any
later decision). Each cached value carries that generation (0 pending, 1 decided)
before its body, `<generation>|<json>`. A value is only ever replaced by a later
generation, never an earlier one, which is what keeps a reader who read PostgreSQL
just before a decision committed from caching the old view over the new:

- the consumer, after it commits a decision and before it acknowledges the entry,
  writes a marker of generation 1 with no body (`1|`): the next read goes to
  PostgreSQL and caches the decided view; a pending view filled later is refused;
- a fill of a pending view expires MARKET_CACHE_PENDING_TTL_S after its read, the staleness
  bound should that marker not be written (the consumer died between its commit and
  the marker, or could not reach Redis: then the entry is not acknowledged, and the
  marker is written when it is delivered again);
- absence is never cached, so a registration has nothing to invalidate.

Decided views, which never change, are also kept in each process's memory (a bounded
LRU of MARKET_CACHE_LOCAL_ENTRIES): a read of a decided market then costs no round
trip at all. Only decided views are kept there, so nothing in it ever needs
invalidating, and a pending view is never served from it.

Redis away or slow never fails a read: the cache is skipped for a second and
PostgreSQL answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Final, NamedTuple

import redis.asyncio as redis
from cachetools import LRUCache

from app.markets.domain import MarketStatus

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "market-view:"
DECIDED: Final = 1
PENDING: Final = 0
# After an error, reads skip the cache this long: a Redis that is down or hung costs one
# time-out per worker per second, not one per request.
SKIP_AFTER_ERROR_S: Final = 1.0

# Bodies larger than this are not cached: a market's assetDetails may be up to a MiB,
# and the cache shares Redis with the streams.
MAX_CACHED_BODY: Final = 64 * 1024

# KEYS[1] the market's key. Returns {value or nil, Redis's clock in ms}: the clock a
# pending view's time-to-live counts from (app clocks and Redis's may differ).
_READ: Final = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]), t[1] * 1000 + math.floor(t[2] / 1000)}
"""

# KEYS[1] the market's key; ARGV: generation (0 or 1), body ("" for a marker), a
# time-to-live in ms, and for a pending view the deadline (Redis's clock, ms) it must not
# outlive, else "". Writes unless the deadline has passed, or the key holds a later
# generation, or the same one with a body already; a value this script did not write
# (no "0|" or "1|" first) counts as generation -1, replaced by anything.
_FILL: Final = """
local deadline = tonumber(ARGV[4])
if deadline then
    local t = redis.call('TIME')
    if deadline <= t[1] * 1000 + math.floor(t[2] / 1000) then return 0 end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 1)
if head ~= '' then
    local generation = (head == '1|' and 1) or (head == '0|' and 0) or -1
    local wanted = tonumber(ARGV[1])
    if generation > wanted then return 0 end
    if generation == wanted
        and (ARGV[2] == '' or redis.call('STRLEN', KEYS[1]) > 2) then return 0 end
end
if deadline then
    redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PXAT', ARGV[4])
else
    redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
end
return 1
"""


class Lookup(NamedTuple):
    """A read of the cache: the body on a hit; and Redis's clock at the read (None when
    Redis did not answer), which a pending view read after it may be cached until."""

    body: bytes | None
    redis_ms: int | None = None


_MISS: Final = Lookup(None)


def generation_of(status: MarketStatus) -> int:
    return PENDING if status == MarketStatus.PENDING_APPROVAL else DECIDED


def cache_key(market_id: uuid.UUID | str) -> str:
    return f"{KEY_PREFIX}{market_id}"


class MarketViewCache:
    """Rendered market views by id; `enabled=False` makes every read a miss."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        pending_ttl_s: float,
        decided_ttl_s: float,
        enabled: bool = True,
        local_entries: int = 0,
    ) -> None:
        self.enabled = enabled
        self._client = client
        self._read = client.register_script(_READ)
        self._fill = client.register_script(_FILL)
        self._ttl_ms = {PENDING: int(pending_ttl_s * 1000), DECIDED: int(decided_ttl_s * 1000)}
        self._skip_until = 0.0
        # Decided views by market id: final, so never invalidated (the module's docstring).
        self._decided: LRUCache[uuid.UUID, bytes] | None = (
            LRUCache(maxsize=local_entries) if enabled and local_entries > 0 else None
        )

    async def get(self, market_id: uuid.UUID) -> Lookup:
        """The cached body, or a miss (none, a marker, the cache off or unreachable)."""
        if self._decided is not None and (local := self._decided.get(market_id)) is not None:
            return Lookup(local)
        if not self._usable():
            return _MISS
        try:
            value, redis_ms = await self._read(keys=[cache_key(market_id)])
        except redis.RedisError as error:
            self._failed("read", error)
            return _MISS
        generation, _sep, body = (value or b"").partition(b"|")
        if not body or generation not in (b"0", b"1"):
            return Lookup(None, int(redis_ms))
        if generation == b"1":
            self._keep_decided(market_id, body)
        return Lookup(body)

    async def fill(
        self, market_id: uuid.UUID, status: MarketStatus, body: bytes, lookup: Lookup
    ) -> None:
        """Cache a view read from PostgreSQL after the cache `lookup` missed, unless a
        later generation is there.

        A pending view lives MARKET_CACHE_PENDING_TTL_S from the lookup, by Redis's own
        clock, and the script refuses it once that has passed: however late the write
        runs (a slow loop, a stalled Redis), a pending view read before a decision is
        gone that long after the decision at the latest (the bound the README states).
        Without the lookup's clock (Redis did not answer it), a pending view is not
        cached."""
        if len(body) > MAX_CACHED_BODY:
            return
        generation = generation_of(status)
        if generation == DECIDED:
            self._keep_decided(market_id, body)
        if not self._usable():
            return
        deadline: int | str = ""
        if generation == PENDING:
            if lookup.redis_ms is None:
                return
            deadline = lookup.redis_ms + self._ttl_ms[PENDING]
        try:
            await self._fill(
                keys=[cache_key(market_id)],
                args=[generation, body, self._ttl_ms[generation], deadline],
            )
        except redis.RedisError as error:
            self._failed("fill", error)

    async def decided(self, market_ids: Iterable[str]) -> None:
        """Mark these markets decided: their cached pending views stop being served.

        Raises RedisError: the caller (the consumer) leaves its entries unacknowledged
        until this is done, which is what makes the invalidation as sure as the decision.
        """
        ids = sorted(set(market_ids))
        if not ids or not self.enabled:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for market_id in ids:
                await self._fill(
                    keys=[cache_key(market_id)],
                    args=[DECIDED, "", self._ttl_ms[DECIDED], ""],
                    client=pipe,
                )
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()

    def _keep_decided(self, market_id: uuid.UUID, body: bytes) -> None:
        if self._decided is not None:
            self._decided[market_id] = body

    def _usable(self) -> bool:
        return self.enabled and time.monotonic() >= self._skip_until

    def _failed(self, what: str, error: redis.RedisError) -> None:
        if time.monotonic() >= self._skip_until:
            log.warning("market cache %s failed, reading PostgreSQL for a while: %r", what, error)
        self._skip_until = time.monotonic() + SKIP_AFTER_ERROR_S
