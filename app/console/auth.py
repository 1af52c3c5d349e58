"""Who may use the console: sign-in with ADMIN_TOKEN on a form, a session cookie, CSRF.

Every console route but the sign-in form needs a session (a guard); every form that
changes something carries the session's CSRF token (read_checked_form). Sign-in is
rate-limited per client address in Redis, as the webhook is, and logs who signed in
from where, never what was typed. Without ADMIN_TOKEN the whole console is off.
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery
from litestar.response import Template

from app.console.session import (
    LIFETIME_S,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_FORM_LIFETIME_S,
    Session,
    SessionKeys,
    operator_name,
    token_matches,
)
from app.web.pages import page, read_form, redirect
from app.webhooks.guard import RateLimiter, SourceGuard

log = logging.getLogger("console")

PREFIX: Final = "/console"
SIGN_IN_PER_MINUTE: Final = 10  # per client address (an IPv6 /64), across API workers


class ConsoleAccess:
    """Built once per app: the keys, whether cookies are Secure, the sign-in limiter."""

    def __init__(
        self,
        admin_token: str | None,
        *,
        secure_cookies: bool,
        guard: SourceGuard,
        limiter: RateLimiter,
    ) -> None:
        self.admin_token = admin_token
        self.keys = SessionKeys(admin_token) if admin_token else None
        self.secure_cookies = secure_cookies
        self.guard = guard
        self.limiter = limiter

    def cookie(self, name: str, value: str, max_age: int) -> Cookie:
        return Cookie(
            key=name,
            value=value,
            path=PREFIX,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
        )

    def caller(self, request: Request[Any, Any, Any]) -> str:
        peer = request.client.host if request.client else None
        return self.guard.identify(peer, request.headers.getall("x-forwarded-for", [])).name


class NotSignedIn(HTTPException):
    """No session, or one that expired or was forged: sign in (again)."""

    status_code = 401


def access_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleAccess:
    access: ConsoleAccess = connection.app.state.console_access
    return access


def require_console(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Off without ADMIN_TOKEN, as the admin API is."""
    if access_of(connection).keys is None:
        raise PermissionDeniedException("the console is off: ADMIN_TOKEN is not set")


def require_session(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    keys = access_of(connection).keys
    if keys is None:
        raise PermissionDeniedException("the console is off: ADMIN_TOKEN is not set")
    session = keys.read(connection.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NotSignedIn("sign in to the console")
    connection.state.console_session = session


def session_of(request: Request[Any, Any, Any]) -> Session:
    session: Session = request.state.console_session
    return session


def csrf_of(request: Request[Any, Any, Any]) -> str:
    keys = access_of(request).keys
    assert keys is not None
    return keys.csrf_token(session_of(request))


async def read_checked_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A state-changing form of a signed-in operator: refused without its CSRF token."""
    form = await read_form(request)
    keys = access_of(request).keys
    assert keys is not None
    if not keys.csrf_ok(session_of(request), form.get("csrf_token")):
        raise PermissionDeniedException("CSRF token missing or wrong: reload the page and retry")
    return form


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a console path of this site, never another site."""
    default = f"{PREFIX}/"
    if not target or len(target) > 2000 or not target.isprintable() or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return default
    if parts.path != PREFIX and not parts.path.startswith(f"{PREFIX}/"):
        return default
    if parts.path.startswith(f"{PREFIX}/sign-"):
        return default
    return target


class SignInController(Controller):
    path = PREFIX
    guards = [require_console]
    include_in_schema = False

    @get("/sign-in")
    async def form(
        self, request: Request[Any, Any, Any], next: FromQuery[str | None] = None
    ) -> Template:
        return self._form(request, next, error=None, status_code=200)

    def _form(
        self,
        request: Request[Any, Any, Any],
        target: str | None,
        *,
        error: str | None,
        status_code: int,
    ) -> Template:
        access = access_of(request)
        assert access.keys is not None
        nonce, token = access.keys.sign_in_form()
        response = page(
            "console/sign_in.html",
            status_code=status_code,
            sign_in_token=token,
            next=safe_next(target),
            error=error,
        )
        response.cookies.append(access.cookie(SIGN_IN_COOKIE, nonce, SIGN_IN_FORM_LIFETIME_S))
        return response

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[Any]:
        access = access_of(request)
        assert access.keys is not None and access.admin_token is not None
        caller = access.caller(request)
        if not await access.limiter.allow(caller):
            log.warning("sign-in refused from %s: too many attempts", caller)
            raise HTTPException(
                status_code=429,
                detail=f"too many sign-in attempts: at most {SIGN_IN_PER_MINUTE} a minute",
                headers={"Retry-After": "60"},
            )
        form = await read_form(request)
        target = form.get("next")
        if not access.keys.sign_in_form_ok(
            request.cookies.get(SIGN_IN_COOKIE), form.get("sign_in_token")
        ):
            return self._form(
                request, target, error="The form expired: sign in again.", status_code=403
            )
        operator = operator_name(form.get("operator", ""))
        if operator is None:
            return self._form(
                request,
                target,
                error="Give your name (1 to 64 printable characters): the audit log records "
                "who replayed what.",
                status_code=400,
            )
        if not token_matches(form.get("token", ""), access.admin_token):
            log.warning("sign-in refused from %s: wrong admin token", caller)
            return self._form(request, target, error="Wrong admin token.", status_code=403)
        log.info("sign-in of %s from %s", operator, caller)
        response = redirect(safe_next(target))
        response.cookies.append(
            access.cookie(SESSION_COOKIE, access.keys.mint(operator), LIFETIME_S)
        )
        response.cookies.append(access.cookie(SIGN_IN_COOKIE, "", 0))
        return response


def signed_out(access: ConsoleAccess) -> Response[Any]:
    response = redirect(f"{PREFIX}/sign-in")
    response.cookies.append(access.cookie(SESSION_COOKIE, "", 0))
    return response
