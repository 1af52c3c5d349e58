"""One error body for every 4xx and 5xx: status, detail, and the fields at fault.

Features raise subclasses of app.app_error.AppError and are answered by one handler
here; this module knows no feature.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap
from litestar.typing import FieldDefinition

from app.app_error import AppError, FieldError
from app.db import UNAVAILABLE_ERRORS
from app.media_types import CONTENT_TYPE, accepted_by
from app.validation import allowed_values, decode_body, not_one_of
from app.wire import WireStruct

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]


class ErrorBody(WireStruct, frozen=True):
    status_code: int
    detail: str
    errors: list[FieldError] = msgspec.field(default_factory=list)


def error_response(
    status: int,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(status_code=status, detail=detail, errors=errors or []),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


async def validate_request_body(request: AnyRequest) -> None:
    """Before every handler: the Content-Type its endpoint accepts (app.media_types), then,
    when its `data` is a msgspec struct, every wrong field at once.

    Litestar would stop at the first error msgspec finds; decoding again once the body
    is known to be valid costs microseconds and keeps the OpenAPI schema exact.
    """
    handler = request.route_handler
    data_field = handler.parsed_data_field
    accepts = accepted_by(handler.opt, has_body=data_field is not None)
    if accepts is not None:
        # Every line: headers.get would check the first and leave the others unread.
        accepts.check(request.headers.getall(CONTENT_TYPE, []))
    if data_field is None or not data_field.is_subclass_of(msgspec.Struct):
        return
    decode_body(await request.body(), data_field.annotation)


def _app_error(_: AnyRequest, exc: AppError) -> Response[ErrorBody]:
    """Every feature's refusal: the subclass says its status, detail and fields."""
    return error_response(exc.status_code, exc.detail, exc.errors, headers=exc.headers)


def _litestar_invalid(request: AnyRequest, exc: ValidationException) -> Response[ErrorBody]:
    """Path, query and header parameters, as Litestar reports them."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        _parameter_error(request, str(item.get("key", "")), str(item.get("message", "")))
        for item in extra
        if isinstance(item, dict)
    ]
    return error_response(HTTP_400_BAD_REQUEST, "Invalid request", errors or None)


def _parameter_error(request: AnyRequest, parameter: str, message: str) -> FieldError:
    """Named as the client sent it (a header's, a query key's name, not the Python
    argument's); an enumerated query parameter's error lists the values it allows."""
    field = request.route_handler.parsed_fn_signature.parameters.get(parameter)
    wire = _wire_name(field, parameter)
    allowed = allowed_values(field.annotation) if field is not None else None
    sent = request.query_params.getall(wire, [])
    if allowed is not None and len(sent) == 1:
        return FieldError(wire, not_one_of(sent[0], allowed))
    return FieldError(wire, message)


def _wire_name(field: FieldDefinition | None, parameter: str) -> str:
    definition = getattr(field, "kwarg_definition", None)
    for attribute in ("name", "header", "query"):
        if wire := getattr(definition, attribute, None):
            return str(wire)
    return parameter or "request"


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        limit = request.route_handler.resolve_request_max_body_size()
        return error_response(
            exc.status_code,
            "Request body too large",
            [FieldError("body", f"larger than the {limit}-byte limit")],
        )
    errors = None
    if exc.status_code == HTTP_405_METHOD_NOT_ALLOWED:
        errors = [FieldError("method", f"{request.method} is not allowed on {request.url.path}")]
    return error_response(exc.status_code, exc.detail, errors, headers=exc.headers)


def _database_unavailable(request: AnyRequest, exc: Exception) -> Response[ErrorBody]:
    log.warning("database unavailable during %s %s: %r", request.method, request.url.path, exc)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        "Database unavailable, retry later",
        headers={"Retry-After": "5"},
    )


def _refused_value(request: AnyRequest, exc: asyncpg.DataError) -> Response[ErrorBody]:
    """A value PostgreSQL will not take (out of its range): the request's, so a 400. Every
    input is validated before it is stored; this one got past, so it is logged too."""
    log.warning("PostgreSQL refused a value of %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        HTTP_400_BAD_REQUEST,
        "Invalid request",
        [FieldError("body", f"a value the database does not accept: {exc}")],
    )


def _unexpected(request: AnyRequest, exc: Exception) -> Response[ErrorBody]:
    # The app is built without Litestar's logging config, so nothing else would log it.
    log.error("unhandled error during %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: _app_error,
    ValidationException: _litestar_invalid,
    HTTPException: _http_error,
    **{error: _database_unavailable for error in UNAVAILABLE_ERRORS},
    asyncpg.DataError: _refused_value,
    Exception: _unexpected,
}
