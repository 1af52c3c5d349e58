"""Log lines for people in development, JSON lines for machines in production; inside a
recording span (app/tracing), each carries its trace and span ids."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app import tracing
from app.settings import Settings

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Fields passed with `extra=` (event_id, market_id, counts...) ride along.
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES})
        if ids := tracing.log_ids():
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One line for a person: inside a recording span, the first 8 hex digits of its
    trace and span ids beside the process name (enough to grep, and to find the trace)."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{process}%(trace)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = tracing.log_ids()
        record.trace = f" {ids[0][:8]}/{ids[1][:8]}" if ids else ""
        return super().format(record)


def configure_logging(settings: Settings, process: str = "api") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.is_production:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # One line per HTTP request to Entity Permissions Core is noise; failures are logged
    # by the poller itself, once per change of state.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


class DependencyLog:
    """One line when a dependency goes down, with the error (which may name hosts, ports
    and users, so it belongs in the log and never in an answer), and one when it answers
    again: once per change of state, however often it is checked."""

    def __init__(
        self, logger: logging.Logger, checker: str, addresses: Mapping[str, str] | None = None
    ) -> None:
        self._logger = logger
        self._checker = checker
        self._addresses = addresses or {}
        self._down: set[str] = set()

    def down(self, dependency: str, error: BaseException) -> None:
        if dependency not in self._down:
            self._down.add(dependency)
            self._logger.warning(
                "%s: %s down (%s): %s",
                self._checker,
                dependency,
                self._addresses.get(dependency, "address unknown"),
                describe(error),
            )

    def up(self, dependency: str) -> None:
        if dependency in self._down:
            self._down.discard(dependency)
            self._logger.info("%s: %s answers again", self._checker, dependency)


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def address_of(url: str) -> str:
    """Where a database URL points, for a log line: host, port and path, no credentials."""
    parts = urlsplit(url)
    # netloc without the credentials; the port as written (it may be malformed).
    location = parts.netloc.rpartition("@")[2]
    return f"{location}{parts.path}" or parts.scheme
