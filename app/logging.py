"""Log lines for people in development, JSON lines for machines in production."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

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
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(settings: Settings, process: str = "api") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.is_production:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{process}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # One line per HTTP request to Entity Permissions Core is noise; failures are logged
    # by the poller itself, once per change of state.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
