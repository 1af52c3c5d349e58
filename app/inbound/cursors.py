"""poller_cursors: how far the poller has read a source's feed."""

from __future__ import annotations

from app.db import Connection


class PollerCursorRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def get(self, source: str) -> str | None:
        cursor: str | None = await self._connection.fetchval(
            "SELECT cursor FROM poller_cursors WHERE source = $1", source
        )
        return cursor

    async def save(self, source: str, cursor: str | None) -> None:
        """Store the cursor (None before the feed gave one) and when it was last read."""
        await self._connection.execute(
            """
            INSERT INTO poller_cursors (source, cursor, updated_at) VALUES ($1, $2, now())
            ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, updated_at = now()
            """,
            source,
            cursor,
        )
