"""Schemathesis's engine (the one behind `st run`) driven from a test, with its findings;
the hostile inputs it does not generate from a schema by itself; and a raw HTTP sender."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.generation.meta import TestPhase
from schemathesis.openapi.checks import RejectedPositiveData

from tests.support.json_strategies import huge_numbers, nested_too_deep


@dataclass
class FuzzReport:
    operations: set[str] = field(default_factory=set)
    tested: set[str] = field(default_factory=set)
    cases: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(
    schema_url: str,
    *,
    config: dict[str, Any],
    body_filter: Callable[[Any, Any], bool] | None = None,
    paths: Sequence[str] = (),
    hostile_header: str | None = None,
) -> FuzzReport:
    """Every phase (examples, coverage, fuzzing, stateful) and every check, as configured,
    on the operations under `paths` (all by default), with hostile bodies and headers.

    With `hostile_header`: that header hostile in every case, every other header the
    operation documents well-formed (so that the checks before it pass: a signature is
    only compared beside a fresh webhook-timestamp), the bodies as the schema has them.
    """
    schema = schemathesis.openapi.from_url(schema_url, config=SchemathesisConfig.from_dict(config))
    if paths:
        schema = schema.include(path=list(paths))
    if body_filter is not None:
        schema.hook("filter_body")(body_filter)
    if hostile_header is not None:
        schema.hook("flatmap_headers")(functools.partial(hostile_in, hostile_header.lower()))
    else:
        schema.hook("flatmap_body")(hostile_body)
        schema.hook("flatmap_headers")(hostile_headers)
    schema.hook("map_case")(judged_as_sent)
    schema.hook("filter_failure")(not_a_replaced_content_type)
    report = FuzzReport(operations={result.ok().label for result in schema.get_all_operations()})
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.failures.append(f"engine error {event.exception!r}")
    return report


def _one_in(n: int, rare: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]) -> Any:
    """`rare` when a draw from 0 to n - 1 is 0, `usual` otherwise. Hypothesis favours the
    ends of a range, so `rare` comes far more often than one time in n (about 45 % for
    n = 3): often enough to find something, leaving the usual cases their turn."""
    return st.integers(0, n - 1).flatmap(lambda draw: rare if draw == 0 else usual)


def hostile_body(_context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Some bodies nested past the JSON limit, as raw bytes: a schema never nests deeper
    than it says, which is where a RecursionError hid."""
    if not isinstance(body, dict | list):
        return st.just(body)
    return _one_in(4, nested_too_deep(st.just(body)), st.just(body))


