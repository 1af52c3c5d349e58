"""Server-rendered pages: Jinja with autoescape, static files, headers, forms.

Every asset is served by the process itself (no CDN, no build step): htmx is vendored
under static/ with its licence. Pages carry a Content-Security-Policy that allows
scripts and styles from the app only, so text from a market name, a payload or an error
can never run, even should escaping miss it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import jinja2
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE, HTTP_415_UNSUPPORTED_MEDIA_TYPE
from litestar.template.config import TemplateConfig

from app.web import format as fmt

STATIC: Final = Path(__file__).parent / "static"
TEMPLATES: Final = Path(__file__).parent / "templates"
MAX_FORM_BYTES: Final = 16 * 1024
FORM_MEDIA_TYPE: Final = "application/x-www-form-urlencoded"

SECURITY_HEADERS: Final = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def template_config(*directories: Path) -> TemplateConfig[JinjaTemplateEngine]:
    """Templates from `directories`, then the shared ones; autoescape on for every file."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*directories, TEMPLATES]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(fmt.FILTERS)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def static_router(path: str) -> Router:
    return create_static_files_router(
        path,
        directories=[STATIC],
        name=f"static{path.replace('/', '-')}",
        include_in_schema=False,
        cache_control=None,
    )


def page(name: str, status_code: int = 200, **context: Any) -> Template:
    return Template(name, context=context, status_code=status_code, headers=SECURITY_HEADERS)


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    """A request htmx made for part of a page (it says so in HX-Request)."""
    return request.headers.get("hx-request") == "true"


def redirect(location: str, request: Request[Any, Any, Any] | None = None) -> Response[None]:
    """303 to `location`; to htmx, HX-Redirect, which it follows with a whole page."""
    if request is not None and is_htmx(request):
        return Response(None, status_code=200, headers={"hx-redirect": location})
    return Response(None, status_code=303, headers={"location": location, **SECURITY_HEADERS})


async def read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The fields of a url-encoded form, each given once; anything else is a 4xx."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise HTTPException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"a form is sent as {FORM_MEDIA_TYPE}",
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(
            status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"a form is at most {MAX_FORM_BYTES} bytes",
        )
    form = await request.form()
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name in fields:
            raise HTTPException(status_code=400, detail=f"form field {name!r} given twice")
        if "\x00" in value:
            raise HTTPException(status_code=400, detail=f"form field {name!r} holds a NUL")
        fields[name] = value
    return fields
