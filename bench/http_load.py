"""A lean HTTP/1.1 client for paced load: httpx spends a millisecond of CPU per request,
enough to make the load generator, not the service, the bottleneck at a few hundred
requests a second on two cores."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


class KeepAliveConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, base_url: str) -> KeepAliveConnection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, f"{parts.hostname}:{parts.port}")

    async def post_json(self, path: str, body: bytes) -> int:
        """POST and read the whole answer; returns the status code."""
        status, _ = await self._exchange(
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return status

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET; returns the status code and the body."""
        return await self._exchange(f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode())

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        self._writer.write(request)
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        return int(status_line.split()[1]), body

    def close(self) -> None:
        self._writer.close()


async def paced_posts(
    base_url: str, path: str, bodies: list[tuple[str, bytes]], rate: float, connections: int = 32
) -> dict[str, float]:
    """POST each (key, body) at `rate` per second; returns when each was sent, by key."""
    pool: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await KeepAliveConnection.open(base_url))
    sent: dict[str, float] = {}

    async def post(key: str, body: bytes) -> None:
        connection = await pool.get()
        try:
            sent[key] = time.time()
            status = await connection.post_json(path, body)
            assert status < 300, f"{path} answered {status}"
        finally:
            pool.put_nowait(connection)

    start = time.monotonic()
    tasks = []
    for n, (key, body) in enumerate(bodies):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(key, body)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    return sent
