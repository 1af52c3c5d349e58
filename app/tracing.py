"""OpenTelemetry for one process, off unless the standard OTEL_* variables ask for it.

On when OTEL_TRACES_EXPORTER names an exporter other than `none` (`otlp`, `console`,
a comma list), or when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
is set (the exporter then defaults to `otlp`, as the SDK's does); OTEL_SDK_DISABLED=true
wins. Everything else is read by the SDK's own pieces, as its autoconfiguration reads it:
the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) by Resource.create, the
sampler (OTEL_TRACES_SAMPLER, _ARG) by TracerProvider, the batching (OTEL_BSP_*) by
BatchSpanProcessor, the exporter's endpoint, headers and time-out by the exporter, the
propagators (OTEL_PROPAGATORS) by opentelemetry.propagate. Off, no provider is set and
nothing is instrumented: `enabled()` is the one check the hot paths make.

Trace context also travels in events (docs/design.md, Trace context): the outbox stores
the W3C `traceparent` and `tracestate` of the span that wrote an event in its `context`,
and whoever reads the event links its span to it. What is read back is untrusted (a
stream anyone with Redis access can write): only strings of a bounded length are handed
to the propagator, which validates them, and nothing else of a context is believed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.settings import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The SDK, its exporters and the instrumentations are imported only when tracing is on
# (configure): off, a process pays neither their start-up time nor their memory.

# The service.name of each process when OTEL_SERVICE_NAME (or service.name in
# OTEL_RESOURCE_ATTRIBUTES) does not name it.
SERVICE_NAMES: Final = {
    "api": "market-api",
    "relay": "market-relay",
    "consumer": "market-consumer",
    "poller": "market-poller",
    "simulator": "market-epc-simulator",
}
# The W3C fields an event's context carries; written by the outbox alone.
TRACE_FIELDS: Final = ("traceparent", "tracestate")
# A traceparent is 55 characters; W3C asks carriers to pass at least 512 of tracestate.
# Anything longer is not trace context we wrote, and is not read.
MAX_FIELD_CHARS: Final = 512
# A stored context is decoded for its trace fields only up to this size.
MAX_CONTEXT_BYTES: Final = 64 * 1024
INSTRUMENTATION_NAME: Final = "market-backend"


class _Installed:
    """The provider this process set up; None while tracing is off."""

    provider: TracerProvider | None = None


def enabled() -> bool:
    return _Installed.provider is not None


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for; none means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not value:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if any(environ.get(name, "").strip() for name in endpoints) else []
    names = [name.strip() for name in value.split(",")]
    return [name for name in names if name and name.lower() != "none"]


def configure(process: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Set up tracing for `process` if the environment asks for it; whether it is on.

    `environ` decides whether it is on and which exporters; the SDK's pieces read the
    process's environment themselves. Raises ConfigError naming the variable when an
    exporter cannot be loaded or built (other values the SDK cannot read, it warns of
    and replaces with its default, as its autoconfiguration does).
    The provider flushes and shuts down at interpreter exit (the SDK registers that), so
    the spans of a process that stops gracefully are exported; the HTTP servers, which
    uvicorn ends by its signal, call shutdown() in their lifespan's end.
    """
    names = exporter_names(environ)
    if not names or enabled():
        return enabled()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name, environ) for name in names]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        name = SERVICE_NAMES.get(process, f"market-{process}")
        resource = resource.merge(Resource({SERVICE_NAME: name}))
    try:
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    except ValueError as error:
        raise ConfigError(f"OTEL_TRACES_SAMPLER / OTEL_BSP_*: {error}") from None
    trace.set_tracer_provider(provider)
    if not environ.get("OTEL_PROPAGATORS", "").strip():
        # W3C trace context only: the SDK's default adds W3C baggage, which a public
        # caller could fill with what the API would log (a warning per malformed entry,
        # quoting it) and forward on every outgoing call. OTEL_PROPAGATORS still wins.
        propagate.set_global_textmap(TraceContextTextMapPropagator())
    _instrument()
    _Installed.provider = provider
    return True


def shutdown() -> None:
    """Export the spans still queued and stop. For processes that may not reach the
    interpreter's exit handlers: uvicorn ends a graceful shutdown by raising its signal
    again, which skips them. Blocks for at most the exporter's time-out."""
    if _Installed.provider is not None:
        _Installed.provider.shutdown()


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    """The SDK's exporter named `name`, found by its entry point as the SDK finds it."""
    entry_point = name
    variable = "OTEL_TRACES_EXPORTER"
    if name == "otlp":
        # This project ships OTLP over HTTP, the specification's default protocol.
        variable = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = environ.get(variable, "").strip() or "http/protobuf"
        entry_point = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}.get(
            protocol, ""
        )
        if not entry_point:
            raise ConfigError(f"{variable}: {protocol!r} is not an OTLP protocol")
    found = list(entry_points(group="opentelemetry_traces_exporter", name=entry_point))
    if not found:
        installed = ", ".join(
            sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        )
        raise ConfigError(
            f"{variable}: no span exporter {name!r} is installed (installed: {installed})"
        )
    try:
        return found[0].load()()
    except Exception as error:  # a value of OTEL_EXPORTER_* the exporter refuses
        raise ConfigError(f"{variable}: exporter {name!r} cannot start: {error}") from None


def _instrument() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()


