"""The approver screen at the simulator's root: pending approval requests with Approve
and Reject, the decision log, the feed, and the fault switches, as a person uses them.

Forms carry a token made when the process starts: a page of another site cannot read
it, so it cannot make a visitor's browser approve or reject anything.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.response import Template
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from app.web.pages import MAX_FORM_BYTES, page, read_form, redirect, static_router, template_config
from simulator.decisions import decide
from simulator.state import Faults, Registry

TEMPLATES: Final = Path(__file__).parent / "templates"
FEED_SHOWN: Final = 25
ERROR_STATUSES: Final = (429, 500, 503)
MAX_LATENCY_MS: Final = 60_000
MAX_TEXT: Final = 200


def screen_templates() -> TemplateConfig[Any]:
    return template_config(TEMPLATES)


def form_token(state: State) -> str:
    if "form_token" not in state:
        state.form_token = secrets.token_urlsafe(24)
    token: str = state.form_token
    return token


async def _checked_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await read_form(request)
    if not secrets.compare_digest(form.get("form_token", ""), form_token(request.app.state)):
        raise PermissionDeniedException("form token missing or wrong: reload the page")
    return form


def _text(form: dict[str, str], name: str) -> str:
    value = " ".join(form.get(name, "").split())
    if len(value) > MAX_TEXT or not value.isprintable():
        raise HTTPException(
            status_code=400, detail=f"{name}: at most {MAX_TEXT} printable characters"
        )
    return value


def _feed(registry: Registry) -> list[tuple[int, str]]:
    """The last documents on the feed, newest first, by position, as text."""
    start = max(0, len(registry.feed) - FEED_SHOWN)
    shown = []
    for position in range(len(registry.feed) - 1, start - 1, -1):
        item = registry.feed[position]
        raw = bytes(item) if isinstance(item, msgspec.Raw) else msgspec.json.encode(item)
        shown.append((position + 1, raw[:2000].decode(errors="replace")))
    return shown


def _board(request: Request[Any, Any, Any], registry: Registry, **extra: Any) -> dict[str, Any]:
    requests = list(registry.requests.values())
    decisions = [item for item in reversed(registry.feed) if isinstance(item, dict)]
    return {
        "pending": [r for r in requests if r.status == "pending"],
        "decisions": decisions,
        "requests": {r.market_id: r for r in requests},
        "feed": _feed(registry),
        "feed_length": len(registry.feed),
        "faults": registry.faults,
        "error_statuses": ERROR_STATUSES,
        "form_token": form_token(request.app.state),
        "message": None,
        **extra,
    }


@get("/", include_in_schema=False)
async def screen(request: Request[Any, Any, Any], registry: NamedDependency[Registry]) -> Template:
    return page("approver.html", **_board(request, registry))


@get("/board", include_in_schema=False)
async def board(request: Request[Any, Any, Any], registry: NamedDependency[Registry]) -> Template:
    return page("_board.html", **_board(request, registry))


@post("/decide", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
async def decide_form(
    request: Request[Any, Any, Any], registry: NamedDependency[Registry]
) -> Response[Any]:
    form = await _checked_form(request)
    choice = form.get("decision")
    if choice not in ("approve", "reject"):
        raise HTTPException(status_code=400, detail="decision: approve or reject")
    actor = _text(form, "actor_id") or "epc-admin"
    reason = _text(form, "reason")
    if choice == "reject" and not reason:
        return page(
            "approver.html",
            status_code=400,
            **_board(request, registry, message="A rejection needs a reason: say why."),
        )
    decide(
        request.app.state,
        registry,
        form.get("market_id", ""),
        approved=choice == "approve",
        actor_id=actor,
        reason=reason or None,
    )
    return redirect("/")


@post("/faults/form", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
async def faults_form(
    request: Request[Any, Any, Any], registry: NamedDependency[Registry]
) -> Response[Any]:
    form = await _checked_form(request)
    latency = form.get("latency_ms", "0") or "0"
    status = form.get("error_status", "")
    if not latency.isdigit() or int(latency) > MAX_LATENCY_MS:
        raise HTTPException(status_code=400, detail=f"latency_ms: 0 to {MAX_LATENCY_MS}")
    if status and (not status.isdigit() or int(status) not in ERROR_STATUSES):
        raise HTTPException(status_code=400, detail=f"error_status: one of {ERROR_STATUSES}")
    registry.faults = Faults(
        latency_ms=int(latency),
        error_status=int(status) if status else None,
        malformed=form.get("malformed") == "on",
        page=registry.faults.page,  # a test's switch, not the screen's
    )
    return redirect("/")


SCREEN_HANDLERS: Final[list[ControllerRouterHandler]] = [
    screen,
    board,
    decide_form,
    faults_form,
    static_router("/static"),
]
