"""A value fetched at most once per interval, however many callers ask for it at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRefresh(Generic[T]):
    """The last value of `fetch`, fetched again at most every `interval_s`.

    Callers that arrive while a fetch runs wait for that same fetch (single-flight), so
    a flood of requests costs the dependency one fetch per interval, not one per request.
    The interval counts from the end of a fetch, whatever its outcome: a slow or failing
    dependency is left alone for a whole interval between two fetches. `fetch` reports
    its own failures in the value it returns; should it raise, its waiters get the error
    and the next interval tries again.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        initial: T,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._running: asyncio.Task[T] | None = None
        self.value = initial

    async def latest(self, *, wait: bool = True) -> T:
        """The value, fetched again first when due. `wait=False`: the value as it is now,
        with the fetch that is due left to run for the callers after (a page that must
        answer fast shows figures one interval older rather than wait for them)."""
        if self._running is None and self._clock() >= self._next_at:
            self._running = asyncio.create_task(self._run())
        if self._running is not None and wait:
            # Shielded: a caller that goes away (client disconnected) cancels only its wait.
            await asyncio.shield(self._running)
        return self.value

    async def _run(self) -> T:
        try:
            self.value = await self._fetch()
        finally:
            self._next_at = self._clock() + self._interval_s
            self._running = None
        return self.value
