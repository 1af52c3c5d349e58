"""Stored first responses for requests sent with an Idempotency-Key header."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec

from app.app_error import AppError, FieldError
from app.db import DELETE_BATCH, Connection, delete_in_batches


class IdempotencyConflict(AppError):
    """The key was first used with a different request."""

    status_code = HTTPStatus.CONFLICT.value

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request",
            errors=[FieldError("Idempotency-Key", "already used with a different request body")],
        )
        self.key = key


class StoredResponse(msgspec.Struct, frozen=True):
    status: int
    body: Any


def fingerprint(request: msgspec.Struct) -> str:
    """The same request, however it was spelled on the wire, has the same fingerprint."""
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()


class IdempotencyRepository:
    def __init__(self, connection: Connection | asyncpg.Pool) -> None:
        self._connection = connection

    async def claim(self, key: str, request_fingerprint: str) -> StoredResponse | None:
        """Reserve `key` in this transaction, or return the response already stored for it.

        A concurrent request with the same key waits on the unique index until the
        first transaction ends, then finds its response (or, after a rollback, the key
        free again).
        """
        inserted = await self._connection.fetchval(
            """
            INSERT INTO idempotency_keys (key, request_fingerprint, response_status, response_body)
            VALUES ($1, $2, 0, 'null') ON CONFLICT (key) DO NOTHING RETURNING true
            """,
            key,
            request_fingerprint,
        )
        if inserted:
            return None
        row = await self._connection.fetchrow(
            "SELECT request_fingerprint, response_status, response_body"
            " FROM idempotency_keys WHERE key = $1",
            key,
        )
        assert row is not None, "a conflicting key is committed, so it is visible"
        if row["request_fingerprint"] != request_fingerprint:
            raise IdempotencyConflict(key)
        return StoredResponse(status=row["response_status"], body=row["response_body"])

    async def store(self, key: str, response: StoredResponse) -> None:
        await self._connection.execute(
            "UPDATE idempotency_keys SET response_status = $2, response_body = $3 WHERE key = $1",
            key,
            response.status,
            response.body,
        )

    async def delete_keys_created_before(
        self,
        older_than: datetime,
        batch: int = DELETE_BATCH,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Delete keys first used before `older_than`, a small transaction at a time until
        `stop` is set: a repeat after that is a new request."""
        return await delete_in_batches(
            self._connection,
            """
            DELETE FROM idempotency_keys WHERE key IN (
                SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT $2
            )
            """,
            older_than,
            batch,
            stop,
        )
