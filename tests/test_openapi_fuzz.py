"""Schemathesis against the running API's own OpenAPI document, every check enabled.

Every operation gets schema-valid and schema-violating requests, single and chained
(the stateful phase follows the links it infers); every check must pass: no 5xx, no
status code the document does not list, responses matching their schema, invalid input
refused, valid input accepted, auth not ignored. A fixed seed and example budget, no
example database: CI repeats the same run.

On top of what the schema describes (tests/support/api_fuzz.py): bodies nested past the
32-level limit, and hostile values (non-ASCII, huge numbers) in every documented header
and in Content-Type. The webhook runs twice: unsigned, so that its bodies are read, and
signed behind a trusted proxy, so that its signature headers and X-Forwarded-For are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.json_limits import MAX_NESTING
from app.webhooks.openapi import WEBHOOK_HEADERS
from tests.conftest import service_env
from tests.support.api_fuzz import fuzz
from tests.support.processes import start_api

ADMIN_TOKEN = "fuzz-admin-token"
CONFIG = {
    "seed": 20261127,
    # Its cache replays earlier crashes first: each run must be the same run.
    "cache": {"enabled": False},
    "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "generation": {
        "max-examples": 40,
        "deterministic": True,
        "database": "none",
        # PostgreSQL cannot store U+0000, so the API refuses it anywhere with a 400; JSON
        # Schema cannot say "no NUL at any depth of this free-form object". The refusal
        # has tests of its own (test_hostile_bodies).
        "allow-x00": False,
    },
}


@pytest.fixture(scope="module")
def fuzzed_api(log_dir: Path) -> Iterator[str]:
    """The API as deployed, admin API on; webhooks unsigned so that their bodies are parsed."""
    process, base_url = start_api(service_env(ADMIN_TOKEN=ADMIN_TOKEN), log_dir, "api-fuzzed")
    try:
        yield base_url
    finally:
        process.stop()


def without_float_supply(_context: Any, body: Any) -> bool:
    """JSON Schema counts 995.0 as an integer; the API refuses it on purpose, since a supply
    written as a float may already be rounded (test_register has the case)."""
    return not (isinstance(body, dict) and isinstance(body.get("totalSupply"), float))


def test_schemathesis_finds_no_failure_in_any_operation(fuzzed_api: str, db: object) -> None:
    # db: an empty database, so that the run (which learns from responses) is the same run.
    report = fuzz(
        f"{fuzzed_api}/schema/openapi.json", config=CONFIG, body_filter=without_float_supply
    )

    assert report.failures == [], "\n\n".join(report.failures)
    assert report.tested >= report.operations, report.operations - report.tested
    assert len(report.operations) >= 11
    assert report.cases > 500


@pytest.fixture(scope="module")
def signed_api(log_dir: Path) -> Iterator[str]:
    """Signed webhooks, the tests' loopback address a trusted proxy: every header is read."""
    env = service_env(
        WEBHOOK_SECRETS="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        TRUSTED_PROXIES="127.0.0.1/32 ::1/128",
    )
    process, base_url = start_api(env, log_dir, "api-fuzzed-signed")
    try:
        yield base_url
    finally:
        process.stop()


@pytest.mark.parametrize("header", [*WEBHOOK_HEADERS, "content-type"])
def test_schemathesis_finds_no_failure_in_the_signed_webhook_with_one_header_hostile(
    signed_api: str, db: object, header: str
) -> None:
    # Every request is unsigned (401): what is fuzzed is what is read before that answer.
    # One header hostile at a time, the others well-formed, so that it is read at all.
    fuzzing_only = {
        **CONFIG,
        "phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}},
        "generation": {**CONFIG["generation"], "max-examples": 60},
    }
    report = fuzz(
        f"{signed_api}/schema/openapi.json",
        config=fuzzing_only,
        paths=["/api/v1/webhooks/entity-permissions"],
        hostile_header=header,
    )

    assert report.failures == [], "\n\n".join(report.failures)
    assert report.tested == report.operations == {"POST /api/v1/webhooks/entity-permissions"}
    assert report.cases >= 30


def test_the_document_states_the_nesting_limit_and_the_webhook_headers(fuzzed_api: str) -> None:
    paths = httpx.get(f"{fuzzed_api}/schema/openapi.json").json()["paths"]
    register = paths["/api/v1/markets/register"]["post"]
    webhook = paths["/api/v1/webhooks/entity-permissions"]["post"]

    for operation in (register, webhook):
        assert f"{MAX_NESTING} levels" in operation["description"]
        assert f"{MAX_NESTING} levels" in operation["responses"]["400"]["description"]
    documented = {p["name"]: p for p in webhook["parameters"] if p["in"] == "header"}
    assert set(documented) == set(WEBHOOK_HEADERS)
    assert all(not p["required"] and p["schema"] == {"type": "string"} for p in documented.values())
