"""Tracing (app/tracing): one registration and one decision followed across the real
processes, through the outbox and the streams, as an OTLP collector receives them; and
off unless configured.

The acceptance test runs the API, the relay, a consumer and the Entity Permissions
simulator with OTEL_TRACES_EXPORTER=otlp pointed at a receiver of its own, and waits for
the exact spans each trace must hold. Requests carry a traceparent of the test's, so
that it knows each trace's id: any break in the propagation (the outbox not storing the
context, the relay or the consumer not continuing it, the simulator not pushing it)
leaves those spans in other traces, and the wait fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis as sync_redis
import redis.asyncio as redis
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import tracing
from app.approvals.consumer import GROUP
from app.inbound.events import read_event
from app.logging import JsonFormatter, TextFormatter
from app.webhooks import standard
from outbox import ENTITY_PERMISSIONS_EVENTS, MARKETS_EVENTS
from tests.conftest import DATABASE_URL, REDIS_URL, service_env
from tests.support.markets import REGISTER, seed_body
from tests.support.otlp import Receiver, Span, otlp_receiver, render_trace
from tests.support.processes import start_api
from tests.support.stack import WEBHOOK_SECRET, Stack
from tests.support.webhooks import WEBHOOK, seed_event

PROCESSES = ("epc", "api", "relay", "consumer-0")


def traceparent() -> tuple[str, str]:
    """A sampled W3C traceparent of the test's own, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
async def traced_stack(
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    receiver: tuple[Receiver, str],
    log_dir: Path,
) -> AsyncIterator[Stack]:
    _, endpoint = receiver
    stack = Stack(
        DATABASE_URL,
        REDIS_URL,
        log_dir / "tracing",
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LOG_LEVEL": "DEBUG",
        },
    )
    stack.log_dir.mkdir(exist_ok=True)
    try:
        for name in PROCESSES:
            stack.start(name)
        yield stack
    finally:
        stack.stop_all()


def one(spans: list[Span], **wanted: Any) -> Span | None:
    """The one span matching every attribute given (service, name, kind, trace_id,
    parent_span_id...); None until it arrives, and an error if it arrived twice."""
    found = [s for s in spans if all(_field(s, k) == v for k, v in wanted.items())]
    assert len(found) <= 1, f"{len(found)} spans match {wanted}"
    return found[0] if found else None


def _field(span: Span, name: str) -> Any:
    """A span's field, or `attributes_id`: its messaging.message.id."""
    if name == "attributes_id":
        return span.attributes.get("messaging.message.id")
    return getattr(span, name)


def children(spans: list[Span], parent: Span, **wanted: Any) -> list[Span]:
    return [
        s
        for s in spans
        if s.parent_span_id == parent.span_id
        and s.trace_id == parent.trace_id
        and all(getattr(s, k) == v for k, v in wanted.items())
    ]


@dataclass(frozen=True)
class Step:
    """A span to find: its attributes, and the step whose span is its parent."""

    name: str
    under: str | None
    match: dict[str, Any]


def step(label: str, under: str | None = None, **match: Any) -> Step:
    return Step(label, under, match)


def chain(*steps: Step) -> Callable[[list[Span]], dict[str, Span] | None]:
    """A predicate for Receiver.wait_for: the span of each step, found in order (a
    step's parent found before it); None until all are there."""

    def found(spans: list[Span]) -> dict[str, Span] | None:
        by_name: dict[str, Span] = {}
        for wanted in steps:
            match = dict(wanted.match)
            if wanted.under is not None:
                match["parent_span_id"] = by_name[wanted.under].span_id
            span = one(spans, **match)
            if span is None:
                return None
            by_name[wanted.name] = span
        return by_name

    return found


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def market_status(api: str, market_id: str) -> str:
    response = httpx.get(f"{api}/api/v1/markets/{market_id}", timeout=10)
    return str(response.json()["market"]["status"])


def is_active(api: str, market_id: str) -> bool:
    return market_status(api, market_id) == "active"


def register(api: str, header: str) -> str:
    response = httpx.post(
        f"{api}{REGISTER}", json=seed_body(), headers={"traceparent": header}, timeout=10
    )
    assert response.status_code == 201, response.text
    return str(response.json()["market"]["id"])


def assert_linked(span: Span, to: Span) -> None:
    assert (to.trace_id, to.span_id) in {(link.trace_id, link.span_id) for link in span.links}


