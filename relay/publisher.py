"""The relay's Redis side: atomic batch appends, fenced and refused on a Redis that lost
data, and trimming that never drops what a consumer group of ours has not acknowledged.

Three keys guard the appends:
- the marker holds the run_id of the Redis server it was set on. A Redis restarted
  without persistence (or flushed) has no marker; one restored from an older snapshot
  has a marker with another run_id. Either way the append script refuses (NOMARKER),
  in the same atomic step as the XADDs: nothing new is appended before the retention
  window is published again, which keeps each market's events in commit order.
- the term holds the highest leadership term that has claimed Redis. A relay appends
  only with the current term (FENCED otherwise): a leader that paused past the end of
  its lock and wakes up after a standby took over cannot append its stale batch.
- per stream, a hash counting the entries each group lost to trimming unread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import redis.asyncio as redis
from redis.commands.core import AsyncScript

from outbox.envelope import STREAM_FIELDS
from outbox.streams import STREAMS_OF_OUR_GROUPS, lost_entries_key

MARKER_KEY: Final = "market-backend:outbox-relay:marker"
TERM_KEY: Final = "market-backend:outbox-relay:term"
# Entries one trim may remove: a stream far over its length comes back over several
# seconds instead of holding Redis for one long script.
TRIM_LIMIT: Final = 10_000

# Shared by the scripts: refuse unless the marker is this server's run_id and the term
# is ours (claimed: a lower term in Redis is raised to ours).
_GUARD = """
local function guard(marker_key, term_key, term)
  local marker = redis.call('GET', marker_key)
  if not marker then
    return 'NOMARKER relay marker missing: Redis lost its data'
  end
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  if marker ~= run_id then
    return 'NOMARKER Redis restarted (run_id ' .. marker .. ' -> ' .. run_id .. ')'
  end
  return claim(term_key, term)
end
"""
_CLAIM = """
local function claim(term_key, term)
  local current = tonumber(redis.call('GET', term_key) or '0')
  if current > term then
    return 'FENCED term ' .. current .. ' has claimed Redis; this relay leads term ' .. term
  end
  if current < term then redis.call('SET', term_key, term) end
  return nil