def asgi_middleware() -> list[Any]:
    """The HTTP API's server spans (Litestar's OpenTelemetry middleware), when on."""
    if not enabled():
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig

    # Without the ASGI receive/send spans: two per request, telling nothing of ours.
    return [OpenTelemetryConfig(exclude_spans=["receive", "send"]).middleware]


def quiet() -> AbstractContextManager[None]:
    """No instrumentation spans inside: for the idle polling of a loop (a blocking read,
    a check every second), which would otherwise be a trace of its own each time."""
    if not enabled():
        return nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


# --- trace context in events ---------------------------------------------------------


def with_trace_context(context: dict[str, Any]) -> dict[str, Any]:
    """An event's context as the outbox stores it: with the current span's W3C fields,
    injected by the global propagator (none when no span is current)."""
    if not enabled():
        return context
    carrier: dict[str, str] = {}
    _EVENT_PROPAGATOR.inject(carrier)
    # A tracestate a caller sent may run to the SDK's 8,192 characters: stored, it would
    # ride every stream entry of the event, and readers drop it past MAX_FIELD_CHARS.
    kept: dict[str, Any] = {
        name: carrier[name]
        for name in TRACE_FIELDS
        if name in carrier and len(carrier[name]) <= MAX_FIELD_CHARS
    }
    return {**without_trace_context(context), **kept}


def without_trace_context(context: dict[str, Any]) -> dict[str, Any]:
    """A sender's context without the trace fields, which only the outbox writes."""
    if not any(name in context for name in TRACE_FIELDS):
        return context
    return {name: value for name, value in context.items() if name not in TRACE_FIELDS}


class _TraceFieldsGetter(Getter[Mapping[str, Any]]):
    """Hands the propagator an event context's trace fields: strings of a bounded length
    only, and no other key (no baggage, nothing a sender added)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        if key not in TRACE_FIELDS:
            return None
        value = carrier.get(key)
        if isinstance(value, str) and len(value) <= MAX_FIELD_CHARS:
            return [value]
        return None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [name for name in TRACE_FIELDS if name in carrier]


_GETTER: Final = _TraceFieldsGetter()
# Events carry W3C trace context alone, whatever OTEL_PROPAGATORS says for HTTP.
_EVENT_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _TraceFields(msgspec.Struct):
    traceparent: Any = None
    tracestate: Any = None


_decode_trace_fields = msgspec.json.Decoder(_TraceFields).decode


def span_context_of(context: Any) -> SpanContext | None:
    """The valid span context an event's context carries, or None: whatever it holds."""
    if not isinstance(context, Mapping):
        return None
    extracted = _EVENT_PROPAGATOR.extract(context, context=otel_context.Context(), getter=_GETTER)
    span_context = trace.get_current_span(extracted).get_span_context()
    return span_context if span_context.is_valid else None


def span_context_of_json(text: str | bytes | None) -> SpanContext | None:
    """span_context_of for a context still encoded as JSON (an outbox row, a stream field)."""
    if not text or len(text) > MAX_CONTEXT_BYTES:
        return None
    try:
        fields = _decode_trace_fields(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: msgspec's answer to a document nested ~1,000 deep, even under a
        # key the struct ignores; from a forged entry it must not stop a consumer.
        return None
    return span_context_of({"traceparent": fields.traceparent, "tracestate": fields.tracestate})


def batch_span(
    name: str,
    kind: SpanKind,
    contexts: Sequence[SpanContext | None],
    attributes: Mapping[str, Any],
) -> AbstractContextManager[Span]:
    """One span for a batch of events, linked to each event's trace context.

    When every event of the batch carries the same context (one request's events, most
    batches at low load) the span is also its child, so that a trace viewer shows one
    tree; otherwise (several contexts, or events with none, such as the poller's) it
    starts a trace of its own and the links connect it.
    """
    # One link per distinct span (a SpanContext holds a TraceState: not hashable).
    distinct = list({(c.trace_id, c.span_id): c for c in contexts if c is not None}.values())
    parent = distinct[0] if len(distinct) == 1 and None not in contexts else None
    return child_span(name, parent, kind, distinct, attributes)


@contextmanager
def child_span(
    name: str,
    parent: SpanContext | None,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Iterable[SpanContext] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span continuing `parent` (an event's context), or a new trace without one.

    Its scope inherits nothing of the ambient context: not a loop's span, nor the
    quiet() its loop runs under, so the work it covers is instrumented.
    """
    base = otel_context.Context()
    if parent is not None:
        base = trace.set_span_in_context(trace.NonRecordingSpan(parent), base)
    span = trace.get_tracer(INSTRUMENTATION_NAME).start_span(
        name,
        context=base,
        kind=kind,
        links=[Link(c) for c in links],
        attributes=dict(attributes or {}),
    )
    token = otel_context.attach(trace.set_span_in_context(span, otel_context.Context()))
    try:
        yield span
    except BaseException as error:
        record_failure(error)
        raise
    finally:
        otel_context.detach(token)
        span.end()


def current_span_context() -> SpanContext | None:
    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


def record_failure(error: BaseException) -> None:
    """Mark the current span failed with `error` (one the code handles, not raises)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def log_ids() -> tuple[str, str] | None:
    """The current recording span's trace and span ids, as hex, for a log line."""
    if not enabled():
        return None
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
