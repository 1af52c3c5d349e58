"""The relay's Redis side: atomic batch appends, fenced, refused on a Redis that lost
data, and trimmed without dropping what a consumer group of ours has not acknowledged.

Keys of the relay's own guard the appends:
- the marker holds the run_id of the Redis server it was set on. A Redis restarted
  without persistence (or flushed) has no marker; one restored from an older snapshot
  has a marker with another run_id. Either way the append script refuses (NOMARKER),
  in the same atomic step as the XADDs: nothing new is appended before the retention
  window is published again, which keeps each market's events in commit order.
- the term holds the highest leadership term that has claimed Redis. A relay appends
  only with the current term (FENCED otherwise): a leader that paused past the end of
  its lock and wakes up after a standby took over cannot append its stale batch.
- the streams hash holds, per stream, how many entries it had ever been given
  (XINFO STREAM's entries-added) after the relay's last append. A stream deleted since,
  even if something recreated it empty (a consumer's XGROUP CREATE MKSTREAM), has
  fewer: the script refuses (NOSTREAM) until that stream is published again.
- per stream, a hash counting the entries each group lost to trimming unread.

Each append also trims the streams it wrote, so that trimming keeps up with any rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import redis.asyncio as redis
from redis.commands.core import AsyncScript

from app.redis_client import text
from outbox.envelope import STREAM_FIELDS
from outbox.streams import OUR_GROUP_OF_STREAM, lost_entries_key

MARKER_KEY: Final = "market-backend:outbox-relay:marker"
TERM_KEY: Final = "market-backend:outbox-relay:term"
STREAMS_KEY: Final = "market-backend:outbox-relay:streams"
# Entries one trim may remove beyond those its batch added: a stream far over its length
# comes back over several turns instead of holding Redis for one long script.
TRIM_LIMIT: Final = 10_000

# Functions every script shares.
_LIBRARY = """
-- A whole number from a Redis value, within what a double holds exactly; nil otherwise.
local function integer(value)
  local n = tonumber(value)
  if n == nil or n ~= n or n < 0 or n > 9007199254740992 or n ~= math.floor(n) then
    return nil
  end
  return n
end
-- Refuse, before anything is written, a key of ours that holds another type: a script
-- that errs half-way has written its first half.
local function of_type(key, wanted)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= wanted then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. wanted
  end
  return nil
end
local function fields(flat)
  local t = {}
  for n = 1, #flat, 2 do t[flat[n]] = flat[n + 1] end
  return t
end
-- A term is ours to claim unless a higher one has: an unreadable value counts as none.
local function claim(term_key, term)
  local current = integer(redis.call('GET', term_key)) or 0
  if current > term then
    return string.format('FENCED term %d has claimed Redis; this relay leads term %d',
                         current, term)
  end
  if current < term then redis.call('SET', term_key, term) end
  return nil
end
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
end
local function guard(marker_key, term_key, term)
  local marker = redis.call('GET', marker_key)
  if not marker then
    return 'NOMARKER relay marker missing: Redis lost its data'
  end
  local server = run_id()
  if marker ~= server then
    return 'NOMARKER Redis restarted (run_id ' .. marker .. ' -> ' .. server .. ')'
  end
  return claim(term_key, term)
end
local function entries_added(key)
  if redis.call('EXISTS', key) == 0 then return 0 end
  return tonumber(fields(redis.call('XINFO', 'STREAM', key))['entries-added'])
end
local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if ams ~= bms then return tonumber(ams) < tonumber(bms) end
  return tonumber(aseq) < tonumber(bseq)
end
local function first_id(key)
  local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if #head == 0 then return '' end
  return head[1][1]
