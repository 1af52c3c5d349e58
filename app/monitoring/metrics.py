"""GET /metrics: Litestar's HTTP metrics and the flow's figures, in Prometheus format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import redis.asyncio as redis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.monitoring.flow import LATENCY_BUCKETS, Snapshot, read_snapshot

PREFIX = "market"
HTTP_METRICS = PrometheusConfig(app_name="market-backend", prefix=PREFIX, group_path=True)


class FlowCollector(Collector):
    """Yields the figures of the last snapshot; the /metrics handler refreshes it first."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.polling_enabled = False

    def collect(self) -> Iterator[Any]:
        s = self.snapshot
        up = GaugeMetricFamily(
            f"{PREFIX}_dependency_up", "Answered this scrape", labels=["dependency"]
        )
        up.add_metric(["postgres"], int(s.postgres_up))
        up.add_metric(["redis"], int(s.redis_up))
        yield up
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
        for stream, entries in s.stream_lengths.items():
            length.add_metric([stream], entries)
        for group in s.groups:
            lag.add_metric([group.stream, group.group], group.lag)
            pending.add_metric([group.stream, group.group], group.pending)
            for consumer, seconds in group.consumers_idle_s.items():
                idle.add_metric([group.stream, group.group, consumer], seconds)
        yield from (length, lag, pending, idle)
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
            for window in ("30m", "1h", "24h"):
                recent.add_metric([status, window], s.recent.get((status, window), 0))
        yield recent
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
        yield GaugeMetricFamily(
            f"{PREFIX}_polling_enabled",
            "PERMISSIONS_SERVICE_BASE_URL is set",
            value=int(self.polling_enabled),
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


FLOW = FlowCollector()
REGISTRY.register(FLOW)


class MetricsController(Controller):
    path = "/metrics"
    tags = ["monitoring"]
    include_in_schema = False

    @get(summary="Prometheus metrics")
    async def metrics(
        self, db_pool: NamedDependency[asyncpg.Pool], redis_client: NamedDependency[redis.Redis]
    ) -> Response[bytes]:
        FLOW.snapshot = await read_snapshot(db_pool, redis_client)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
