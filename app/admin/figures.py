"""The monitoring figures and alert rules (docs/async-approval-flow.md), computed from
processed_events."""

from __future__ import annotations

from typing import Literal

import msgspec

from app.approvals.domain import REFUSED_SKIPS
from app.db import Connection
from app.wire import WireStruct

FAILED_RATE_THRESHOLD = 5.0  # percent, over the last hour


class Stats(WireStruct, frozen=True, kw_only=True):
    window_hours: int
    total: int
    success: int
    failed: int
    skipped: int
    success_rate_percent: float | None
    failed_last_hour: int
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None
    latency_p99_seconds: float | None


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Decisions applied within a window, and how long each took: from the decision in
    Entity Permissions Core (its occurred_at) to its application here (processing), and
    from the market's registration, when its approval was requested (approval)."""

    hours: int
    decisions: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    approval_p50_s: float | None
    approval_p99_s: float | None


class AlertCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What the three alert rules read: inbound events received in the last hour, those of
    them refused, those of the last 30 minutes and of the last 24 hours."""

    hour: int
    refused_hour: int
    recent: int
    day: int


class Alert(WireStruct, frozen=True, kw_only=True):
    name: str
    severity: Literal["critical", "warning", "info"]
    firing: bool
    summary: str


async def stats(connection: Connection) -> Stats:
    counts = await connection.fetchrow(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE processing_status = 'success') AS success,
               count(*) FILTER (WHERE processing_status = 'failed') AS failed,
               count(*) FILTER (WHERE processing_status = 'skipped') AS skipped,
               count(*) FILTER (WHERE processing_status = 'failed'
                                  AND received_at >= now() - interval '1 hour') AS failed_hour
        FROM processed_events WHERE received_at >= now() - interval '24 hours'
        """
    )
    latency = await decision_latency(connection, hours=24)
    assert counts is not None
    total = counts["total"]
    return Stats(
        window_hours=24,
        total=total,
        success=counts["success"],
        failed=counts["failed"],
        skipped=counts["skipped"],
        success_rate_percent=round(100 * counts["success"] / total, 2) if total else None,
        failed_last_hour=counts["failed_hour"],
        latency_p50_seconds=latency.p50_s,
        latency_p95_seconds=latency.p95_s,
        latency_p99_seconds=latency.p99_s,
    )


async def decision_latency(connection: Connection, *, hours: int) -> Latency:
    """By market_approval_events' processed_at index: the window's rows only."""
    row = await connection.fetchrow(
        """
        SELECT count(*) AS n,
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                   (ORDER BY extract(epoch FROM e.processed_at - e.occurred_at)) AS p,
               percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                   (ORDER BY extract(epoch FROM e.processed_at - m.created_at)) AS approval
        FROM market_approval_events e LEFT JOIN markets m ON m.id = e.market_id
        WHERE e.processed_at >= now() - make_interval(hours => $1)
        """,
        hours,
    )
    assert row is not None
    p50, p95, p99 = row["p"] or (None, None, None)
    approval_p50, approval_p99 = row["approval"] or (None, None)
    return Latency(
        hours=hours,
        decisions=row["n"],
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        approval_p50_s=approval_p50,
        approval_p99_s=approval_p99,
    )


async def alerts(connection: Connection, *, polling_enabled: bool) -> list[Alert]:
    """The three alert rules, each with whether it fires now (as deploy/prometheus/
    alerts.yml evaluates them: a refusal counts as a failure)."""
    row = await connection.fetchrow(
        """
        SELECT count(*) FILTER (WHERE received_at >= now() - interval '1 hour') AS hour,
               count(*) FILTER (WHERE received_at >= now() - interval '1 hour'
                                  AND (processing_status = 'failed'
                                       OR processing_reason = ANY($1::text[]))) AS refused_hour,
               count(*) FILTER (WHERE received_at >= now() - interval '30 minutes') AS recent,
               count(*) AS day
        FROM processed_events WHERE received_at >= now() - interval '24 hours'
        """,
        sorted(REFUSED_SKIPS),
    )
    assert row is not None
    return approval_alerts(AlertCounts(**dict(row)), polling_enabled=polling_enabled)


def approval_alerts(counts: AlertCounts, *, polling_enabled: bool) -> list[Alert]:
    """The three alert rules on `counts`, however they were read (here by SQL, by the
    console from the metrics snapshot)."""
    rate = 100 * counts.refused_hour / counts.hour if counts.hour else 0.0
    return [
        Alert(
            name="FailedEventRateHigh",
            severity="critical",
            firing=rate > FAILED_RATE_THRESHOLD,
            summary=f"{rate:.1f}% of the last hour's {counts.hour} events failed or were "
            f"refused (threshold {FAILED_RATE_THRESHOLD:g}%)",
        ),
        Alert(
            name="NoEventsReceived",
            severity="warning",
            # Traffic is expected when the flow saw events in the last 24 hours.
            firing=counts.recent == 0 and counts.day > 0,
            summary=f"{counts.recent} events in the last 30 minutes, {counts.day} in 24 hours",
        ),
        Alert(
            name="PollingEnabled",
            severity="info",
            firing=polling_enabled,
            summary="polling Entity Permissions Core (webhooks not configured alone?)"
            if polling_enabled
            else "polling off",
        ),
    ]
