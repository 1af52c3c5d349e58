"""Hypothesis strategies for JSON documents: anything, and the API's bodies valid or spoilt."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from app.approvals.domain import DECISION_OF_EVENT
from app.markets.domain import AssetType
from app.markets.schemas import MAX_TOTAL_SUPPLY

# Text PostgreSQL can store and JSON can carry: no NUL, no lone surrogate.
storable_characters = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
storable_text = st.text(storable_characters)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(storable_text, children, max_size=4)
    ),
    max_leaves=12,
)

# Anything a client could send; what PostgreSQL or JSON cannot hold is drawn often.
CANNOT_STORE = ("\x00", "a\x00b", "\ud800", "x\udfff")
hostile_text = st.text(st.characters(exclude_categories=[]), max_size=30) | st.sampled_from(
    CANNOT_STORE
)
hostile_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3)
    ),
    max_leaves=8,
)


def _bounded(size: int) -> st.SearchStrategy[str]:
    return st.text(storable_characters, min_size=1, max_size=size)


supplies = st.integers(min_value=1, max_value=MAX_TOTAL_SUPPLY)
register_bodies = st.fixed_dictionaries(
    {
        "name": _bounded(200),
        "issuerId": st.uuids().map(str),
        "assetType": st.sampled_from([kind.value for kind in AssetType]),
        "tokenSymbol": st.from_regex(r"\A[A-Z0-9]{2,11}\Z"),
        "tokenName": _bounded(200),
        "totalSupply": supplies | supplies.map(str),
        "entityId": st.uuids().map(str),
    },
    optional={"assetDetails": st.dictionaries(storable_text, json_values, max_size=5)},
)


@st.composite
def spoilt(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid body with fields dropped, replaced by anything, or added."""
    body = dict(draw(bodies))
    for key in draw(st.lists(st.sampled_from(sorted(body)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            del body[key]
        else:
            body[key] = draw(hostile_values)
    body.update(draw(st.dictionaries(hostile_text, hostile_values, max_size=2)))
    return body


@st.composite
def poisoned(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid body but for one string, at the top or nested, that cannot be stored."""
    body = dict(draw(bodies))
    bad = draw(st.sampled_from(CANNOT_STORE))
    key = draw(st.sampled_from(sorted(k for k, v in body.items() if isinstance(v, str | dict))))
    value = body[key]
    body[key] = value + bad if isinstance(value, str) else {**value, bad: [bad]}
    return body


DECISIONS = ("approved", "rejected")
_objects = st.dictionaries(storable_text, json_values, max_size=4)


def _decision_event(decision: str) -> st.SearchStrategy[dict[str, Any]]:
    payload = st.fixed_dictionaries(
        {"market_id": st.uuids().map(str), "decision": st.just(decision)},
        optional={"entity_id": st.uuids().map(str), "reason": _bounded(2000) | st.none()},
    )
    return st.fixed_dictionaries(
        {
            "event_id": _bounded(255),
            "event_type": st.just(f"market.{decision}"),
            "source": _bounded(255),
            "payload": payload,
        },
        optional={"context": _objects},
    )


# Events of other types are accepted as they are, for the consumer to record `skipped`.
_other_event = st.fixed_dictionaries(
    {
        "event_id": _bounded(255),
        "event_type": _bounded(255).filter(lambda kind: kind not in DECISION_OF_EVENT),
        "source": _bounded(255),
        "payload": _objects,
    },
    optional={"context": _objects},
)
webhook_events = st.sampled_from(DECISIONS).flatmap(_decision_event) | _other_event


def nested_json(depth: int, *, closed: bool = True, inner: bytes = b"1") -> bytes:
    """A JSON text of exactly `depth` levels, arrays and objects alternating, around `inner`;
    `closed=False` leaves every bracket open, as an attacker's 100,000 `[` do."""
    openers = [b"[" if level % 2 == 0 else b'{"k":' for level in range(depth)]
    closers = [b"]" if level % 2 == 0 else b"}" for level in reversed(range(depth))]
    return b"".join(openers) + inner + (b"".join(closers) if closed else b"")


def json_value(document: Any) -> Any:
    """A JSON document's value, numbers as decimals: PostgreSQL's jsonb keeps a number's
    value, not its spelling, so 2.251799813685243e+16 comes back as 22517998136852430."""
    text = document if isinstance(document, str) else json.dumps(document)
    return json.loads(text, parse_float=Decimal)