end
-- Trim `key` towards `length`, removing at most `limit` entries, whole nodes at a time.
-- mode 'acknowledged' (a stream our group `required` reads): only below the oldest
--   entry any group still needs (its oldest pending entry, else its last delivered
--   one), and nothing while `required` is missing: a consumer outage costs memory.
-- mode 'length' (readers outside the service): to the length whatever the groups; each
--   group's entries removed before it read them are counted in `lost_key`. A group's
--   unread-and-gone count is (entries ever added - entries left) - entries it read;
--   when Redis cannot tell what it read, the whole trim counts, flagged inexact.
-- Returns removed, the length left, then per group that lost entries: its name, how
-- many, its last delivered id, the first id left, 1 if exact else 0.
local function trim(key, lost_key, length, limit, mode, required)
  local size = redis.call('XLEN', key)
  if size <= length then return {0, size} end
  local excess = math.min(size - length, limit)
  local groups = {}
  local found = false
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local group = fields(flat)
    if group['name'] == required then found = true end
    table.insert(groups, group)
  end
  if mode == 'acknowledged' then
    if not found then return {0, size} end
    local keep = nil
    for _, group in ipairs(groups) do
      local point = group['last-delivered-id']
      local pending = redis.call('XPENDING', key, group['name'])
      if pending[1] > 0 then point = pending[2] end
      if keep == nil or before(point, keep) then keep = point end
    end
    local removed = redis.call('XTRIM', key, 'MINID', '~', keep, 'LIMIT', excess)
    return {removed, size - removed}
  end
  local added = tonumber(fields(redis.call('XINFO', 'STREAM', key))['entries-added'])
  local function gone_unread(group, left)
    local read = integer(group['entries-read'])
    if read == nil and integer(group['lag']) then read = added - group['lag'] end
    if read == nil then return nil end
    return math.max(0, (added - left) - read)
  end
  local gone_before = {}
  for n, group in ipairs(groups) do gone_before[n] = gone_unread(group, size) end
  local removed = redis.call('XTRIM', key, 'MAXLEN', '~', length, 'LIMIT', excess)
  local reply = {removed, size - removed}
  if removed == 0 then return reply end
  local first = first_id(key)
  for n, group in ipairs(groups) do
    local lost, exact = 0, 1
    local after = gone_unread(group, size - removed)
    if after then
      lost = after - (gone_before[n] or 0)
    elseif first ~= '' and before(group['last-delivered-id'], first) then
      lost, exact = removed, 0
    end
    if lost > 0 then
      local counted = integer(redis.call('HGET', lost_key, group['name'])) or 0
      redis.call('HSET', lost_key, group['name'], counted + lost)
      for _, value in ipairs({group['name'], lost, group['last-delivered-id'], first, exact}) do
        table.insert(reply, value)
      end
    end
  end
  return reply
end
"""

# KEYS: the marker, the term, the streams hash, then per stream of the batch the stream
# and its lost-entries hash. ARGV: the term, the number of streams, per stream its
# length, trim mode and required group, then per entry its stream's number and the
# values of STREAM_FIELDS (field names are spelt out here, not sent: half the
# arguments to encode). Returns the entries appended, then per loss the stream and the
# five values trim gives.
_FIELD_ARGS = ", ".join(f"'{name}', ARGV[i + {n}]" for n, name in enumerate(STREAM_FIELDS, 1))
_APPEND_BATCH = f"""
{_LIBRARY}
local term, streams = tonumber(ARGV[1]), tonumber(ARGV[2])
local refused = guard(KEYS[1], KEYS[2], term) or of_type(KEYS[3], 'hash')
for s = 1, streams do
  refused = refused or of_type(KEYS[2 + 2 * s], 'stream') or of_type(KEYS[3 + 2 * s], 'hash')
end
if refused then return redis.error_reply(refused) end
local added, count = {{}}, {{}}
for s = 1, streams do
  local key = KEYS[2 + 2 * s]
  local expected = integer(redis.call('HGET', KEYS[3], key))
  added[s] = entries_added(key)
  if expected and added[s] < expected then
    return redis.error_reply('NOSTREAM ' .. key)
  end
  count[s] = 0
end
local i = 3 + 3 * streams
local appended = 0
while i <= #ARGV do
  local s = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2 + 2 * s], '*', {_FIELD_ARGS})
  count[s] = count[s] + 1
  appended = appended + 1
  i = i + {len(STREAM_FIELDS) + 1}
