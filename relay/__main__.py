"""`python -m relay`: the outbox relay (`make relay`; `outbox`, the default), `replay`
(`make replay`: retained outbox rows published again) and `cleanup` (`make cleanup`:
retention applied once, as the leading relay applies it while it runs). The poller of
Entity Permissions Core's feed is `python -m app.inbound` (`make poll`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import datetime

import asyncpg

from app.db import create_pool
from app.process import start_process
from app.settings import Settings
from outbox import mark_for_republish
from relay import outbox_relay, retention

log = logging.getLogger("relay")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("outbox", help="run the outbox relay (the default)")
    commands.add_parser("cleanup", help="apply retention once")
    replay = commands.add_parser("replay", help="re-publish retained outbox rows")
    replay.add_argument(
        "--since",
        required=True,
        type=datetime.fromisoformat,
        help="ISO time: rows created at or after it",
    )
    replay.add_argument("--stream", default=None, help="only this stream")
    args = parser.parse_args()

    if args.command == "cleanup":
        asyncio.run(_cleanup(start_process("cleanup")))
    elif args.command == "replay":
        settings = start_process("replay")
        asyncio.run(_replay(settings.database_url, args.since, args.stream))
    else:
        asyncio.run(outbox_relay.run(start_process("relay")))


async def _cleanup(settings: Settings) -> None:
    pool = await create_pool(settings, max_size=1)
    try:
        deleted = await retention.apply_retention(pool, settings)
    finally:
        await pool.close()
    log.info(
        "cleanup: deleted %d outbox rows, %d processed events, %d idempotency keys",
        deleted.outbox,
        deleted.processed_events,
        deleted.idempotency_keys,
    )


async def _replay(database_url: str, since: datetime, stream: str | None) -> None:
    if since.tzinfo is None:
        parser_error = f"--since {since.isoformat()} has no time zone; add Z or +00:00"
        raise SystemExit(parser_error)
    connection = await asyncpg.connect(database_url)
    try:
        count = await mark_for_republish(connection, since, stream)
    finally:
        await connection.close()
    log.info(
        "replay: %d rows since %s%s marked for the relay to publish again",
        count,
        since.isoformat(),
        f" on {stream}" if stream else "",
    )


if __name__ == "__main__":
    main()
