"""`python -m app.inbound` (`make poll`): the poller of Entity Permissions Core's feed, in
a process of its own (`make consume` runs the same poller beside each consumer).

One process polls at a time across all of them (an advisory lock); the others stand by.
"""

import asyncio

from app.inbound import poller
from app.process import start_process


def main() -> None:
    settings = start_process("poller")
    if not settings.permissions_service_base_url:
        raise SystemExit("PERMISSIONS_SERVICE_BASE_URL is not set: nothing to poll")
    asyncio.run(poller.run(settings))


if __name__ == "__main__":
    main()
