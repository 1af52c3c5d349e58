"""The API's documentation page (/schema, Swagger UI), whole without the internet.

Litestar's Swagger page loads its script, style and icon from CDNs: on a machine
without internet it stays blank. Here they come from the swagger-ui-bundle-v2 package
(Swagger UI's own dist files, Apache-2.0, its licence in the package's metadata), served
under /schema/static/. Only the files the page uses are served: the dist's index.html
would show an example API from the internet. Redoc is not offered (/schema/redoc is a
404), and no page links to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH: Final = "/schema"
ASSETS: Final = "/static"  # under DOCS_PATH
_DIST: Final = Path(str(swagger_ui_path))
_MEDIA_TYPES: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def asset_url(name: str) -> str:
    return f"{DOCS_PATH}{ASSETS}/{name}"


@get(
    f"{ASSETS}/{{name:str}}",
    include_in_schema=False,
    sync_to_thread=False,
    # The files change only with the package: a day in a browser's cache is safe.
    cache_control=CacheControlHeader(max_age=86400, public=True),
)
def swagger_asset(name: FromPath[str]) -> File:
    media_type = _MEDIA_TYPES.get(name)
    if media_type is None:
        raise NotFoundException(f"no documentation asset {name!r}")
    return File(_DIST / name, media_type=media_type, content_disposition_type="inline")


class OfflineSwagger(SwaggerRenderPlugin):
    """Swagger UI with its files served by this app, not a CDN."""

    def __init__(self) -> None:
        super().__init__(
            js_url=asset_url("swagger-ui-bundle.js"),
            css_url=asset_url("swagger-ui.css"),
            standalone_preset_js_url=asset_url("swagger-ui-standalone-preset.js"),
            favicon=f"<link rel='icon' type='image/png' href='{asset_url('favicon-32x32.png')}'>",
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)  # the OAuth2 redirect page
        router.register(swagger_asset)
