"""The Content-Types an endpoint reads its body as: one rule for every endpoint with a body.

Each such endpoint declares what it accepts (an `Accepts`, in its route's opt; an endpoint
with a struct body that declares nothing accepts JSON_ONLY), and the app's before-request
hook checks it before the body is read. The media type is compared without regard to case
(RFC 9110 8.3.1); parameters other than charset are ignored. The body is always decoded
as UTF-8, so a charset that says otherwise is refused rather than misread. Refused: a
media type not accepted, none, more than one Content-Type line (which would the sender
mean?), a charset other than UTF-8; each with 415 naming the accepted types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from app.app_error import AppError, FieldError

ACCEPTS_OPT: Final = "accepts"
CONTENT_TYPE: Final = "Content-Type"
_UTF8: Final = frozenset({"utf-8", "utf8"})
_SHOWN: Final = 64  # characters of a refused value repeated in the answer


class UnsupportedMediaType(AppError):
    """Answered 415: `detail` names the accepted types, `errors` what was wrong."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(
            f"{detail}: {reason}", detail=detail, errors=[FieldError(CONTENT_TYPE, reason)]
        )


@dataclass(frozen=True)
class Accepts:
    """The media types one endpoint reads its body as."""

    media_types: tuple[str, ...]

    @property
    def opt(self) -> dict[str, Any]:
        """For the route decorator's `opt`, where the before-request hook finds it."""
        return {ACCEPTS_OPT: self}

    @property
    def detail(self) -> str:
        return f"{CONTENT_TYPE} must be {' or '.join(self.media_types)}"

    @property
    def description(self) -> str:
        """The 415 of the endpoint's OpenAPI document."""
        accepted = " or ".join(self.media_types)
        return f"{CONTENT_TYPE} missing, not {accepted}, or with a charset other than UTF-8"

    def check(self, lines: Sequence[str]) -> None:
        """Every Content-Type line of a request (headers.getall); UnsupportedMediaType
        unless there is one, of an accepted media type, in UTF-8 if it says."""
        if not lines or not lines[0].strip():
            raise UnsupportedMediaType(self.detail, "required")
        if len(lines) > 1:
            raise UnsupportedMediaType(self.detail, f"sent {len(lines)} times: send one")
        media_type, charset = _parse(lines[0])
        if media_type not in self.media_types:
            raise UnsupportedMediaType(
                self.detail,
                f"{_shown(media_type)} is not one of {', '.join(self.media_types)}",
            )
        if charset is not None and charset not in _UTF8:
            raise UnsupportedMediaType(
                self.detail, f"charset {_shown(charset)} is not UTF-8, which the body is read as"
            )


JSON_ONLY: Final = Accepts(("application/json",))


def accepted_by(opt: dict[str, Any], *, has_body: bool) -> Accepts | None:
    """What an endpoint declared it accepts; JSON_ONLY for an undeclared one with a body."""
    declared = opt.get(ACCEPTS_OPT)
    if isinstance(declared, Accepts):
        return declared
    return JSON_ONLY if has_body else None


def _parse(value: str) -> tuple[str, str | None]:
    """The media type, lower case, and the charset parameter if any, lower case, unquoted."""
    media_type, *parameters = value.split(";")
    charset = None
    for parameter in parameters:
        name, _, given = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = given.strip().strip('"').lower()
    return media_type.strip().lower(), charset


def _shown(text: str) -> str:
    return repr(text[:_SHOWN] + ("..." if len(text) > _SHOWN else ""))
