"""`make run`: every process of the service in one terminal, each line prefixed by its name.

It is for a person at a terminal, so APP_ENV left unset (in the environment and `.env`)
means development here, and the processes it starts are told so explicitly; an APP_ENV
that is set, production included, is passed on as it is.

The API, the relay and a consumer; in development also the Entity Permissions Core
simulator, with both integration paths wired to it: it pushes each decision to the
webhook (signed with a secret made for this run unless WEBHOOK_SECRETS is set) and the
consumer process polls its feed. Ctrl-C (or SIGTERM) stops them all, each given time
to finish what it has in flight. If one exits on its own, the others are stopped too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
from pathlib import Path

from app.settings import Settings, load_settings

PROCESSES: dict[str, list[str]] = {
    "api": ["-m", "app"],
    "relay": ["-m", "relay"],
    "consumer": ["-m", "app.approvals"],
}
SIMULATOR = ["-m", "simulator"]
SIMULATOR_PORT = 8000
DEV_EPC_KEY = "dev-epc-key"
# What `make run` and `make demo` assume when neither the environment nor `.env` says.
DEVELOPMENT_DEFAULTS = {"APP_ENV": "development"}


def local_settings(
    environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    return load_settings(environ, dotenv, defaults=DEVELOPMENT_DEFAULTS)


def child_environment(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment of every process `make run` starts: APP_ENV always explicit, so a
    child never falls back to its own default (production) behind our back."""
    env = {**environ, "APP_ENV": settings.app_env}
    if settings.app_env == "development":
        env |= development_wiring(settings)
    return env


def development_wiring(settings: Settings) -> dict[str, str]:
    """Environment that points the service and the simulator at each other."""
    secret = (
        settings.webhook_secrets[0]
        if settings.webhook_secrets
        else "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    base_url = settings.permissions_service_base_url or f"http://127.0.0.1:{SIMULATOR_PORT}"
    api_key = settings.permissions_service_api_key or DEV_EPC_KEY
    webhook = f"http://127.0.0.1:{settings.http_port}/api/v1/webhooks/entity-permissions"
    return {
        "WEBHOOK_SECRETS": " ".join(settings.webhook_secrets) or secret,
        "PERMISSIONS_SERVICE_BASE_URL": base_url,
        "PERMISSIONS_SERVICE_API_KEY": api_key,
        "EPC_PORT": str(SIMULATOR_PORT),
        "EPC_API_KEY": api_key,
        "EPC_WEBHOOK_URL": webhook,
        "EPC_WEBHOOK_SECRET": secret,
    }


COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"
GRACE_S = 15


async def _pump(name: str, colour: str, stream: asyncio.StreamReader) -> None:
    width = max(map(len, [*PROCESSES, "epc"]))
    prefix = f"{colour}{name:<{width}} |{RESET} " if sys.stdout.isatty() else f"{name:<{width}} | "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def main() -> int:
    settings = local_settings()
    print(f"run: APP_ENV={settings.app_env}", flush=True)
    processes = dict(PROCESSES)
    env = child_environment(settings, dict(os.environ))
    if settings.app_env == "development":
        processes["epc"] = SIMULATOR
    children = {
        name: await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        for name, args in processes.items()
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
