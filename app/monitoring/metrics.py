"""GET /metrics: Litestar's HTTP metrics and the flow's figures, in Prometheus format."""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Iterator
from typing import Any

from litestar import Controller, Response, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.registry import Collector

from app.approvals.domain import REFUSALS
from app.monitoring.flow import LATENCY_BUCKETS, WINDOWS, FlowMonitor, Snapshot
from app.process import METRICS_DIRECTORY_VARIABLE

PREFIX = "market"
HTTP_METRICS = PrometheusConfig(app_name="market-backend", prefix=PREFIX, group_path=True)


class FlowCollector(Collector):
    """Yields the figures of the snapshot the /metrics handler last obtained."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.polling_enabled = False
        self.stream_maxlen: dict[str, int] = {}  # from the settings, set by create_app

    def collect(self) -> Iterator[Any]:
        yield from self._dependencies(self.snapshot)
        yield from self._postgres(self.snapshot)
        yield from self._redis(self.snapshot)
        yield GaugeMetricFamily(
            f"{PREFIX}_polling_enabled",
            "PERMISSIONS_SERVICE_BASE_URL is set",
            value=int(self.polling_enabled),
        )

    def _dependencies(self, snapshot: Snapshot) -> Iterator[Any]:
        up = GaugeMetricFamily(
            f"{PREFIX}_dependency_up",
            "Whether the latest snapshot could read it (when not, its figures are older)",
            labels=["dependency"],
        )
        read_at = GaugeMetricFamily(
            f"{PREFIX}_snapshot_timestamp_seconds",
            "When the figures from this dependency were read",
            labels=["dependency"],
        )
        for dependency, answered in snapshot.up.items():
            up.add_metric([dependency], int(answered))
        for dependency, timestamp in snapshot.read_at.items():
            read_at.add_metric([dependency], timestamp)
        yield from (up, read_at)

    def _postgres(self, snapshot: Snapshot) -> Iterator[Any]:
        s = snapshot.postgres
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_backlog",
            "Outbox rows not yet on their stream",
            value=s.outbox_backlog,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox row not yet on its stream (0 when none)",
            value=s.outbox_oldest_age_s,
        )
        processed = GaugeMetricFamily(
            f"{PREFIX}_processed_events",
            "processed_events rows (within retention)",
            labels=["status", "event_type", "source"],
        )
        for (status, event_type, source), count in s.processed.items():
            processed.add_metric([status, event_type, source], count)
        yield processed
        recent = GaugeMetricFamily(
            f"{PREFIX}_processed_events_recent",
            "Inbound events received within a window, by outcome",
            labels=["status", "window"],
        )
        for status in ("success", "failed", "skipped"):
            for window in WINDOWS:
                recent.add_metric([status, window], s.recent.get((status, window), 0))
        yield recent
        refused = GaugeMetricFamily(
            f"{PREFIX}_decisions_refused_recent",
            "Inbound events refused within a window (recorded failed, or a decision for a "
            "market already decided), by reason",
            labels=["reason", "window"],
        )
        for reason in sorted(REFUSALS):
            for window in WINDOWS:
                refused.add_metric([reason, window], s.not_applied.get((reason, window), 0))
        yield refused
        buckets = [
            (str(bound), count)
            for bound, count in zip(LATENCY_BUCKETS, s.latency_buckets, strict=False)
        ]
        yield GaugeHistogramMetricFamily(
            f"{PREFIX}_decision_latency_seconds",
            "Decision occurred_at to processed_at, decisions of the last 24 hours",
            buckets=[*buckets, ("+Inf", s.latency_count)],
            gsum_value=s.latency_sum_s,
        )
        if s.poller_last_success is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_poller_last_success_timestamp_seconds",
                "When the poller last read Entity Permissions Core's feed",
                value=s.poller_last_success,
            )
        for kind, leaders in (("relay", s.relay), ("poller", s.poller)):
            yield GaugeMetricFamily(
                f"{PREFIX}_{kind}_processes",
                f"Running {kind} processes (leader and standbys)",
                value=leaders.processes,
            )
            leader = GaugeMetricFamily(
                f"{PREFIX}_{kind}_leader",
                f"The {kind} holding the lock (host:pid)",
                labels=["instance"],
            )
            if leaders.leader:
                leader.add_metric([leaders.leader], 1)
            yield leader

    def _redis(self, snapshot: Snapshot) -> Iterator[Any]:
        s = snapshot.redis
        length = GaugeMetricFamily(
            f"{PREFIX}_stream_length", "Entries in a stream", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_stream_group_lag",
            "Entries a group has not read yet",
            labels=["stream", "group"],
        )
        pending = GaugeMetricFamily(
            f"{PREFIX}_stream_group_pending",
            "Entries delivered to a group and not acknowledged",
            labels=["stream", "group"],
        )
        idle = GaugeMetricFamily(
            f"{PREFIX}_stream_consumer_idle_seconds",
            "Since a consumer last read (its liveness)",
            labels=["stream", "group", "consumer"],
        )
        maxlen = GaugeMetricFamily(
            f"{PREFIX}_stream_maxlen",
            "The length a stream is trimmed to (STREAM_MAXLEN; a stream our own groups read "
            "is trimmed only below what they acknowledged, and may hold more)",
            labels=["stream"],
        )
        lost = CounterMetricFamily(
            f"{PREFIX}_stream_entries_lost",
            "Entries trimmed from a stream before a group read them (since Redis started)",
            labels=["stream", "group"],
        )
        for stream, entries in s.stream_lengths.items():
            length.add_metric([stream], entries)
        for stream, limit in self.stream_maxlen.items():
            maxlen.add_metric([stream], limit)
        for group in s.groups:
            lag.add_metric([group.stream, group.group], group.lag)
            pending.add_metric([group.stream, group.group], group.pending)
            for consumer, seconds in group.consumers_idle_s.items():
                idle.add_metric([group.stream, group.group, consumer], seconds)
        for (stream, group_name), count in s.lost.items():
            lost.add_metric([stream, group_name], count)
        yield from (length, maxlen, lag, pending, idle, lost)


FLOW = FlowCollector()
REGISTRY.register(FLOW)


@functools.cache
def scraped_registry() -> CollectorRegistry:
    """What a scrape reads. With several API workers (PROMETHEUS_MULTIPROC_DIR set by
    app.process), the HTTP counters and histograms of every worker, summed from their
    shared files, whichever worker answers; the flow's figures are read from PostgreSQL
    and Redis, the same from any worker. One process: its own registry, with the
    process and runtime collectors."""
    if not os.environ.get(METRICS_DIRECTORY_VARIABLE):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(FLOW)
    return registry


def worker_stopped() -> None:
    """A worker stopping takes its in-progress gauges out of the shared files (its
    counters stay: what it served was served)."""
    if os.environ.get(METRICS_DIRECTORY_VARIABLE):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def require_metrics_token(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """With METRICS_TOKEN set, scrapes must present it (constant-time comparison); checked
    before any figure is read, so refused scrapes cost no query."""
    expected: str | None = connection.app.state.metrics_token
    if not expected:
        return
    scheme, _space, offered = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not offered:
        raise NotAuthorizedException("Authorization: Bearer <METRICS_TOKEN> required")
    if not hmac.compare_digest(offered.encode(), expected.encode()):
        raise PermissionDeniedException("wrong metrics token")


class MetricsController(Controller):
    path = "/metrics"
    tags = ["monitoring"]
    include_in_schema = False
    guards = [require_metrics_token]

    @get(summary="Prometheus metrics")
    async def metrics(self, flow_monitor: NamedDependency[FlowMonitor]) -> Response[bytes]:
        FLOW.snapshot = await flow_monitor.snapshot()
        return Response(generate_latest(scraped_registry()), media_type=CONTENT_TYPE_LATEST)