def assert_db_children(spans: list[Span], parent: Span) -> None:
    queries = children(spans, parent, kind="CLIENT")
    assert queries, f"no database spans under {parent.name}"
    assert any(q.attributes.get("db.system") == "postgresql" for q in queries), queries


def test_a_registration_is_one_trace_from_request_to_activation(
    traced_stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    """register → relay → simulator → its webhook push → intake → relay → consumer →
    market.activated → relay, all in the trace of the registering request."""
    spans_of, _ = receiver
    api, epc = traced_stack.api_url, traced_stack.epc_url
    header, trace_id = traceparent()
    market_id = register(api, header)
    wait_until(
        lambda: any(
            r["market_id"] == market_id
            for r in httpx.get(f"{epc}/api/v1/requests", timeout=10).json()
        ),
        "the simulator to receive the approval request",
    )
    decision_header, decision_trace = traceparent()
    approved = httpx.post(
        f"{epc}/api/v1/requests/{market_id}/approve",
        json={"actor_id": "tracing-test"},
        headers={"traceparent": decision_header},
        timeout=10,
    )
    assert approved.status_code == 200, approved.text
    wait_until(lambda: market_status(api, market_id) == "active", "the market to be active")

    found = spans_of.wait_for(
        chain(
            step(
                "register_request",
                service="market-api",
                kind="SERVER",
                trace_id=trace_id,
                parent_span_id=header.split("-")[2],
            ),
            step("registered_sent", "register_request", name=f"send {MARKETS_EVENTS}"),
            step("request_received", "register_request", service="market-epc-simulator"),
            step("decision_pushed", "request_received", name="push decision"),
            step("push_request", "decision_pushed", kind="CLIENT"),
            step("webhook_request", "push_request", service="market-api", kind="SERVER"),
            step("decision_sent", "webhook_request", name=f"send {ENTITY_PERMISSIONS_EVENTS}"),
            step("decision_applied", "webhook_request", service="market-consumer"),
            step("activation_sent", "decision_applied", name=f"send {MARKETS_EVENTS}"),
            step(
                "approve_request",
                service="market-epc-simulator",
                kind="SERVER",
                trace_id=decision_trace,
            ),
        ),
        f"connected trace {trace_id}",
    )
    spans = spans_of.snapshot()
    print(render_trace(spans, trace_id))  # the README's rendering (pytest -s)
    assert {s.trace_id for s in found.values()} == {trace_id, decision_trace}
    assert found["register_request"].attributes["http.route"].endswith(REGISTER)
    assert_db_children(spans, found["register_request"])
    # The relay's batch: one span for the two events of the registration, linked to
    # the context they were written in.
    sent = found["registered_sent"]
    assert sent.kind == "PRODUCER"
    assert sent.attributes["messaging.system"] == "redis"
    assert sent.attributes["messaging.destination.name"] == MARKETS_EVENTS
    assert sent.attributes["messaging.batch.message_count"] == 2
    assert_linked(sent, found["register_request"])
    assert found["request_received"].attributes["messaging.message.id"]
    # The push continues the registration's trace, linked to the approver's request.
    assert_linked(found["decision_pushed"], found["approve_request"])
    applied = found["decision_applied"]
    assert applied.attributes["messaging.system"] == "redis"
    assert applied.attributes["messaging.destination.name"] == ENTITY_PERMISSIONS_EVENTS
    assert applied.attributes["messaging.message.id"]
    assert_linked(applied, found["webhook_request"])
    assert_db_children(spans, applied)
    assert found["activation_sent"].attributes["messaging.batch.message_count"] == 2
    assert_linked(found["activation_sent"], applied)


def test_a_decision_by_webhook_is_one_trace_and_a_forged_context_is_not_believed(
    traced_stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    """A webhook's trace: intake → relay → consumer → relay. A stream entry whose context
    holds no valid trace context (wrong types, huge, malformed) is applied all the same,
    in a span of its own, linked to nothing."""
    spans_of, _ = receiver
    api = traced_stack.api_url
    registration_header, registration_trace = traceparent()
    market_id = register(api, registration_header)
    # The registration's events published first: in one relay batch with the decision's
    # row, the batch's span would be a root of its own, linked to both requests.
    spans_of.wait_for(
        partial(one, service="market-relay", kind="PRODUCER", trace_id=registration_trace),
        "the relay's span of the registration",
    )
    header, trace_id = traceparent()
    body = json.dumps(seed_event(market_id)).encode()
    stamp = int(time.time())
    message_id = f"msg-{uuid.uuid4()}"
    response = httpx.post(
        f"{api}{WEBHOOK}",
        content=body,
        headers={
            "content-type": "application/json",
            "traceparent": header,
            "webhook-id": message_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": standard.sign(WEBHOOK_SECRET, message_id, stamp, body),
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text

    found = spans_of.wait_for(
        chain(
            step("webhook_request", service="market-api", kind="SERVER", trace_id=trace_id),
            step("decision_sent", "webhook_request", service="market-relay"),
            step("decision_applied", "webhook_request", service="market-consumer"),
            step("activation_sent", "decision_applied", service="market-relay"),
        ),
        f"the webhook's trace {trace_id}",
    )
    assert found["decision_sent"].attributes["messaging.destination.name"] == (
        ENTITY_PERMISSIONS_EVENTS
    )
    assert_linked(found["decision_applied"], found["webhook_request"])
    assert found["activation_sent"].attributes["messaging.destination.name"] == MARKETS_EVENTS
    # The consumer's line for the decision, written inside its span, names the trace.
    applied = found["decision_applied"]
    traced_stack.processes["consumer-0"].wait_for_log(
        f"[consumer {trace_id[:8]}/{applied.span_id[:8]}] approvals.consumer: event"
    )

    # Forged: written straight to the stream, past the outbox. One entry's trace fields
    # are of the wrong types and over the length read; the other's context is huge.
    client = sync_redis.Redis.from_url(REDIS_URL, decode_responses=True)
    forged_contexts = [
        {
            "traceparent": ["00", trace_id, "0123456789abcdef", "01"],
            "tracestate": f"k={'v' * 600}",
        },
        {"traceparent": {"00": trace_id}, "tracestate": 7},
        {"traceparent": header, "tracestate": "k=" + "v" * 1_000_000},
    ]
    for forged_context in forged_contexts:
        forged_market = register(api, traceparent()[0])
        entry = stream_entry(forged_market, forged_context)
        entry_id = client.xadd(ENTITY_PERMISSIONS_EVENTS, entry)
        wait_until(partial(is_active, api, forged_market), "the forged entry applied")
        forged = spans_of.wait_for(
            partial(one, service="market-consumer", attributes_id=entry_id),
            f"the consumer's span of entry {entry_id}",
        )
        assert forged.parent_span_id == ""
        assert forged.links == ()
        assert forged.trace_id != trace_id

    # A context nested past any decoder's depth, beside a valid traceparent: recorded
    # unreadable and acknowledged, in a span of its own; the consumer goes on.
    deep = stream_entry(market_id, {})
    deep["context"] = '{"traceparent":"' + header + '","x":' + "[" * 5_000 + "]" * 5_000 + "}"
    deep_id = client.xadd(ENTITY_PERMISSIONS_EVENTS, deep)
    unread = spans_of.wait_for(
        partial(one, service="market-consumer", attributes_id=deep_id),
        f"the consumer's span of entry {deep_id}",
    )
    assert unread.links == ()
    assert unread.trace_id != trace_id
    pending = client.xpending_range(ENTITY_PERMISSIONS_EVENTS, GROUP, "-", "+", 10)
    assert deep_id not in {entry["message_id"] for entry in pending}
    assert traced_stack.processes["consumer-0"].process.poll() is None
    client.close()


def stream_entry(market_id: str, context: dict[str, Any]) -> dict[str, str]:
    """A decision as an entry of entity-permissions:events, with the context given."""
    event = seed_event(market_id)
    return {
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "source": event["source"],
        "aggregate_type": "market",
        "aggregate_id": market_id,
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "payload": json.dumps(event["payload"]),
        "context": json.dumps({"actor_id": "forger", **context}),
        "outbox_id": "0",
    }


@pytest.mark.parametrize(
    "setting",
    [
        {"OTEL_TRACES_EXPORTER": "none"},  # an endpoint alone would turn it on
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
    ids=["exporter-none", "sdk-disabled"],
)
async def test_off_unless_configured_nothing_is_exported_nor_stored(
    setting: dict[str, str],
    db: asyncpg.Connection,
    receiver: tuple[Receiver, str],
    log_dir: Path,
) -> None:
    """Tracing off: a request carrying a traceparent leaves none in the outbox, and the
    process exports nothing, even at its graceful exit (where an SDK provider flushes)."""
    spans_of, endpoint = receiver
    process, api = start_api(
        service_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="50", **setting),
        log_dir,
        name="api-tracing-off",
    )
    try:
        market_id = await asyncio.to_thread(register, api, traceparent()[0])
    finally:
        # uvicorn ends a graceful shutdown by raising the signal again: -15.
        assert process.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    contexts = await db.fetch("SELECT context FROM outbox WHERE aggregate_id = $1", market_id)
    assert len(contexts) == 2
    for row in contexts:
        assert not set(json.loads(row["context"])) & set(tracing.TRACE_FIELDS)
    assert spans_of.requests == 0


async def test_the_outbox_stores_the_context_of_the_request_when_on(
    db: asyncpg.Connection, receiver: tuple[Receiver, str], log_dir: Path
) -> None:
    """The contrast of the test above: on, the outbox row carries the request's trace."""
    _, endpoint = receiver
    process, api = start_api(
        service_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint), log_dir, name="api-tracing-on"
    )
    header, trace_id = traceparent()
    try:
        market_id = await asyncio.to_thread(register, api, header)
    finally:
        process.stop(signal.SIGTERM)
    for row in await db.fetch("SELECT context FROM outbox WHERE aggregate_id = $1", market_id):
        stored = json.loads(row["context"])
        assert stored["traceparent"].split("-")[1] == trace_id
        assert stored["traceparent"] != header  # the API's own span, a child of the header's


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, []),
        ({"OTEL_TRACES_EXPORTER": " "}, []),
    ],
)
def test_which_environment_turns_tracing_on(environ: dict[str, str], names: list[str]) -> None:
    assert tracing.exporter_names(environ) == names


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),  # not installed
    ],
)
def test_an_exporter_that_cannot_load_ends_the_process_naming_the_variable(
    variable: str, value: str, log_dir: Path
) -> None:
    environ = {
        **os.environ,
        **service_env(OTEL_TRACES_EXPORTER="otlp"),
        variable: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "relay"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "context",
    [
        None,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # not an object
        [VALID],
        {"traceparent": 12345},
        {"traceparent": {"nested": VALID}},
        {"traceparent": [VALID]},
        {"traceparent": VALID + "x" * 1_000_000},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
        {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"},
        {"traceparent": "\x00" * 55},
        {"tracestate": "a=b"},
    ],
)
def test_a_context_without_valid_trace_context_gives_none(context: Any) -> None:
    """Stored and streamed context is untrusted: whatever it holds, nothing raises, and
    only a valid traceparent (a string of bounded length the propagator accepts) counts."""
    assert tracing.span_context_of(context) is None
    assert tracing.span_context_of_json(json.dumps(context)) is None


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe",
        b"[1,2]",
        b'"x"',
        b"null",
        b"{" * 100_000,
        # Nested past msgspec's depth: a RecursionError, not a DecodeError, whether
        # under a key the reader ignores or under the one it reads.
        b'{"x":' + b"[" * 2_000 + b"]" * 2_000 + b"}",
        b'{"traceparent":' + b"[" * 2_000 + b"]" * 2_000 + b"}",
    ],
    ids=lambda text: f"{text[:16]!r}",
)
def test_an_undecodable_context_gives_none(text: bytes) -> None:
    assert tracing.span_context_of_json(text) is None


