"""Schemathesis's engine (the one behind `st run`) driven from a test, with its findings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema


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
) -> FuzzReport:
    """Every phase (examples, coverage, fuzzing, stateful) and every check, as configured."""
    schema = schemathesis.openapi.from_url(schema_url, config=SchemathesisConfig.from_dict(config))
    if body_filter is not None:
        schema.hook("filter_body")(body_filter)
    report = FuzzReport(operations={result.ok().label for result in schema.get_all_operations()})
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.failures.append(f"engine error {event.exception!r}")
    return report


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
                f"  {info.failure.message}\n  {info.code_sample}"
            )
