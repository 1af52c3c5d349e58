"""One PostgreSQL transaction around each use case, with the repositories bound to it."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

import outbox
from app.approvals.processed_events import ProcessedEventRepository
from app.idempotency import IdempotencyRepository
from app.inbound.cursors import PollerCursorRepository
from app.markets.repository import MarketRepository


class UnitOfWork:
    """`async with uow:` opens the transaction; nothing is kept unless `commit()` is called."""

    connection: PoolConnectionProxy
    markets: MarketRepository
    idempotency: IdempotencyRepository
    processed_events: ProcessedEventRepository
    cursors: PollerCursorRepository

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._transaction: Transaction | None = None

    async def __aenter__(self) -> Self:
        self.connection = await self._pool.acquire()
        self._transaction = self.connection.transaction()
        try:
            await self._transaction.start()
        except BaseException:
            # A connection that cannot even begin is broken: never hand it out again.
            if not _lost(self.connection):
                self.connection.terminate()
            await self._pool.release(self.connection)
            raise
        self.markets = MarketRepository(self.connection)
        self.idempotency = IdempotencyRepository(self.connection)
        self.processed_events = ProcessedEventRepository(self.connection)
        self.cursors = PollerCursorRepository(self.connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        transaction, self._transaction = self._transaction, None
        try:
            if transaction is not None and not _lost(self.connection):
                await transaction.rollback()
        finally:
            await self._pool.release(self.connection)

    async def enqueue(self, stream: str, events: Sequence[outbox.EventEnvelope]) -> set[str]:
        """Events to publish on `stream` once this transaction commits."""
        return await outbox.enqueue(self.connection, stream, events)

    async def commit(self) -> None:
        transaction, self._transaction = self._transaction, None
        assert transaction is not None, "commit outside `async with`"
        # Whatever the commit raises is the error to report: a failed commit leaves
        # nothing to roll back, and the pool discards a connection left in a transaction.
        await transaction.commit()


def _lost(connection: PoolConnectionProxy) -> bool:
    """Whether there is nothing left to roll back: a connection that broke mid-query is
    taken back by the pool at once, and asking its proxy anything then raises."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True
