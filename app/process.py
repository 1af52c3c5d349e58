"""What every long-running process of the project shares: settings, logging, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Final, NoReturn

import uvicorn

from app import tracing
from app.logging import configure_logging
from app.settings import ConfigError, Settings, Uses, get_settings

log = logging.getLogger(__name__)

# The secrets each command reads, so that in production it requires those and no others.
# A role missing here requires every secret: a new command fails closed until listed.
SECRETS_USED: Final[dict[str, Uses]] = {
    "api": Uses.HTTP_API,
    "consumer": Uses.POLLING,  # it runs the poller when PERMISSIONS_SERVICE_BASE_URL is set
    "poller": Uses.POLLING,
    "relay": Uses.NOTHING,
    "cleanup": Uses.NOTHING,
    "replay": Uses.NOTHING,
}


def secrets_used_by(role: str) -> Uses:
    return SECRETS_USED.get(role, Uses.EVERYTHING)


def settings_or_exit(role: str) -> Settings:
    """The settings; a value that cannot be read ends the command naming it, no traceback."""
    try:
        return get_settings()
    except ConfigError as error:
        raise SystemExit(f"{role}: {error}") from None


def start_process(role: str) -> Settings:
    """Settings, logging, the secrets check and tracing (app/tracing: off unless OTEL_*
    asks for it) of a command; exits 1 naming what is wrong."""
    settings = settings_or_exit(role)
    configure_logging(settings, role)
    try:
        settings.check_secrets(secrets_used_by(role))
        tracing.configure(role)
    except ConfigError as error:
        refuse_to_start(error)
    return settings


def refuse_to_start(error: ConfigError) -> NoReturn:
    """One log line (JSON in production, for the log pipeline) and exit status 1, no traceback."""
    log.critical("%s", error)
    raise SystemExit(1)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: work in flight finishes, then the process exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# How long an idle connection is kept open: longer than clients and load balancers keep
# theirs (httpx 5 s, AWS load balancers 60 s), so that the client, never the server,
# ends an idle connection. uvicorn's 5 s raced clients that send on a connection at
# the moment it is closed under them (a reset, not an answer).
KEEP_ALIVE_S = 75


def serve_http(factory: str, host: str, port: int) -> None:
    """Serve an app factory ("module:function") with uvicorn; logging stays ours.

    The factory checks the configuration; a refusal ends the process like any other
    command's, with its reason and no traceback. uvicorn's own X-Forwarded-For handling
    is off: it believes any loopback peer (FORWARDED_ALLOW_IPS, default 127.0.0.1) and
    rewrites the client address before the app sees it, whatever TRUSTED_PROXIES says.
    The webhook's guard is the one reader.
    """
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    except ConfigError as error:
        refuse_to_start(error)
