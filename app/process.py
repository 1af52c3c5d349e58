"""What every long-running process of the project shares: settings, logging, signals."""

from __future__ import annotations

import asyncio
import signal

import uvicorn

from app.logging import configure_logging
from app.settings import Settings, get_settings


def start_process(role: str) -> Settings:
    settings = get_settings()
    configure_logging(settings, role)
    settings.check_secrets()
    return settings


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: work in flight finishes, then the process exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def serve_http(factory: str, host: str, port: int) -> None:
    """Serve an app factory ("module:function") with uvicorn; logging stays ours."""
    uvicorn.run(factory, factory=True, host=host, port=port, log_config=None, access_log=False)
