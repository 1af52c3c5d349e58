"""The base of every error the API answers with a body of its own.

A feature raises a subclass naming its status, the detail and the fields at fault;
app.errors maps the base to the one error body, so it need know no feature.
"""

from __future__ import annotations

from typing import ClassVar

from app.wire import WireStruct


class FieldError(WireStruct, frozen=True):
    field: str
    reason: str


class AppError(Exception):
    """An answer to the request: `status_code`, `detail`, the `errors` by field, `headers`.

    The exception's own message is for logs; `detail` is what the client reads.
    """

    status_code: ClassVar[int] = 400

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = message if detail is None else detail
        self.errors = errors or []
        self.headers = headers