end
local reply = {{appended}}
for s = 1, streams do
  local key = KEYS[2 + 2 * s]
  redis.call('HSET', KEYS[3], key, added[s] + count[s])
  local at = 2 + 3 * s
  local trimmed = trim(key, KEYS[3 + 2 * s], tonumber(ARGV[at - 2]), {TRIM_LIMIT} + count[s],
                       ARGV[at - 1], ARGV[at])
  for n = 3, #trimmed, 5 do
    table.insert(reply, key)
    for k = 0, 4 do table.insert(reply, trimmed[n + k]) end
  end
end
return reply
"""

# KEYS: the term. ARGV: the term. Taking the lead: from now on lower terms are refused.
_CLAIM_TERM = f"""
{_LIBRARY}
local refused = claim(KEYS[1], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
return 1
"""

# KEYS: the marker, the term, the streams hash. ARGV: the term. Marks this server as
# holding everything published so far, once the retention window is queued again:
# every stream's present state is accepted. Returns the server's run_id.
_SET_MARKER = f"""
{_LIBRARY}
local refused = claim(KEYS[2], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
local server = run_id()
redis.call('SET', KEYS[1], server)
redis.call('DEL', KEYS[3])
return server
"""

# KEYS: the term, the streams hash. ARGV: the term, the stream. One stream is queued
# again: its present state is accepted.
_ACCEPT_STREAM = f"""
{_LIBRARY}
local refused = claim(KEYS[1], tonumber(ARGV[1]))
if refused then return redis.error_reply(refused) end
return redis.call('HDEL', KEYS[2], ARGV[2])
"""

# KEYS: the streams hash. Returns the streams given fewer entries than the relay had
# appended to them: deleted since (and maybe recreated empty).
_LOST_STREAMS = f"""
{_LIBRARY}
local refused = of_type(KEYS[1], 'hash')
if refused then return redis.error_reply(refused) end
local lost = {{}}
local recorded = redis.call('HGETALL', KEYS[1])
for n = 1, #recorded, 2 do
  local expected = integer(recorded[n + 1])
  if expected and not of_type(recorded[n], 'stream')
     and entries_added(recorded[n]) < expected then
    table.insert(lost, recorded[n])
  end
end
return lost
"""

# KEYS: the stream, its lost-entries hash. ARGV: the length, the limit, the mode, the
# required group. Returns trim's reply.
_TRIM = f"""
{_LIBRARY}
local refused = of_type(KEYS[1], 'stream') or of_type(KEYS[2], 'hash')
if refused then return redis.error_reply(refused) end
return trim(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4])
"""

_FENCED_BY = re.compile(r"FENCED term (\d+)")


class RedisLostData(Exception):
    """The marker is gone or from another server run: Redis restarted or was flushed."""


class StreamLost(Exception):
    """A stream the relay wrote to was deleted (and maybe recreated empty) since."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream} is gone")
        self.stream = stream


