"""The overview's figures: the metrics snapshot (app/monitoring/flow.py) and the admin
figures (app/admin/figures.py), with the alert rules of deploy/prometheus/alerts.yml
evaluated on them as Prometheus would evaluate them now.

Nothing here reads a table: the snapshot is read at most every METRICS_REFRESH_INTERVAL_S
for /metrics and the console together, and the overview never waits for a refresh that
is due, so a page costs no full count however large processed_events grows.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final, Literal

import msgspec

from app.admin.figures import AlertCounts, Latency, approval_alerts
from app.approvals.domain import REFUSED_SKIPS
from app.monitoring.flow import WINDOWS, GroupState, Snapshot
from outbox import ENTITY_PERMISSIONS_DEAD, ENTITY_PERMISSIONS_EVENTS
from outbox.streams import APPROVALS_GROUP

# A consumer reads at least every CONSUMER_BLOCK_MS (2 s) while it runs: idle longer
# than this, it is stopped or stuck.
CONSUMER_ALIVE_IDLE_S: Final = 30.0
LOSS_WINDOW_S: Final = 15 * 60  # StreamEntriesLost: increase(...[15m]) > 0

Severity = Literal["critical", "warning", "info"]


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    severity: Severity
    firing: bool
    summary: str
    link: str  # the list behind it
    # Prometheus waits this long, the condition holding, before it fires.
    holds_for: str = ""


class Consumer(msgspec.Struct, frozen=True):
    name: str
    idle_s: float
    alive: bool


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    snapshot: Snapshot
    rules: list[Rule]
    latency: Latency
    failed_last_hour: int
    dead_letters: int
    consumers: list[Consumer]
    groups: list[GroupState]
    maxlen: dict[str, int]
    lost_in_window: dict[tuple[str, str], int]
    snapshot_age_s: float | None


class LossHistory:
    """The entries-lost counters as snapshots saw them, over the last 15 minutes: the
    console's own memory of what `increase(market_stream_entries_lost_total[15m])`
    reads from Prometheus's (a process that just started has seen less)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, dict[tuple[str, str], int]]] = deque()

    def increase(
        self, read_at: float, lost: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        if not self._samples or self._samples[-1][0] < read_at:
            self._samples.append((read_at, dict(lost)))
        while self._samples and self._samples[0][0] < read_at - LOSS_WINDOW_S:
            self._samples.popleft()
        oldest = self._samples[0][1]
        # A counter that went down was reset (Redis restarted): all of it is new.
        return {
            key: count - oldest.get(key, 0) if count >= oldest.get(key, 0) else count
            for key, count in lost.items()
            if count != oldest.get(key, 0)
        }


def alert_counts(snapshot: Snapshot) -> AlertCounts:
    """What the three alert rules read, from the snapshot's per-window counts."""
    recent, refused = snapshot.postgres.recent, snapshot.postgres.not_applied

    def received(window: str) -> int:
        return sum(count for (_, w), count in recent.items() if w == window)

    assert {"30m", "1h", "24h"} <= set(WINDOWS)
    return AlertCounts(
        hour=received("1h"),
        refused_hour=recent.get(("failed", "1h"), 0)
        + sum(refused.get((reason, "1h"), 0) for reason in REFUSED_SKIPS),
        recent=received("30m"),
        day=received("24h"),
    )


def stream_rules(
    snapshot: Snapshot, maxlen: dict[str, int], lost_in_window: dict[tuple[str, str], int]
) -> list[Rule]:
    """StreamGroupLagHigh, StreamNearTrimLimit and StreamEntriesLost, now."""
    behind = [
        g
        for g in snapshot.redis.groups
        if g.stream in maxlen and g.lag + g.pending > 0.5 * maxlen[g.stream]
    ]
    near = [
        g for g in snapshot.redis.groups if g.stream in maxlen and g.lag > 0.9 * maxlen[g.stream]
    ]

    def named(groups: list[GroupState]) -> str:
        return ", ".join(f"{g.group} on {g.stream}" for g in groups)

    lost = {key: n for key, n in lost_in_window.items() if n > 0}
    return [
        Rule(
            name="StreamGroupLagHigh",
            severity="warning",
            firing=bool(behind),
            summary=f"more than half the stream's length behind: {named(behind)}"
            if behind
            else "every group is within half its stream's length",
            link="/console/streams",
            holds_for="5m",
        ),
        Rule(
            name="StreamNearTrimLimit",
            severity="critical",
            firing=bool(near),
            summary=f"unread entries over 90% of the length: {named(near)}"
            if near
            else "no group near the trim limit",
            link="/console/streams",
            holds_for="1m",
        ),
        Rule(
            name="StreamEntriesLost",
            severity="critical",
            firing=bool(lost),
            summary="; ".join(
                f"{n} entries of {stream} trimmed before {group} read them"
                for (stream, group), n in sorted(lost.items())
            )
            or "no entry lost unread in the last 15 minutes",
            link="/console/streams",
        ),
    ]


def build(
    snapshot: Snapshot,
    latency: Latency,
    *,
    polling_enabled: bool,
    maxlen: dict[str, int],
    losses: LossHistory,
) -> Overview:
    read_at = snapshot.read_at.get("redis") or snapshot.read_at.get("postgres")
    lost_in_window = losses.increase(read_at or 0.0, snapshot.redis.lost) if read_at else {}
    links = {
        "FailedEventRateHigh": "/console/events?status=failed",
        "NoEventsReceived": "/console/events",
        "PollingEnabled": "/console/",
    }
    holds = {"FailedEventRateHigh": "5m", "NoEventsReceived": "5m"}
    approval = [
        Rule(
            name=alert.name,
            severity=alert.severity,
            firing=alert.firing,
            summary=alert.summary,
            link=links[alert.name],
            holds_for=holds.get(alert.name, ""),
        )
        for alert in approval_alerts(alert_counts(snapshot), polling_enabled=polling_enabled)
    ]
    approvals = next(
        (
            g
            for g in snapshot.redis.groups
            if g.stream == ENTITY_PERMISSIONS_EVENTS and g.group == APPROVALS_GROUP
        ),
        None,
    )
    consumers = [
        Consumer(name, idle, idle < CONSUMER_ALIVE_IDLE_S)
        for name, idle in sorted((approvals.consumers_idle_s if approvals else {}).items())
    ]
    return Overview(
        snapshot=snapshot,
        rules=[*approval, *stream_rules(snapshot, maxlen, lost_in_window)],
        latency=latency,
        failed_last_hour=snapshot.postgres.recent.get(("failed", "1h"), 0),
        dead_letters=snapshot.redis.stream_lengths.get(ENTITY_PERMISSIONS_DEAD, 0),
        consumers=consumers,
        groups=snapshot.redis.groups,
        maxlen=maxlen,
        lost_in_window=lost_in_window,
        snapshot_age_s=time.time() - read_at if read_at else None,
    )
