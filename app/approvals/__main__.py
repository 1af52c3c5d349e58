"""`python -m app.approvals`: the approval consumer (`make consume`)."""

import asyncio

from app.approvals import consumer
from app.process import start_process


def main() -> None:
    asyncio.run(consumer.run(start_process("consumer")))


if __name__ == "__main__":
    main()
