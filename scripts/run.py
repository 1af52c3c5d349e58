"""`make run`: every process of the service in one terminal, each line prefixed by its name.

It is for a person at a terminal, so APP_ENV left unset (in the environment and `.env`)
means development here, and the processes it starts are told so explicitly; an APP_ENV
that is set, production included, is passed on as it is.

The API, the relay and a consumer; in development also the Entity Permissions Core
simulator, with both integration paths wired to it: it pushes each decision to the
webhook (signed with a secret made for this run unless WEBHOOK_SECRETS is set) and the
consumer process polls its feed. The simulator is started first and the consumer only
once it answers, so that the poller's first request finds it. In development an
ADMIN_TOKEN is made for the run when none is set, so that the admin API works at once.

Once every process is up (the API ready, the simulator answering, the relay and the
consumer at work), one block says where everything is and what to do next. Ctrl-C (or
SIGTERM) stops them all, each given time to finish what it has in flight. If one exits
on its own, the others are stopped too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from app.backoff import sleep_unless
from app.console.auth import PREFIX as CONSOLE_PREFIX
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
# The line each worker writes once it is at work (it has no port to ask).
READY_LINES: dict[str, tuple[str, ...]] = {
    "relay": ("leading: publishing", "waiting as standby"),
    "consumer": ("consuming entity-permissions:events",),
}
# The operator console's path on the API, for the ready block.
CONSOLE_PATH = f"{CONSOLE_PREFIX}/"
NOT_READY_AFTER_S = 60
RULE = 72  # the ready block's width


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
    """Environment that points the service and the simulator at each other, and the
    secrets nobody set, made for this run."""
    secret = (
        settings.webhook_secrets[0]
        if settings.webhook_secrets
        else "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    base_url = settings.permissions_service_base_url or simulator_url()
    api_key = settings.permissions_service_api_key or DEV_EPC_KEY
    webhook = f"{api_url(settings)}/api/v1/webhooks/entity-permissions"
    return {
        "WEBHOOK_SECRETS": " ".join(settings.webhook_secrets) or secret,
        "ADMIN_TOKEN": settings.admin_token or secrets.token_urlsafe(32),
        "PERMISSIONS_SERVICE_BASE_URL": base_url,
        "PERMISSIONS_SERVICE_API_KEY": api_key,
        "EPC_PORT": str(SIMULATOR_PORT),
        "EPC_API_KEY": api_key,
        "EPC_WEBHOOK_URL": webhook,
        "EPC_WEBHOOK_SECRET": secret,
    }


def api_url(settings: Settings) -> str:
    """Where a client on this machine reaches the API."""
    host = settings.http_host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere, loopback included
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def simulator_url() -> str:
    return f"http://127.0.0.1:{SIMULATOR_PORT}"


def ready_block(settings: Settings, env: dict[str, str]) -> str:
    """What `make run` prints once everything is up: where things are, what to do next."""
    api = api_url(settings)
    development = settings.app_env == "development"
    rows = [("API", api), ("API docs", f"{api}/schema"), ("console", f"{api}{CONSOLE_PATH}")]
    if development:
        rows.append(("simulator", f"{simulator_url()}   (Entity Permissions Core, in memory)"))
        made = "made for this run" if settings.admin_token is None else "from your settings"
        rows.append(("admin API", f"ADMIN_TOKEN={env['ADMIN_TOKEN']}   ({made})"))
        rows.append(("webhook", "unsigned requests from this machine accepted, with a warning"))
    width = max(len(label) for label, _ in rows)
    lines = [f"-- run: ready ({settings.app_env}) ".ljust(RULE, "-")]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    if development:
        lines.append("  next: make demo   (in another shell), then the README's quick start")
    lines.append("-" * RULE)
    return "\n".join(lines) + "\n"


COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"
GRACE_S = 15


class Run:
    """The processes of one `make run`: started, their output relayed, stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.at_work: dict[str, asyncio.Event] = {}
        # Set by a stop signal or by a process that exited on its own: everything ends.
        self.ending = asyncio.Event()
        self.stopped_by_signal = False

    async def start(self, name: str, args: list[str]) -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
        )
        self.children[name] = child
        self.at_work[name] = asyncio.Event()
        colour = COLOURS[len(self.children) % len(COLOURS)]
        assert child.stdout is not None
        self._tasks.append(asyncio.create_task(self._pump(name, colour, child.stdout)))
        self._tasks.append(asyncio.create_task(self._watch(name, child)))

    def stop(self) -> None:
        self.stopped_by_signal = True
        self.ending.set()

    async def _pump(self, name: str, colour: str, stream: asyncio.StreamReader) -> None:
        width = max(map(len, [*PROCESSES, "epc"]))
        prefix = (
            f"{colour}{name:<{width}} |{RESET} " if sys.stdout.isatty() else f"{name:<{width}} | "
        )
        markers = READY_LINES.get(name, ())
        while line := await stream.readline():
            text = line.decode(errors="replace")
            if any(marker in text for marker in markers):
                self.at_work[name].set()
            sys.stdout.write(prefix + text)
            sys.stdout.flush()

    async def _watch(self, name: str, child: asyncio.subprocess.Process) -> None:
        code = await child.wait()
        if not self.ending.is_set():
            say(f"{name} exited with status {code}; stopping the others")
            self.ending.set()

    async def until(self, condition: Callable[[], Awaitable[bool]]) -> bool:
        """Wait for `condition`; False when the run ends first."""
        while not self.ending.is_set():
            if await condition():
                return True
            await sleep_unless(self.ending, 0.1)
        return False

    async def shutdown(self) -> int:
        for child in self.children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(child.wait()) for child in self.children.values()]
        await asyncio.wait(waits, timeout=GRACE_S)
        for name, child in self.children.items():
            if child.returncode is None:
                say(f"{name} still running after {GRACE_S} s: killed")
                child.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        say(f"stopped {', '.join(self.children)}")
        codes = [child.returncode or 0 for child in self.children.values()]
        return 0 if self.stopped_by_signal and not any(codes) else max(codes, default=0)


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


