"""One PostgreSQL transaction around each use case, and the outbox events it commits.

A base the features build on, so it knows no feature: it opens the transaction, holds
its connection, enqueues outbox events in it and commits it. Each use case builds the
repositories it needs over that connection, where it needs them:
`MarketRepository(uow.connection)`. A repository is a thin reader and writer of its
tables over the connection it is given, so binding every one here bought nothing but an
import of each feature by the module each feature imports: a cycle. Nor does each
feature get a unit of work of its own binding its repositories (Cosmic Python's way):
what that buys is swapping the repositories for fakes, which no test here does (they
run against PostgreSQL), and use cases that span features (a decision changes a market
and records its event; the console reads both) would need one class per combination.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

import outbox


class UnitOfWork:
    """`async with uow:` opens the transaction; nothing is kept unless `commit()` is called."""

    connection: PoolConnectionProxy  # the transaction's, for the repositories of a use case

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