class RelayFenced(Exception):
    """A relay of a higher leadership term has claimed Redis: this one no longer leads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        found = _FENCED_BY.search(message)
        self.claimed_term = int(found[1]) if found else 0


class GroupLoss(msgspec.Struct, frozen=True):
    """Entries of a stream trimmed before a consumer group read them."""

    stream: str
    group: str
    entries: int
    last_delivered_id: str
    first_left: str  # the oldest entry left after the trim ('' when none)
    exact: bool  # False: Redis could not tell what the group read; at most `entries`


class Appended(msgspec.Struct, frozen=True):
    entries: int
    losses: list[GroupLoss]


class Trimmed(msgspec.Struct, frozen=True):
    removed: int
    length: int  # entries left
    losses: list[GroupLoss]


class StreamPublisher:
    def __init__(
        self,
        client: redis.Redis,
        maxlen_of: Callable[[str], int],
        our_group_of: dict[str, str] = OUR_GROUP_OF_STREAM,
    ) -> None:
        """`our_group_of`: streams read only by a group of ours, trimmed only below what
        every group has acknowledged, and not at all while that group is missing."""
        self._client = client
        self._maxlen_of = maxlen_of
        self._our_group_of = our_group_of
        self._append: AsyncScript = client.register_script(_APPEND_BATCH)
        self._claim: AsyncScript = client.register_script(_CLAIM_TERM)
        self._set_marker: AsyncScript = client.register_script(_SET_MARKER)
        self._accept_stream: AsyncScript = client.register_script(_ACCEPT_STREAM)
        self._lost_streams: AsyncScript = client.register_script(_LOST_STREAMS)
        self._trim: AsyncScript = client.register_script(_TRIM)

    async def append(self, rows: Sequence[Any], term: int) -> Appended:
        """XADD each row (a mapping with `stream` and STREAM_FIELDS) in order, atomically,
        then trim the streams written.

        Raises RedisLostData when the marker is missing or from another server run,
        StreamLost when a stream written before is gone, RelayFenced when a higher term
        has claimed Redis, redis errors when unreachable.
        """
        streams = list(dict.fromkeys(row["stream"] for row in rows))
        position = {stream: n for n, stream in enumerate(streams, start=1)}
        keys = [MARKER_KEY, TERM_KEY, STREAMS_KEY]
        argv: list[Any] = [term, len(streams)]
        for stream in streams:
            keys += [stream, lost_entries_key(stream)]
            argv += self._trim_rule(stream)
        for row in rows:
            argv.append(position[row["stream"]])
            argv.extend([row[name] for name in STREAM_FIELDS])
        reply = [text(item) for item in await self._guarded(self._append(keys=keys, args=argv))]
        losses = [_loss(reply[n], reply[n + 1 : n + 6]) for n in range(1, len(reply), 6)]
        return Appended(int(reply[0]), losses)

    async def claim(self, term: int) -> None:
        """Take the lead in Redis: appends of lower terms are refused from now on."""
        await self._guarded(self._claim(keys=[TERM_KEY], args=[term]))

    async def set_marker(self, term: int) -> str:
        """Mark this Redis as holding everything published so far; returns its run_id."""
        keys = [MARKER_KEY, TERM_KEY, STREAMS_KEY]
        return text(await self._guarded(self._set_marker(keys=keys, args=[term])))

    async def accept_stream(self, stream: str, term: int) -> None:
        """`stream` is being published again from the outbox: accept it as it is now."""
        await self._guarded(self._accept_stream(keys=[TERM_KEY, STREAMS_KEY], args=[term, stream]))

    async def lost_streams(self) -> list[str]:
        """Streams the relay wrote that were deleted since (maybe recreated empty)."""
        return [text(stream) for stream in await self._lost_streams(keys=[STREAMS_KEY])]

    async def trim(self, stream: str) -> Trimmed:
        """Trim `stream` towards its length (acknowledged entries only, where that applies)."""
        keys = [stream, lost_entries_key(stream)]
        maxlen, mode, required = self._trim_rule(stream)
        reply = [
            text(item)
            for item in await self._trim(keys=keys, args=[maxlen, TRIM_LIMIT, mode, required])
        ]
        losses = [_loss(stream, reply[n : n + 5]) for n in range(2, len(reply), 5)]
        return Trimmed(int(reply[0]), int(reply[1]), losses)

    def acknowledged_only(self, stream: str) -> bool:
        return stream in self._our_group_of

    async def marker(self) -> str | None:
        """The run_id of the Redis server the marker was set on; None when it is gone."""
        value = await self._client.get(MARKER_KEY)
        return value.decode() if isinstance(value, bytes) else value

    async def run_id(self) -> str:
        info = await self._client.info("server")
        return str(info["run_id"])

    def _trim_rule(self, stream: str) -> list[Any]:
        group = self._our_group_of.get(stream)
        return [self._maxlen_of(stream), "acknowledged" if group else "length", group or ""]

    @staticmethod
    async def _guarded(call: Any) -> Any:
        try:
            return await call
        except redis.ResponseError as error:
            message = str(error)
            if message.startswith("NOMARKER"):
                raise RedisLostData(message) from error
            if message.startswith("NOSTREAM "):
                raise StreamLost(message.removeprefix("NOSTREAM ")) from error
            if message.startswith("FENCED"):
                raise RelayFenced(message) from error
            raise


def _loss(stream: str, values: list[str]) -> GroupLoss:
    group, entries, last_delivered, first_left, exact = values
    return GroupLoss(stream, group, int(entries), last_delivered, first_left, exact == "1")
