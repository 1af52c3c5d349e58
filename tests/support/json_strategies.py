"""Hypothesis strategies for JSON documents: anything, and the API's bodies valid or spoilt;
bodies nested past the limit; and header values as a hostile client writes them."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from app.json_limits import MAX_NESTING
from app.markets.domain import AssetType
from app.markets.events import DECISION_OF_EVENT
from app.markets.schemas import MAX_TOTAL_SUPPLY
from tests.support.markets import seed_body

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
        {
            "market_id": st.uuids().map(str),
            "entity_id": st.uuids().map(str),
            "decision": st.just(decision),
        },
        optional={"reason": _bounded(2000) | st.none()},
    )
    # Who decided, required; the sender may say more.
    context = st.builds(lambda more, actor: {**more, "actor_id": actor}, _objects, _bounded(255))
    return st.fixed_dictionaries(
        {
            "event_id": _bounded(255),
            "event_type": st.just(f"market.{decision}"),
            "source": _bounded(255),
            "payload": payload,
            "context": context,
        }
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


# Nesting past the limit, weighted towards what broke before it existed: a level over,
# hundreds (a recursive walk's RecursionError), thousands and more (the decoder's).
# 60,000 levels with a body still fit under the webhook's 256 KiB.
too_deep = st.sampled_from([60_000, 20_000, 5_000, 1_200, 400, MAX_NESTING + 1]) | st.integers(
    MAX_NESTING + 1, 3_000
)
_MARK = "\u0001nested here\u0001"


def deepen(body: Any, depth: int, *, at: str | None, closed: bool) -> bytes:
    """`body` as JSON with the value at key `at` (the body itself with None) nested `depth`
    levels deeper; `closed=False` leaves those brackets open."""
    if at is None:
        return nested_json(depth, inner=json.dumps(body).encode(), closed=closed)
    spelt = json.dumps({**body, at: _MARK}).encode()
    return spelt.replace(json.dumps(_MARK).encode(), nested_json(depth, closed=closed), 1)


@st.composite
def nested_too_deep(
    draw: st.DrawFn, bodies: st.SearchStrategy[Any], depths: st.SearchStrategy[int] = too_deep
) -> bytes:
    """A body with one of its values, or itself, nested past MAX_NESTING."""
    body = draw(bodies)
    keys = sorted(body) if isinstance(body, dict) else []
    at = draw(st.sampled_from([None, *keys]))
    return deepen(body, draw(depths), at=at, closed=draw(st.booleans()))


# Header values, as bytes on the wire. Any byte but CR and LF (which would end the
# header): control bytes, which the HTTP parser refuses, and Latin-1 (obs-text), which
# reaches the app; numbers too large for a float or for int()'s 4,300 digits.
header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
non_ascii_bytes = st.binary(min_size=1, max_size=20).map(lambda b: bytes(x | 0x80 for x in b))
# Digits: past 2^53 and 2^63, past a float (309), at and past int()'s 4,300-digit limit.
HUGE_NUMBER_DIGITS = st.sampled_from([17, 309, 400, 1_000, 4_300, 4_301]) | st.integers(16, 5_000)
huge_numbers = HUGE_NUMBER_DIGITS.flatmap(
    lambda n: st.sampled_from(
        [b"1" + b"0" * n, b"9" * n, b"-" + b"9" * n, b"1" + b"0" * n + b".5", b"1e%d" % n]
    )
)
hostile_header_values = header_bytes | non_ascii_bytes | huge_numbers
# Replaced by the current Unix time when sent: a signature is only compared when the
# webhook-timestamp is fresh, so hostile signatures need a fresh timestamp beside them.
NOW = b"\x00now"


def _media_type_with(value: bytes) -> bytes:
    return b"application/json; charset=" + value


# Each header the webhook reads: a well-formed value, so that the checks after it run,
# or a hostile one.
webhook_header_values: dict[str, st.SearchStrategy[bytes]] = {
    "webhook-id": st.just(b"msg_1") | hostile_header_values,
    "webhook-timestamp": st.just(NOW) | hostile_header_values,
    "webhook-signature": (
        (hostile_header_values | st.just(b"")).map(lambda value: b"v1," + value)
        | hostile_header_values
    ),
    "x-amz-sns-message-type": st.just(b"Notification") | hostile_header_values,
    "content-type": (
        st.sampled_from([b"application/json", b"text/plain"])
        | hostile_header_values
        | hostile_header_values.map(_media_type_with)
    ),
    "x-forwarded-for": (
        st.sampled_from([b"10.1.2.3", b"[2001:db8::1]:443", b"10.1.2.3, 192.0.2.7:80"])
        | hostile_header_values
        | huge_numbers.map(lambda number: b"10.1.2.3:" + number)
    ),
}
webhook_headers = st.fixed_dictionaries(
    {
        name: webhook_header_values[name]
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    },
    optional={
        name: webhook_header_values[name]
        for name in ("x-amz-sns-message-type", "content-type", "x-forwarded-for")
    },
)


def json_value(document: Any) -> Any:
    """A JSON document's value, numbers as decimals: PostgreSQL's jsonb keeps a number's
    value, not its spelling, so 2.251799813685243e+16 comes back as 22517998136852430."""
    text = document if isinstance(document, str) else json.dumps(document)
    return json.loads(text, parse_float=Decimal)


def with_asset_details_nested(levels: int) -> bytes:
    """The seed's body whose assetDetails nests `levels` deep, so the body nests levels + 1."""
    details = b'{"deep":' + nested_json(levels - 1) + b"}"
    return json.dumps(seed_body(assetDetails="<details>")).encode().replace(b'"<details>"', details)
