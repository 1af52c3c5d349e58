"""An OTLP/HTTP trace receiver for tests: the spans the processes export, decoded from
opentelemetry-proto's ExportTraceServiceRequest, and a text rendering of a trace."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL",
    ProtoSpan.SPAN_KIND_SERVER: "SERVER",
    ProtoSpan.SPAN_KIND_CLIENT: "CLIENT",
    ProtoSpan.SPAN_KIND_PRODUCER: "PRODUCER",
    ProtoSpan.SPAN_KIND_CONSUMER: "CONSUMER",
}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root
    start_ns: int
    attributes: dict[str, Any]
    links: tuple[Link, ...] = field(default=())


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, which) if which else None


class Receiver:
    """Collects every span POSTed to /v1/traces, from any process, in arrival order."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=KINDS.get(span.kind, "UNSPECIFIED"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple(
                                Link(link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ),
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(found)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[Span]], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll until `found(spans)` returns something truthy; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := found(self.snapshot()):
                return result
            time.sleep(0.1)
        raise AssertionError(f"no {what} among:\n{render_all(self.snapshot())}")


@contextmanager
def otlp_receiver() -> Iterator[tuple[Receiver, str]]:
    """A receiver on a free port; yields it and the endpoint to give the exporter."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            receiver.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_SHOWN = (
    "messaging.destination.name",
    "messaging.batch.message_count",
    "messaging.message.id",
    "db.system",
    "db.system.name",
    "http.route",
    "http.status_code",
)


def render_trace(spans: list[Span], trace_id: str) -> str:
    """One trace as an indented tree (children by start time), each span with its
    service, kind, a few attributes and its links."""
    ours = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in ours}
    children: dict[str, list[Span]] = {}
    for span in ours:
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines = [f"trace {trace_id}"]

    def show(span: Span, depth: int) -> None:
        shown = [f"{k}={span.attributes[k]}" for k in _SHOWN if k in span.attributes]
        line = f"{'  ' * depth}└─ {span.name} [{span.kind} {span.service}]"
        if shown:
            line += " " + " ".join(shown)
        if span.links:
            line += " links→" + ",".join(
                f"{'this trace' if link.trace_id == trace_id else link.trace_id[:8]}:"
                f"{link.span_id[:8]}"
                for link in span.links
            )
        lines.append(line)
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            show(child, depth + 1)

    for root in sorted(children.get("", []), key=lambda s: s.start_ns):
        show(root, 1)
    return "\n".join(lines)


def render_all(spans: list[Span]) -> str:
    traces = list(dict.fromkeys(s.trace_id for s in spans))
    return "\n".join(render_trace(spans, t) for t in traces[-20:])