def test_a_valid_context_is_read_with_its_tracestate_bounded() -> None:
    found = tracing.span_context_of({"traceparent": VALID, "tracestate": "k=v"})
    assert found is not None
    assert format(found.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert found.is_remote
    assert found.trace_state.get("k") == "v"
    # A tracestate past what W3C asks carriers to keep is dropped, the parent kept.
    long_state = ",".join(f"k{n}=v" for n in range(200))
    kept = tracing.span_context_of({"traceparent": VALID, "tracestate": long_state})
    assert kept is not None
    assert not kept.trace_state


def test_a_senders_trace_fields_are_dropped_at_intake() -> None:
    """Only the outbox writes an event's trace fields: a sender's are never stored."""
    forged = {"actor_id": "a", "traceparent": VALID, "tracestate": "x=y"}
    assert tracing.without_trace_context(forged) == {"actor_id": "a"}
    event = read_event(seed_event(context=forged))
    assert event.context == {"actor_id": "a"}


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    """Tracing on in this process for one test, with a provider of the test's own (never
    the global one, which the rest of the session must find unset)."""
    provider = TracerProvider()
    monkeypatch.setattr(tracing._Installed, "provider", provider)
    return provider


def _remote_parent(tracestate: str) -> otel_context.Context:
    return TraceContextTextMapPropagator().extract({"traceparent": VALID, "tracestate": tracestate})


def test_the_outbox_stores_a_bounded_tracestate_and_never_baggage(
    recording: TracerProvider,
) -> None:
    """What the outbox stores of the writer's context: traceparent, a tracestate only as
    long as readers read it (a caller's may be 8,192 characters: it would ride every
    stream entry), and no baggage whatever the HTTP propagators carry."""
    short_state = "k=v"
    long_state = ",".join(f"k{n}={'v' * 200}" for n in range(3))
    assert len(long_state) > tracing.MAX_FIELD_CHARS
    tracer = recording.get_tracer("test")
    for state, stored_state in ((short_state, short_state), (long_state, None)):
        parent = baggage.set_baggage("user", "x", _remote_parent(state))
        with tracer.start_as_current_span("register", context=parent) as span:
            stored = tracing.with_trace_context({"actor_id": "a", "tracestate": "forged"})
        trace_id = format(span.get_span_context().trace_id, "032x")
        span_id = format(span.get_span_context().span_id, "016x")
        assert stored["traceparent"] == f"00-{trace_id}-{span_id}-01"
        assert stored.get("tracestate") == stored_state
        assert set(stored) <= {"actor_id", "traceparent", "tracestate"}
        assert stored["actor_id"] == "a"


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("approvals.consumer", logging.INFO, __file__, 1, message, (), None)


def test_a_json_line_inside_a_span_carries_its_trace_and_span_ids(
    recording: TracerProvider,
) -> None:
    record = _record("applied")
    record.event_id, record.market_id = "epc-1", "m-1"
    with recording.get_tracer("test").start_as_current_span("apply") as span:
        inside = json.loads(JsonFormatter().format(record))
    outside = json.loads(JsonFormatter().format(_record("idle")))
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert (inside["event_id"], inside["market_id"]) == ("epc-1", "m-1")
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_a_text_line_inside_a_span_carries_a_short_form(recording: TracerProvider) -> None:
    with recording.get_tracer("test").start_as_current_span("apply") as span:
        inside = TextFormatter("consumer").format(_record("applied"))
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    assert f"[consumer {trace_id[:8]}/{span_id[:8]}] approvals.consumer: applied" in inside
    assert "[consumer] approvals.consumer: idle" in TextFormatter("consumer").format(
        _record("idle")
    )


_DESCRIBE_PROVIDER = """
import sys
from opentelemetry import propagate, trace
import app.__main__, app.approvals.__main__, app.inbound.__main__
import relay.__main__, simulator.__main__
from app import tracing
on = tracing.configure("relay")
provider = trace.get_tracer_provider()
resource = getattr(provider, "resource", None)
name = resource.attributes.get("service.name") if resource else None
# redis-py loads opentelemetry.sdk.metrics for its own observability; ours is below.
ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
sdk = "sdk" if any(m.startswith(ours) for m in sys.modules) else "no-sdk"
fields = ",".join(sorted(propagate.get_global_textmap().fields))
print(on, type(provider).__name__, name, sdk, fields)
"""


@pytest.mark.parametrize(
    ("environ", "described"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "console"},
            "True TracerProvider market-relay sdk traceparent,tracestate",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "relay-eu-1"},
            "True TracerProvider relay-eu-1 sdk traceparent,tracestate",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "service.name=r2"},
            "True TracerProvider r2 sdk traceparent,tracestate",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_PROPAGATORS": "tracecontext,baggage"},
            "True TracerProvider market-relay sdk baggage,traceparent,tracestate",
        ),
        ({}, "False ProxyTracerProvider None no-sdk baggage,traceparent,tracestate"),
        (
            {"OTEL_TRACES_EXPORTER": "none"},
            "False ProxyTracerProvider None no-sdk baggage,traceparent,tracestate",
        ),
    ],
)
def test_each_process_names_itself_unless_the_environment_does(
    environ: dict[str, str], described: str
) -> None:
    """On, the SDK's provider with the resource the environment gives, the process's
    own name by default, and W3C trace context without baggage unless OTEL_PROPAGATORS
    asks (a caller's baggage would be logged and forwarded); off, the API's proxy: no
    provider was set, and no process has loaded the SDK."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _DESCRIBE_PROVIDER],
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == described