# Header values schemathesis can send: Latin-1 (what HTTP carries) without control
# characters but tab and without leading white space (requests refuses those before
# sending; uvicorn answers control bytes with a plain-text 400 before the app runs: the
# hypothesis run, which writes raw bytes, covers them). Non-ASCII, and huge numbers.
_HEADER_TEXT = st.characters(codec="latin-1", exclude_categories=("Cc",)) | st.just("\t")
_TEXT = st.text(_HEADER_TEXT, max_size=30).map(str.lstrip)
_NON_ASCII = st.text(st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=1).map(
    str.lstrip  # U+0085 and U+00A0 are white space to requests too
)
_HUGE = huge_numbers.map(bytes.decode)
_HOSTILE = _TEXT | _NON_ASCII | _HUGE
# Well-formed values of the headers a check reads before the next one's.
_WELL_FORMED: dict[str, st.SearchStrategy[str]] = {
    "webhook-id": st.just("msg_1"),
    # Drawn when the case is generated, sent within the 5-minute tolerance.
    "webhook-timestamp": st.builds(lambda: str(int(time.time()))),
    "webhook-signature": st.just("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
    "x-amz-sns-message-type": st.just("Notification"),
    "x-forwarded-for": st.sampled_from(["10.1.2.3", "[2001:db8::1]:443"]),
    "content-type": st.sampled_from(["application/json", "text/plain"]),
}
# Hostile values shaped to get past their header's first check (the v1, prefix, the media
# type, the address before the port) to the one after it.
_HOSTILE_FOR: dict[str, st.SearchStrategy[str]] = {
    "webhook-timestamp": _HUGE | _HOSTILE,  # read as a number
    "webhook-signature": (_NON_ASCII | _TEXT).map(lambda value: f"v1,{value}") | _HOSTILE,
    "x-forwarded-for": _HUGE.map(lambda number: f"10.1.2.3:{number}") | _HOSTILE,
    "content-type": _HOSTILE.map(lambda value: f"application/json; charset={value}") | _HOSTILE,
}


def _header_names(operation: Any) -> list[str]:
    """The headers the operation documents, and Content-Type when it has a body."""
    names = [parameter.name for parameter in operation.headers]
    return [*names, "Content-Type"] if operation.body else names


def hostile_in(target: str, context: Any, headers: dict[str, Any] | None) -> Any:
    """The header `target` (lower case) hostile, the others the operation reads well-formed."""
    values = {
        name: _HOSTILE_FOR.get(name.lower(), _HOSTILE)
        if name.lower() == target
        else _WELL_FORMED.get(name.lower(), _TEXT)
        for name in _header_names(context.operation)
    }
    return st.fixed_dictionaries(values).map(lambda drawn: {**(headers or {}), **drawn})


def hostile_headers(context: Any, headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Some cases with hostile values in any of the headers the operation reads, the
    others as generated."""
    names = _header_names(context.operation)
    if not names:
        return st.just(headers)
    replaced = st.fixed_dictionaries(
        {}, optional={name: _HOSTILE_FOR.get(name.lower(), _HOSTILE) for name in names}
    ).map(lambda drawn: {**(headers or {}), **drawn})
    return _one_in(3, replaced, st.just(headers))


_HOOKED_PHASES = frozenset({TestPhase.FUZZING, TestPhase.STATEFUL})


def judged_as_sent(_context: Any, case: Any) -> Any:
    """The case with its headers and body judged again, as hostile_body and hostile_headers
    left them: schemathesis decided whether the case was valid before those hooks ran, and
    judges a container again once it is assigned. A header value over its maxLength is then
    invalid data, which must get a 4xx, and so is a body of raw bytes (nested past the
    limit: JSON Schema cannot bound depth, the API answers 400). Only in the phases where
    those hooks run: a coverage case (a required header left out on purpose) stays as
    it was judged."""
    if case.meta is not None and case.meta.phase.name in _HOOKED_PHASES:
        case.headers = case.headers
        case.body = case.body
    return case


def not_a_replaced_content_type(_context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a 415 for a Content-Type that hostile_headers replaced: the
    body was valid, the media type it was sent as was not, which no header parameter
    declares, so schemathesis still counts the case valid."""
    sent = (case.headers or {}).get("Content-Type")
    replaced = sent is not None and sent != case.media_type
    return not (
        isinstance(failure, RejectedPositiveData) and response.status_code == 415 and replaced
    )


def _record(report: FuzzReport, event: events.ScenarioFinished) -> None:
    recorder = event.recorder
    report.cases += len(recorder.cases)
    if event.status != Status.SKIP:
        report.tested.add(recorder.label)
    seen: set[tuple[str, str]] = set()
    for checks in recorder.checks.values():
        for check in checks:
            info = check.failure_info
            if info is None or (check.name, info.failure.title) in seen:
                continue
            seen.add((check.name, info.failure.title))
            report.failures.append(
                f"{recorder.label}: {check.name}: {info.failure.title}\n"
                f"  {info.failure.message}\n  {_shortened(info.code_sample)}"
            )


def _shortened(sample: str, keep: int = 1_500) -> str:
    """A curl line whose body may be 60,000 levels deep, cut to what a reader needs."""
    if len(sample) <= keep:
        return sample
    return f"{sample[: keep // 2]} ...[{len(sample) - keep} characters]... {sample[-keep // 2 :]}"


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send_raw(
    base_url: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> RawResponse:
    """One HTTP/1.1 POST written byte for byte: httpx (h11) refuses to send control bytes
    in a header value, which is exactly what a hostile client sends."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: " + host.encode(),
        b"Connection: close",
        b"Content-Length: %d" % len(body),
        *(name + b": " + value for name, value in headers),
    ]
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return RawResponse(int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2])
