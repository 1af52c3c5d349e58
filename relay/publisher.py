"""XADD a batch of outbox rows atomically, refusing when Redis has lost its data.

The relay keeps a marker key in Redis. A Redis restarted without persistence comes
back without it, and the script that appends a batch checks for it in the same atomic
step: so nothing new is appended to an emptied stream before the retention window is
re-published, which keeps each market's events in commit order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as redis
from redis.commands.core import AsyncScript

from outbox.envelope import STREAM_FIELDS

MARKER_KEY: Final = "market-backend:outbox-relay:marker"

# KEYS: the marker, then each stream of the batch. ARGV: the number of streams, their
# MAXLENs, then per entry the stream's position in KEYS and the values of STREAM_FIELDS.
# Field names are spelt out in the script, not sent: half the arguments to encode.
_FIELD_ARGS = ", ".join(f"'{name}', ARGV[i + {n}]" for n, name in enumerate(STREAM_FIELDS, 1))
_APPEND_BATCH = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOMARKER relay marker missing: Redis lost its data')
end
local i = tonumber(ARGV[1]) + 2
local appended = 0
while i <= #ARGV do
  local s = tonumber(ARGV[i])
  redis.call('XADD', KEYS[s + 1], 'MAXLEN', '~', ARGV[s + 1], '*', {_FIELD_ARGS})
  appended = appended + 1
  i = i + {len(STREAM_FIELDS) + 1}
end
return appended
"""


class RedisLostData(Exception):
    """The marker is gone: Redis restarted empty or was flushed."""


class StreamPublisher:
    def __init__(self, client: redis.Redis, maxlen_of: Callable[[str], int]) -> None:
        self._client = client
        self._maxlen_of = maxlen_of
        self._append: AsyncScript = client.register_script(_APPEND_BATCH)

    async def append(self, rows: Sequence[Any]) -> int:
        """XADD each row (a mapping with `stream` and STREAM_FIELDS) in order, atomically.

        Raises RedisLostData when the marker is missing, redis errors when unreachable.
        """
        streams = list(dict.fromkeys(row["stream"] for row in rows))
        position = {stream: n for n, stream in enumerate(streams, start=1)}
        argv: list[Any] = [len(streams), *(self._maxlen_of(s) for s in streams)]
        for row in rows:
            argv.append(position[row["stream"]])
            argv.extend([row[name] for name in STREAM_FIELDS])
        try:
            appended: int = await self._append(keys=[MARKER_KEY, *streams], args=argv)
        except redis.ResponseError as error:
            if str(error).startswith("NOMARKER"):
                raise RedisLostData(str(error)) from error
            raise
        return appended

    async def set_marker(self) -> str:
        """Mark this Redis as holding everything published so far; returns its run_id."""
        run_id = await self.run_id()
        await self._client.set(MARKER_KEY, run_id)
        return run_id

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
