"""`python -m app.approvals` (`make consume`): an approval consumer, and the poller of
Entity Permissions Core's feed when PERMISSIONS_SERVICE_BASE_URL is set (one process
polls at a time; in the others it stands by).

The two share the process, not a fate: the poller runs as a task of its own that
restarts itself after any failure (app/inbound/poller.run), and should it end anyway the
consumer goes on. The consumer's end (a stop signal, or its own failure) stops the
poller cleanly, and the process ends as the consumer did.
"""

import asyncio
import logging

from app import tracing
from app.approvals import consumer
from app.inbound import poller
from app.process import start_process, stop_on_signals
from app.settings import Settings

log = logging.getLogger("approvals")


async def serve(settings: Settings) -> None:
    stop = stop_on_signals()
    polling = None
    if settings.permissions_service_base_url:
        polling = asyncio.create_task(poller.run(settings, stop), name="poller")
        polling.add_done_callback(_report_end)
    try:
        await consumer.run(settings, stop)
    finally:
        if polling is not None:
            stop.set()
            await asyncio.wait([polling])


def _report_end(polling: "asyncio.Task[None]") -> None:
    if not polling.cancelled() and (error := polling.exception()) is not None:
        log.error("the poller ended; the consumer goes on without it", exc_info=error)


async def serve_quietly(settings: Settings) -> None:
    """Traced (when on) only in the consumer's batch spans: its blocking reads and the
    poller's polls would otherwise make a trace of their own every few seconds."""
    with tracing.quiet():
        await serve(settings)


def main() -> None:
    asyncio.run(serve_quietly(start_process("consumer")))


if __name__ == "__main__":
    main()
