"""What every long-running process of the project shares: settings, logging, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, NoReturn

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

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
    settings = checked_or_exit(role)
    try:
        tracing.configure(role)
    except ConfigError as error:
        refuse_to_start(error)
    settle_heap()
    return settings


def settle_heap() -> None:
    """Once a process has imported and built what it runs with: those objects live as
    long as it does, so the collector stops scanning them (gc.freeze). A full collection
    otherwise walks every module, class and route of the process, a pause of 10-45 ms
    measured in an API worker, in the middle of whatever request is running."""
    gc.collect()
    gc.freeze()


def checked_or_exit(role: str) -> Settings:
    """Settings, logging and the secrets check of a command, without tracing (the API's
    supervisor, which serves nothing itself, checks before starting its workers)."""
    settings = settings_or_exit(role)
    configure_logging(settings, role)
    try:
        settings.check_secrets(secrets_used_by(role))
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


# Where prometheus_client's multi-process mode keeps each worker's counters, so that a
# scrape answered by any worker counts every worker's requests.
METRICS_DIRECTORY_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"


def serve_http(factory: str, host: str, port: int, workers: int = 1) -> None:
    """Serve an app factory ("module:function") with uvicorn; logging stays ours.

    The factory checks the configuration; a refusal ends the process like any other
    command's, with its reason and no traceback. uvicorn's own X-Forwarded-For handling
    is off: it believes any loopback peer (FORWARDED_ALLOW_IPS, default 127.0.0.1) and
    rewrites the client address before the app sees it, whatever TRUSTED_PROXIES says.
    The webhook's guard is the one reader.

    With several workers, this process binds the port and supervises them (uvicorn's
    Multiprocess: a worker that dies is replaced; SIGTERM stops each gracefully); each
    worker builds the app itself. The caller has checked the configuration here first,
    and a worker that still fails to start ends this process with status 1.
    """
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }
    metrics_directory = _metrics_directory(workers)
    if workers == 1:
        os.environ.pop(SUPERVISOR_VARIABLE, None)  # one process: no supervisor to watch
        try:
            uvicorn.run(factory, **options)
        except ConfigError as error:
            refuse_to_start(error)
        return
    # Each worker builds the app through worker_app, which turns any failure to build it
    # into uvicorn's startup-failure status: the supervisor then stops, where a plain
    # exit would have it start another worker, failing the same way, forever.
    os.environ[FACTORY_VARIABLE] = factory
    config = uvicorn.Config("app.process:worker_app", workers=workers, **options)
    os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())  # inherited by every worker
    try:
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    finally:
        if metrics_directory is not None:
            shutil.rmtree(metrics_directory, ignore_errors=True)
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        log.critical("an API worker failed to start; its log says why")
        raise SystemExit(1)


# Set for the workers by their supervisor: its pid, which each worker watches, and the
# app factory ("module:function") each calls.
SUPERVISOR_VARIABLE: Final = "MARKET_API_SUPERVISOR_PID"
FACTORY_VARIABLE: Final = "MARKET_API_FACTORY"


def worker_app() -> Any:
    """One worker's app, from the factory its supervisor named; failing, the worker
    exits with STARTUP_FAILURE (one line for a refused configuration, else the
    traceback), which stops the supervisor with status 1."""
    module, _, function = os.environ[FACTORY_VARIABLE].partition(":")
    try:
        return getattr(importlib.import_module(module), function)()
    except ConfigError as error:
        log.critical("%s", error)
    except Exception:
        log.exception("an API worker could not build its app")
    raise SystemExit(STARTUP_FAILURE)


@contextlib.asynccontextmanager
async def stopping_with_supervisor() -> AsyncIterator[None]:
    """In an API worker: stop gracefully once the supervisor that started it is gone.

    A supervisor killed outright (SIGKILL, the OOM killer) would otherwise leave its
    workers serving the inherited socket with no one to stop or replace them; each
    notices within a second that its parent changed and sends itself SIGTERM."""
    supervisor = os.environ.get(SUPERVISOR_VARIABLE)
    if not supervisor or not supervisor.isdigit():
        yield
        return
    watch = asyncio.create_task(_stop_when_orphaned(int(supervisor)))
    try:
        yield
    finally:
        watch.cancel()


async def _stop_when_orphaned(supervisor: int) -> None:
    # Polled: nothing signals a process that its parent died unless it asked the kernel
    # beforehand (prctl PR_SET_PDEATHSIG, reachable only through ctypes), and a parent
    # that died before the ask would go unnoticed anyway.
    while os.getppid() == supervisor:  # noqa: ASYNC110
        await asyncio.sleep(1)
    log.warning("the API's supervisor (pid %d) is gone: this worker stops", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def _metrics_directory(workers: int) -> Path | None:
    """The shared metrics directory of several workers, empty (prometheus_client requires
    it: a previous run's counters would be added to this one's). One the operator named
    is emptied, whatever the number of workers, and None returned; otherwise, with
    several workers, one is made here, to be removed at exit."""
    given = os.environ.get(METRICS_DIRECTORY_VARIABLE)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers == 1:
        return None
    made = Path(tempfile.mkdtemp(prefix="market-api-metrics-"))
    os.environ[METRICS_DIRECTORY_VARIABLE] = str(made)  # inherited by every worker
    return made
