"""The simulator's background work: read approval requests, push decisions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import redis.asyncio as redis
from opentelemetry.trace import SpanContext, SpanKind

from app import tracing
from app.backoff import Backoff
from app.markets.events import Announced
from app.redis_client import read_group
from app.webhooks import standard
from outbox import MARKETS_EVENTS
from simulator.state import Registry

log = logging.getLogger("simulator")

GROUP = "entity-permissions-core"


async def read_approval_requests(
    client: redis.Redis, registry: Registry, consumer: str, stop: asyncio.Event
) -> None:
    """market.approval_requested from markets:events, in the simulator's own group."""
    backoff = Backoff("Redis", log)
    start = "0"  # first what this consumer was given and never acknowledged
    while not stop.is_set():
        try:
            await _ensure_group(client)
            entries = await read_group(
                client, MARKETS_EVENTS, GROUP, consumer, start, count=100, block_ms=1000
            )
            backoff.succeeded()
        except redis.RedisError as error:
            await backoff.wait_after(error, stop)
            continue
        if start == "0" and not entries:
            start = ">"
            continue
        for entry_id, fields in entries:
            if fields and fields.get("event_type") == Announced.APPROVAL_REQUESTED:
                with _received(entry_id, fields) as trace_context:
                    registry.request_approval(json.loads(fields["payload"]), trace_context)
                    log.info("approval requested for market %s", fields["aggregate_id"])
        if entries:
            try:
                await client.xack(MARKETS_EVENTS, GROUP, *[entry_id for entry_id, _ in entries])
            except redis.RedisError as error:
                log.warning("could not acknowledge: %r", error)


@contextmanager
def _received(entry_id: str, fields: dict[str, str]) -> Iterator[SpanContext | None]:
    """The span of an approval request read (when tracing is on), continuing the trace
    the entry carries; its context, for the decision's push to continue in turn."""
    if not tracing.enabled():
        yield None
        return
    attributes = {
        "messaging.system": "redis",
        "messaging.destination.name": MARKETS_EVENTS,
        "messaging.consumer.group.name": GROUP,
        "messaging.operation.type": "process",
        "messaging.message.id": entry_id,
    }
    parent = tracing.span_context_of_json(fields.get("context"))
    with tracing.child_span(
        f"process {MARKETS_EVENTS}", parent, SpanKind.CONSUMER, attributes=attributes
    ):
        yield tracing.current_span_context()


async def _ensure_group(client: redis.Redis) -> None:
    try:
        await client.xgroup_create(MARKETS_EVENTS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


class WebhookPusher:
    """Send each decision to the webhook, signed, retrying until it is taken."""

    def __init__(self, url: str, secret: str | None, stop: asyncio.Event) -> None:
        self._url = url
        self._secret = secret
        self._stop = stop
        self._client = httpx.AsyncClient(timeout=5)
        self._tasks: set[asyncio.Task[None]] = set()

    def push(self, event: dict[str, object], trace_context: SpanContext | None = None) -> None:
        """Deliver `event` in the background; traced (when on) as part of `trace_context`,
        the trace of the approval request it decides, linked to the current span (the
        decision's request)."""
        task = asyncio.create_task(self._traced_delivery(event, trace_context))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _traced_delivery(
        self, event: dict[str, object], trace_context: SpanContext | None
    ) -> None:
        if not tracing.enabled():
            await self._deliver(event)
            return
        decided_in = tracing.current_span_context()
        with tracing.child_span(
            "push decision",
            trace_context,
            links=[decided_in] if decided_in else [],
            attributes={"market.event_id": str(event["event_id"])},
        ):
            # The HTTP client's span (httpx instrumentation) sends the traceparent header.
            await self._deliver(event)

    async def _deliver(self, event: dict[str, object]) -> None:
        body = json.dumps(event).encode()
        backoff = Backoff(f"webhook {self._url}", log, cap_s=30)
        while not self._stop.is_set():
            headers = {"content-type": "application/json"}
            if self._secret:
                stamp = int(time.time())
                message_id = str(event["event_id"])
                headers |= {
                    "webhook-id": message_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": standard.sign(self._secret, message_id, stamp, body),
                }
            try:
                response = await self._client.post(self._url, content=body, headers=headers)
            except httpx.HTTPError as error:
                await backoff.wait_after(error, self._stop)
                continue
            if response.status_code < 500:
                backoff.succeeded()
                log.info("pushed %s: %s", event["event_id"], response.status_code)
                return
            await backoff.wait_after(RuntimeError(f"HTTP {response.status_code}"), self._stop)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._client.aclose()
