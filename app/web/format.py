"""How the screens write times, durations and documents (Jinja filters)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

_pretty = msgspec.json.Encoder(order="sorted")


def duration(seconds: float | None) -> str:
    """A duration a person reads at a glance: 85 ms, 4.2 s, 3 min 12 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{whole} s"  # pragma: no cover - every positive duration matched above


def timestamp(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def since(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, for a time shown beside it."""
    if moment is None:
        return "—"
    return duration(((now or datetime.now(UTC)) - moment).total_seconds()) + " ago"


def document(value: Any) -> str:
    """A JSON document, indented and keys sorted, as text for a <pre> (escaped by Jinja)."""
    try:
        return msgspec.json.format(_pretty.encode(value), indent=2).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


FILTERS: Final[dict[str, Callable[..., str]]] = {
    "duration": duration,
    "timestamp": timestamp,
    "since": since,
    "document": document,
    "number": number,
}
