"""JSON nesting, bounded before anything recursive sees a document.

Decoders (msgspec's, the standard library's) and every recursive walk over a decoded
document raise RecursionError on input nested a few hundred levels deep: a 500 from
a request, a crashed poller or consumer from a feed page or a stream entry. Every
document from outside is therefore measured first by `limit_nesting`, which never
recurses: strings are removed and the brackets left are summed (+1 opening, -1
closing) in C-level loops, so a megabyte costs tens of milliseconds, less than
decoding it.

A document nested deeper than the limit is either refused (`decode`, for request
bodies) or has each too-deep value replaced by a marker string (`cap_nesting`, for a
feed page, so that the events beside a too-deep one are still read).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, Final

import msgspec

MAX_NESTING: Final = 32  # levels of objects and arrays in any JSON document we accept
# What cap_nesting puts in place of a value nested too deep (what an operator reads in
# the failed record of the event it came from).
TOO_DEEP_MARKER: Final = "<value nested too deep: dropped>"

# A whole string, escapes included, so that brackets inside strings are not counted; or
# one bracket. A string that never closes runs to the end of the text: the decoder stops
# there, and a pattern that could not match it was tried again from every quote inside
# it, quadratic (80 KB of \" took 40 s). Every attempt now matches where it starts, and
# the unrolled loop cannot backtrack, so one pass is linear.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)'
_STRINGS = re.compile(_STRING, re.DOTALL)
# Runs of brackets are read whole: a flood of them costs one token, not one each.
_TOKENS = re.compile(_STRING + rb"|[\[{]+|[\]}]+", re.DOTALL)
_OPENING = frozenset(b"[{")
# Brackets as signed bytes: +1 for [ and {, -1 for ] and }; everything else deleted.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))
_decode_any = msgspec.json.Decoder().decode
_MARKER_JSON = msgspec.json.encode(TOO_DEEP_MARKER)


class NestingTooDeep(ValueError):
    """A JSON document nested deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than {limit} levels of objects and arrays")
        self.limit = limit


def nesting_depth(raw: bytes) -> int:
    """The deepest level of objects and arrays in a JSON text (0 for a scalar)."""
    steps = _STRINGS.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b"), initial=0))


def within(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether a JSON text nests at most `limit` levels; most texts need no scan at all."""
    return raw.count(b"[") + raw.count(b"{") <= limit or nesting_depth(raw) <= limit


def cap_nesting(raw: bytes, limit: int) -> tuple[bytes, bool]:
    """`raw` with every value that opens below `limit` levels replaced by TOO_DEEP_MARKER.

    Returns the text and whether anything was replaced. A text within the limit comes
    back unchanged (the same object), at the cost of one scan.
    """
    if within(raw, limit):
        return raw, False
    pieces: list[bytes] = []
    kept_from = 0
    depth = 0
    cut_at = -1  # where the value being dropped opened, or -1
    for token in _TOKENS.finditer(raw):
        first, start, length = token.group()[0], token.start(), token.end() - token.start()
        if first == ord('"'):
            continue
        if first in _OPENING:
            if cut_at < 0 and depth <= limit < depth + length:
                cut_at = start + limit - depth  # the bracket that opens level limit + 1
            depth += length
            continue
        if cut_at >= 0 and depth - length <= limit:
            closes = start + depth - limit  # just past the bracket that closes it
            pieces += [raw[kept_from:cut_at], _MARKER_JSON]
            kept_from = closes
            cut_at = -1
        depth -= length
    if cut_at >= 0:
        # Never closed: the text is malformed, and the decoder would recurse through the
        # unclosed levels (100,000 [ is a RecursionError) before saying so. Up to where the
        # too-deep value opened, it says so within the limit.
        return raw[:cut_at], False
    pieces.append(raw[kept_from:])
    return b"".join(pieces), True


def decode(raw: bytes, limit: int = MAX_NESTING) -> Any:
    """Any JSON document nested at most `limit` levels deep.

    Raises NestingTooDeep beyond it and msgspec.DecodeError for malformed JSON, text
    that is not UTF-8 included (msgspec raises UnicodeDecodeError for that).
    """
    if not within(raw, limit):
        raise NestingTooDeep(limit)
    try:
        return _decode_any(raw)
    except UnicodeDecodeError as error:
        raise msgspec.DecodeError(f"not UTF-8: {error}") from None


def holds_marker(value: Any) -> bool:
    """Whether a document decoded from cap_nesting's output lost a value to the cap.

    Iterative, like everything here; the document's depth is bounded by then anyway.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item == TOO_DEEP_MARKER:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
