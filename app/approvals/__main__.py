"""`python -m app.approvals` (`make consume`): an approval consumer, and the poller of
Entity Permissions Core's feed when PERMISSIONS_SERVICE_BASE_URL is set (one process
polls at a time; in the others it stands by)."""

import asyncio

from app.approvals import consumer
from app.process import start_process, stop_on_signals
from app.settings import Settings
from relay import poller


async def serve(settings: Settings) -> None:
    stop = stop_on_signals()
    work = [consumer.run(settings, stop)]
    if settings.permissions_service_base_url:
        work.append(poller.run(settings, stop))
    await asyncio.gather(*work)


def main() -> None:
    asyncio.run(serve(start_process("consumer")))


if __name__ == "__main__":
    main()
