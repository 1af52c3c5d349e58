"""Request bodies decoded with every problem reported, each naming its field as sent."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec

from app import json_limits
from app.app_error import AppError, FieldError

T = TypeVar("T", bound=msgspec.Struct)

# PostgreSQL's text and jsonb cannot hold U+0000: refused as the client's error, not a 500.
NUL_REFUSED = "NUL characters are not accepted"
WITHOUT_NUL = r"^[^\x00]*$"

_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_SHOWN = 64  # characters of a refused value repeated in an answer
_KINDS = {dict: "an object", list: "an array", int: "a number", float: "a number"}


class RequestValidationError(AppError):
    """One or more fields of a request are wrong; answered with 400 and the list."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(
            "; ".join(f"{e.field}: {e.reason}" for e in errors),
            detail="Invalid request",
            errors=errors,
        )

    @classmethod
    def single(cls, field: str, reason: str) -> RequestValidationError:
        return cls([FieldError(field, reason)])


def decode_body(raw: bytes, struct_type: type[T]) -> T:
    """Decode a JSON object into `struct_type`, or raise with every field that is wrong.

    msgspec stops at the first error; clients fix a request faster seeing all of them,
    so each field is checked on its own before the struct is built.
    """
    return convert_object(decode_json(raw), struct_type)


def decode_json(raw: bytes, field: str = "body") -> Any:
    """Any JSON document nested at most json_limits.MAX_NESTING levels deep, or
    RequestValidationError naming `field` (the body, or a JSON document inside it).

    The depth is measured before decoding: the decoder, and every recursive walk after
    it, would raise RecursionError (a 500) on a few hundred levels.
    """
    if not raw.strip():
        raise RequestValidationError([FieldError(field, "a JSON object is required")])
    try:
        return json_limits.decode(raw)
    except json_limits.NestingTooDeep as exc:
        raise RequestValidationError([FieldError(field, f"{exc} (the limit)")]) from None
    except msgspec.DecodeError as exc:
        raise RequestValidationError([FieldError(field, f"malformed JSON: {exc}")]) from exc


def convert_object(document: Any, struct_type: type[T]) -> T:
    """Convert an already-decoded JSON value, reporting every wrong field."""
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "null"
        raise RequestValidationError(
            [FieldError("body", f"expected a JSON object, got {_json_kind(kind)}")]
        )
    errors: list[FieldError] = []
    fields = _fields(struct_type)
    choices = _choices_of(struct_type)
    known = {f.encode_name for f in fields}
    for field in fields:
        if field.encode_name not in document:
            if field.required:
                errors.append(FieldError(field.encode_name, "required"))
            continue
        value = document[field.encode_name]
        try:
            msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            allowed = choices.get(field.encode_name)
            if allowed is None:
                errors.append(_field_error(field.encode_name, exc))
            else:
                errors.append(FieldError(field.encode_name, not_one_of(value, allowed)))
            continue
        if _holds_nul(value):
            errors.append(FieldError(field.encode_name, NUL_REFUSED))
    if struct_type.__struct_config__.forbid_unknown_fields:
        errors.extend(FieldError(key, "unknown field") for key in document if key not in known)
    if errors:
        raise RequestValidationError(errors)
    try:
        return msgspec.convert(document, struct_type)
    except msgspec.ValidationError as exc:  # a rule spanning fields
        raise RequestValidationError([_field_error("body", exc)]) from exc


@functools.cache
def _fields(struct_type: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """msgspec resolves a struct's annotations on every call: once per type is enough."""
    return msgspec.structs.fields(struct_type)


@functools.cache
def _choices_of(struct_type: type[msgspec.Struct]) -> dict[str, tuple[str, ...]]:
    """The values each enumerated field (an Enum, a Literal; optional or not) allows."""
    found = {f.encode_name: allowed_values(f.type) for f in _fields(struct_type)}
    return {name: values for name, values in found.items() if values is not None}


def allowed_values(field_type: Any) -> tuple[str, ...] | None:
    """The values an Enum or a Literal type (optional or not) allows; None for other types."""
    return _choices(msgspec.inspect.type_info(field_type))


def _choices(info: msgspec.inspect.Type) -> tuple[str, ...] | None:
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.EnumType):
        return tuple(str(member.value) for member in info.cls)
    if isinstance(info, msgspec.inspect.LiteralType):
        return tuple(str(value) for value in info.values)
    if isinstance(info, msgspec.inspect.UnionType):
        found = [
            values
            for member in info.types
            if not isinstance(member, msgspec.inspect.NoneType)
            and (values := _choices(member)) is not None
        ]
        return found[0] if len(found) == 1 else None
    return None


def not_one_of(value: Any, allowed: tuple[str, ...]) -> str:
    """`'house' is not one of real_estate, equity, ...`: what was sent, and what may be."""
    if isinstance(value, str):
        shown = repr(value[:_SHOWN] + ("..." if len(value) > _SHOWN else ""))
    elif value is None or isinstance(value, bool):
        shown = msgspec.json.encode(value).decode()  # null, true, false
    else:  # a number is not repeated: str() of 5,000 digits raises
        shown = _KINDS.get(type(value), "a value")
    return f"{shown} is not one of {', '.join(allowed)}"


def _holds_nul(value: Any) -> bool:
    """Whether any string, key or value, at any depth holds U+0000.

    A loop, not recursion: a document from elsewhere than decode_json (a feed page, a
    stream entry) may be deeper than Python's recursion limit.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _field_error(name: str, exc: msgspec.ValidationError) -> FieldError:
    message = str(exc)
    match = _AT_PATH.search(message)
    if match is None:
        return FieldError(name, message)
    return FieldError(name + match["path"], message[: match.start()])


def _json_kind(python_kind: str) -> str:
    return {"list": "array", "str": "string", "int": "number", "float": "number"}.get(
        python_kind, python_kind
    )


def parse_time(field: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset, or RequestValidationError naming `field`.

    Litestar's lax conversion would also take "0.5" as a Unix time; the API documents,
    and so accepts, date-time strings only.
    """
    if value is None:
        return None
    try:
        parsed = msgspec.convert(value, _AwareTime)
    except msgspec.ValidationError as exc:
        reason = f"{value!r} is not an RFC 3339 time: {exc}"
        raise RequestValidationError.single(field, reason) from None
    try:
        # Stored and compared in UTC: a time at either end of the calendar whose offset
        # moves it past year 1 or 9999 cannot be (the database driver would refuse it).
        parsed.astimezone(UTC)
    except OverflowError:
        reason = f"{value!r} is outside the years 0001 to 9999 once in UTC"
        raise RequestValidationError.single(field, reason) from None
    return parsed
