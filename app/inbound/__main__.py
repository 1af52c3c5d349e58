"""`python -m app.inbound` (`make poll`): the poller of Entity Permissions Core's feed, in
a process of its own (`make consume` runs the same poller beside each consumer).

One process polls at a time across all of them (an advisory lock); the others stand by.
"""

import asyncio

from app import tracing
from app.inbound import poller
from app.process import start_process
from app.settings import Settings


def main() -> None:
    settings = start_process("poller")
    if not settings.permissions_service_base_url:
        raise SystemExit("PERMISSIONS_SERVICE_BASE_URL is not set: nothing to poll")
    asyncio.run(poll_quietly(settings))


async def poll_quietly(settings: Settings) -> None:
    """Polls are not traced: one trace per poll interval would bury the others. The
    events a poll writes carry no trace context, so each starts a trace at the relay."""
    with tracing.quiet():
        await poller.run(settings)


if __name__ == "__main__":
    main()
