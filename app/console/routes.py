"""The console's router: its pages, its static files, and its errors as pages.

Every error of a console route is a page with its status, never the API's JSON body and
never a traceback: bad input is a 4xx naming the problem; a store that is down, a 503.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import asyncpg
import redis.asyncio as redis
from litestar import Request, Response, Router
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from app.admin.replay import StillUnreadable
from app.console.auth import PREFIX, NotSignedIn, SignInController
from app.console.pages import ConsolePages
from app.db import UNAVAILABLE_ERRORS
from app.web.pages import MAX_FORM_BYTES, page, redirect, static_router

log = logging.getLogger("console")

CONSOLE_TEMPLATES: Final = Path(__file__).parent / "templates"

AnyRequest = Request[Any, Any, Any]


def _error(_: AnyRequest, status: int, title: str, detail: str) -> Response[Any]:
    return page("console/error.html", status_code=status, title=title, detail=detail, section="")


def _not_signed_in(request: AnyRequest, _: NotSignedIn) -> Response[Any]:
    """A page asked for without a session goes to sign-in, and back after it; a form
    sent without one is refused."""
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(f"{PREFIX}/sign-in?next={quote(here, safe='')}", request)
    return _error(request, 401, "Not signed in", "Your session has expired: sign in again.")


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    response = _error(request, exc.status_code, _title(exc.status_code), exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _still_unreadable(request: AnyRequest, exc: StillUnreadable) -> Response[Any]:
    reasons = "; ".join(f"{error.field}: {error.reason}" for error in exc.errors)
    return _error(request, 422, "Cannot replay", f"{exc} ({reasons})")


def _unavailable(request: AnyRequest, exc: Exception) -> Response[Any]:
    log.warning("store unavailable during %s %s: %r", request.method, request.url.path, exc)
    return _error(request, 503, "Unavailable", "PostgreSQL or Redis is unavailable: retry soon.")


def _refused_value(request: AnyRequest, exc: asyncpg.DataError) -> Response[Any]:
    return _error(request, 400, "Bad request", f"a value the database does not accept: {exc}")


def _unexpected(request: AnyRequest, exc: Exception) -> Response[Any]:
    log.error("unhandled error during %s %s", request.method, request.url.path, exc_info=exc)
    return _error(request, 500, "Internal error", "Something went wrong; the log says what.")


def _title(status: int) -> str:
    return {
        400: "Bad request",
        401: "Not signed in",
        403: "Refused",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict",
        413: "Too large",
        415: "Not a form",
        429: "Too many attempts",
    }.get(status, "Error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    NotSignedIn: _not_signed_in,
    HTTPException: _http_error,
    StillUnreadable: _still_unreadable,
    redis.RedisError: _unavailable,
    **{error: _unavailable for error in UNAVAILABLE_ERRORS},
    asyncpg.DataError: _refused_value,
    Exception: _unexpected,
}


def console_router() -> Router:
    return Router(
        path="/",
        route_handlers=[SignInController, ConsolePages, static_router(f"{PREFIX}/static")],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_FORM_BYTES,
        include_in_schema=False,
    )
