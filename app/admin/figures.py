"""The seed's monitoring figures and alert rules, computed from processed_events."""

from __future__ import annotations

from typing import Literal

import msgspec

from app.approvals.domain import REFUSED_SKIPS
from outbox.writer import Connection

FAILED_RATE_THRESHOLD = 5.0  # percent, over the last hour


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    window_hours: int
    total: int
    success: int
    failed: int
    skipped: int
    success_rate_percent: float | None
    failed_last_hour: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None


class Alert(msgspec.Struct, frozen=True, kw_only=True):
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
    latency = await connection.fetchrow(
        """
        SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
               (ORDER BY extract(epoch FROM processed_at - occurred_at)) AS p
        FROM market_approval_events WHERE processed_at >= now() - interval '24 hours'
        """
    )
    assert counts is not None and latency is not None
    p50, p95, p99 = latency["p"] or (None, None, None)
    total = counts["total"]
    return Stats(
        window_hours=24,
        total=total,
        success=counts["success"],
        failed=counts["failed"],
        skipped=counts["skipped"],
        success_rate_percent=round(100 * counts["success"] / total, 2) if total else None,
        failed_last_hour=counts["failed_hour"],
        latency_p50_s=p50,
        latency_p95_s=p95,
        latency_p99_s=p99,
    )


async def alerts(connection: Connection, *, polling_enabled: bool) -> list[Alert]:
    """The seed's three rules, each with whether it fires now (as deploy/prometheus/
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
    rate = 100 * row["refused_hour"] / row["hour"] if row["hour"] else 0.0
    return [
        Alert(
            name="FailedEventRateHigh",
            severity="critical",
            firing=rate > FAILED_RATE_THRESHOLD,
            summary=f"{rate:.1f}% of the last hour's {row['hour']} events failed or were "
            f"refused (threshold {FAILED_RATE_THRESHOLD:g}%)",
        ),
        Alert(
            name="NoEventsReceived",
            severity="warning",
            # Traffic is expected when the flow saw events in the last 24 hours.
            firing=row["recent"] == 0 and row["day"] > 0,
            summary=f"{row['recent']} events in the last 30 minutes, {row['day']} in 24 hours",
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
