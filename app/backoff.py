"""Capped exponential back-off with jitter, logging once per change of state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random


class Backoff:
    """Track one dependency's failures: `failed()` gives the next delay, `succeeded()` resets.

    Logs a warning when the dependency first fails and an info line when it answers again,
    not one line per retry.
    """

    def __init__(
        self, name: str, log: logging.Logger, *, base_s: float = 0.1, cap_s: float = 5.0
    ) -> None:
        self.name = name
        self._log = log
        self._base_s = base_s
        self._cap_s = cap_s
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        if self.failures == 0:
            self._log.warning(
                "%s unavailable, retrying with back-off: %s: %s",
                self.name,
                type(error).__name__,
                error,
            )
        self.failures += 1
        ceiling: float = min(self._cap_s, self._base_s * 2.0 ** min(self.failures, 16))
        # Half fixed, half random: retries from many processes spread out without
        # ever retrying at once.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def succeeded(self) -> None:
        if self.failures:
            self._log.info("%s available again after %d failed attempts", self.name, self.failures)
            self.failures = 0

    async def wait_after(self, error: BaseException, stop: asyncio.Event) -> None:
        """Sleep the next delay, waking early when `stop` is set."""
        await sleep_unless(stop, self.failed(error))


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, or return as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
