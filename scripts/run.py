"""`make run`: every process of the service in one terminal, each line prefixed by its name.

Ctrl-C (or SIGTERM) stops them all, each given time to finish what it has in flight.
If one exits on its own, the others are stopped too and the exit code is passed on.
"""

from __future__ import annotations

import asyncio
import signal
import sys

PROCESSES: dict[str, list[str]] = {
    "api": ["-m", "app"],
    "relay": ["-m", "relay"],
    "consumer": ["-m", "app.approvals"],
}
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"
GRACE_S = 15


async def _pump(name: str, colour: str, stream: asyncio.StreamReader) -> None:
    width = max(map(len, PROCESSES))
    prefix = f"{colour}{name:<{width}} |{RESET} " if sys.stdout.isatty() else f"{name:<{width}} | "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def main() -> int:
    children = {
        name: await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        for name, args in PROCESSES.items()
    }
    pumps = [
        asyncio.create_task(_pump(name, COLOURS[n % len(COLOURS)], child.stdout))
        for n, (name, child) in enumerate(children.items())
        if child.stdout is not None
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exited = [asyncio.create_task(child.wait()) for child in children.values()]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*exited, stopper], return_when=asyncio.FIRST_COMPLETED)
    for child in children.values():
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    await asyncio.wait(exited, timeout=GRACE_S)
    for child in children.values():
        if child.returncode is None:
            child.kill()
    await asyncio.gather(*pumps, return_exceptions=True)
    stopper.cancel()
    codes = [child.returncode or 0 for child in children.values()]
    return 0 if stop.is_set() and not any(codes) else max(codes, default=0)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