async def answers(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def not_up(run: Run, settings: Settings, http: httpx.AsyncClient) -> list[str]:
    """The processes not up yet: the API not ready, the simulator not answering, a worker
    that has not said it is at work."""
    missing = [] if await answers(http, f"{api_url(settings)}/ready") else ["api"]
    if "epc" in run.children and not await answers(http, f"{simulator_url()}/health"):
        missing.append("epc")
    return missing + [name for name in READY_LINES if not run.at_work[name].is_set()]


async def announce_when_ready(run: Run, settings: Settings, http: httpx.AsyncClient) -> None:
    """Print the ready block once every process is up; say which are not after a minute."""
    started = time.monotonic()
    warned = False

    async def all_up() -> bool:
        nonlocal warned
        missing = await not_up(run, settings, http)
        if missing and not warned and time.monotonic() - started > NOT_READY_AFTER_S:
            say(f"not ready after {NOT_READY_AFTER_S} s: waiting for {', '.join(missing)}")
            warned = True
        return not missing

    if await run.until(all_up):
        sys.stdout.write(ready_block(settings, run.env))
        sys.stdout.flush()


async def main() -> int:
    settings = local_settings()
    say(f"APP_ENV={settings.app_env}")
    run = Run(child_environment(settings, dict(os.environ)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, run.stop)
    # Local checks: never through a proxy the environment names.
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        if settings.app_env == "development":
            await run.start("epc", SIMULATOR)
        await run.start("api", PROCESSES["api"])
        await run.start("relay", PROCESSES["relay"])
        # The consumer polls the simulator: it starts once the simulator answers.
        if "epc" not in run.children or await run.until(
            lambda: answers(http, f"{simulator_url()}/health")
        ):
            await run.start("consumer", PROCESSES["consumer"])
            ready = asyncio.create_task(announce_when_ready(run, settings, http))
            await run.ending.wait()
            ready.cancel()
        return await run.shutdown()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