end
"""

# KEYS: the marker, the term, then each stream of the batch. ARGV: the term, then per
# entry its stream's position among the streams and the values of STREAM_FIELDS. Field
# names are spelt out in the script, not sent: half the arguments to encode.
_FIELD_ARGS = ", ".join(f"'{name}', ARGV[i + {n}]" for n, name in enumerate(STREAM_FIELDS, 1))
_APPEND_BATCH = f"""
{_CLAIM}
{_GUARD}
local refused = guard(KEYS[1], KEYS[2], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
local i = 2
local appended = 0
while i <= #ARGV do
  local s = tonumber(ARGV[i])
  redis.call('XADD', KEYS[s + 2], '*', {_FIELD_ARGS})
  appended = appended + 1
  i = i + {len(STREAM_FIELDS) + 1}
end
return appended
"""

# KEYS: the term. ARGV: the term. Taking the lead: from now on lower terms are refused.
_CLAIM_TERM = f"""
{_CLAIM}
local refused = claim(KEYS[1], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
return 1
"""

# KEYS: the marker, the term. ARGV: the term. Marks this server as holding everything
# published so far (after a refill has been queued); returns its run_id.
_SET_MARKER = f"""
{_CLAIM}
local refused = claim(KEYS[2], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
redis.call('SET', KEYS[1], run_id)
return run_id
"""

# KEYS: the stream, its lost-entries hash. ARGV: the stream's length, the trim limit,
# 'acknowledged' or 'length'.
# - acknowledged (streams read only by our own groups): entries are removed only below
#   the oldest entry any group still needs (its oldest pending entry, else its last
#   delivered one), so a consumer outage costs memory, never a decision. No group yet:
#   nothing is acknowledged, nothing removed.
# - length (streams with readers outside the service): trimmed to the length whatever
#   the groups; each group's entries removed before it read them are counted in the
#   hash and returned, so that the relay logs them. A group's unread-and-gone count is
#   (entries ever added - entries still here) - entries it has read.
# Returns {removed, the first id left ('' when empty), the length left, then per group
# that lost entries: its name, how many, its last delivered id}.
_TRIM = """
local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if ams ~= bms then return tonumber(ams) < tonumber(bms) end
  return tonumber(aseq) < tonumber(bseq)
end
local function fields(flat)
  local t = {}
  for n = 1, #flat, 2 do t[flat[n]] = flat[n + 1] end
  return t
end
local function first_id(key)
  local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if #head == 0 then return '' end
  return head[1][1]
end
local key, length, limit, mode = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local size = redis.call('XLEN', key)
if size <= length then return {0, '', size} end
local excess = math.min(size - length, limit)
local groups = {}
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  table.insert(groups, fields(flat))
end
if mode == 'acknowledged' then
  if #groups == 0 then return {0, first_id(key), size} end
  local keep = nil
  for _, group in ipairs(groups) do
    local point = group['last-delivered-id']
    local pending = redis.call('XPENDING', key, group['name'])
    if pending[1] > 0 then point = pending[2] end
    if keep == nil or before(point, keep) then keep = point end
  end
  local removed = redis.call('XTRIM', key, 'MINID', '~', keep, 'LIMIT', excess)
  return {removed, first_id(key), size - removed}
end
local added = tonumber(fields(redis.call('XINFO', 'STREAM', key))['entries-added'])
local function unread_gone(group, left)
  local read = group['entries-read']
  if not read and group['lag'] then read = added - group['lag'] end
  if not read then return nil end
  return math.max(0, (added - left) - read)
end
local gone_before = {}
for n, group in ipairs(groups) do gone_before[n] = unread_gone(group, size) end
local removed = redis.call('XTRIM', key, 'MAXLEN', '~', length, 'LIMIT', excess)
local first = first_id(key)
local reply = {removed, first, size - removed}
if removed == 0 then return reply end
for n, group in ipairs(groups) do
  local lost = 0
  local after = unread_gone(group, size - removed)
  if after then
    lost = after - (gone_before[n] or 0)
  elseif first ~= '' and before(group['last-delivered-id'], first) then
    lost = removed  -- the group's position is unknown: at most this trim
  end
  if lost > 0 then
    redis.call('HINCRBY', KEYS[2], group['name'], lost)
    table.insert(reply, group['name'])
    table.insert(reply, lost)
    table.insert(reply, group['last-delivered-id'])
  end
end
return reply
"""


class RedisLostData(Exception):
    """The marker is gone or from another server run: Redis restarted or was flushed."""


class RelayFenced(Exception):
    """A relay of a higher leadership term has claimed Redis: this one no longer leads."""


class GroupLoss(msgspec.Struct, frozen=True):
    """Entries a consumer group lost to trimming before it read them."""

    group: str
    entries: int
    last_delivered_id: str


class Trimmed(msgspec.Struct, frozen=True):
    removed: int
    first_id: str  # the oldest entry left ('' when the stream is empty)
    length: int  # entries left
    losses: list[GroupLoss]


class StreamPublisher:
    def __init__(
        self,
        client: redis.Redis,
        maxlen_of: Callable[[str], int],
        acknowledged_only: frozenset[str] = STREAMS_OF_OUR_GROUPS,
    ) -> None:
        """`acknowledged_only`: streams read only by our own groups, and so trimmed only
        below what they have all acknowledged."""
        self._client = client
        self._maxlen_of = maxlen_of
        self._acknowledged_only = acknowledged_only
        self._append: AsyncScript = client.register_script(_APPEND_BATCH)
        self._claim: AsyncScript = client.register_script(_CLAIM_TERM)
        self._set_marker: AsyncScript = client.register_script(_SET_MARKER)
        self._trim: AsyncScript = client.register_script(_TRIM)

    async def append(self, rows: Sequence[Any], term: int) -> int:
        """XADD each row (a mapping with `stream` and STREAM_FIELDS) in order, atomically.

        Raises RedisLostData when the marker is missing or from another server run,
        RelayFenced when a higher term has claimed Redis, redis errors when unreachable.
        """
        streams = list(dict.fromkeys(row["stream"] for row in rows))
        position = {stream: n for n, stream in enumerate(streams, start=1)}
        argv: list[Any] = [term]
        for row in rows:
            argv.append(position[row["stream"]])
            argv.extend([row[name] for name in STREAM_FIELDS])
        appended: int = await self._guarded(
            self._append(keys=[MARKER_KEY, TERM_KEY, *streams], args=argv)
        )
        return appended

    async def claim(self, term: int) -> None:
        """Take the lead in Redis: appends of lower terms are refused from now on."""
        await self._guarded(self._claim(keys=[TERM_KEY], args=[term]))

    async def set_marker(self, term: int) -> str:
        """Mark this Redis as holding everything published so far; returns its run_id."""
        run_id = await self._guarded(self._set_marker(keys=[MARKER_KEY, TERM_KEY], args=[term]))
        return run_id.decode() if isinstance(run_id, bytes) else str(run_id)

    async def trim(self, stream: str) -> Trimmed:
        """Trim `stream` towards its length (acknowledged entries only, where that applies)."""
        mode = "acknowledged" if stream in self._acknowledged_only else "length"
        reply = await self._trim(
            keys=[stream, lost_entries_key(stream)],
            args=[self._maxlen_of(stream), TRIM_LIMIT, mode],
        )
        removed, first, length, *flat = (_text(item) for item in reply)
        losses = [GroupLoss(flat[n], int(flat[n + 1]), flat[n + 2]) for n in range(0, len(flat), 3)]
        return Trimmed(int(removed), first, int(length), losses)

    async def marker(self) -> str | None:
        """The run_id of the Redis server the marker was set on; None when it is gone."""
        value = await self._client.get(MARKER_KEY)
        return value.decode() if isinstance(value, bytes) else value

    async def run_id(self) -> str:
        info = await self._client.info("server")
        return str(info["run_id"])

    async def missing(self, streams: Sequence[str]) -> list[str]:
        """Streams that no longer exist, of those named."""
        if not streams:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.exists(stream)
            found = await pipe.execute()
        return [stream for stream, exists in zip(streams, found, strict=True) if not exists]

    @staticmethod
    async def _guarded(call: Any) -> Any:
        try:
            return await call
        except redis.ResponseError as error:
            message = str(error)
            if message.startswith("NOMARKER"):
                raise RedisLostData(message) from error
            if message.startswith("FENCED"):
                raise RelayFenced(message) from error
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
