"""/schema, the API's documentation page, needs nothing but this API: every script, style
and icon it names is served here (app/api_docs.py), none from a CDN."""

from __future__ import annotations

import re

import httpx
import pytest

# Every URL a page makes the browser load or offers to follow.
_REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
PAGES = ["/schema", "/schema/swagger", "/schema/oauth2-redirect.html"]


async def references(client: httpx.AsyncClient, page: str) -> list[str]:
    response = await client.get(page)
    assert response.status_code == 200, page
    assert response.headers["content-type"].startswith("text/html")
    return _REFERENCES.findall(response.text)


@pytest.mark.parametrize("page", PAGES)
async def test_a_documentation_page_names_only_urls_of_this_api(
    client: httpx.AsyncClient, page: str
) -> None:
    named = await references(client, page)

    assert all(url.startswith("/") and not url.startswith("//") for url in named), named
    assert "cdn" not in (await client.get(page)).text.lower()
    assert not any("redoc" in url for url in named)


async def test_every_file_the_swagger_page_names_is_served_here(
    client: httpx.AsyncClient,
) -> None:
    named = await references(client, "/schema")
    scripts = [url for url in named if url.endswith(".js")]
    styles = [url for url in named if url.endswith(".css")]

    assert len(scripts) == 2 and len(styles) == 1, named
    for url in named:
        assert url.startswith("/"), url  # fetched from this API, never from elsewhere
        response = await client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
    bundle = await client.get(next(url for url in scripts if "bundle" in url))
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in bundle.text
    style = await client.get(styles[0])
    assert style.headers["content-type"].startswith("text/css")
    assert "url(http" not in style.text  # the stylesheet pulls nothing in either


@pytest.mark.parametrize(
    "path",
    [
        "/schema/static/index.html",  # the dist's demo page, which loads an API from the internet
        "/schema/static/swagger-initializer.js",
        "/schema/static/nothing.js",
        "/schema/static/..%2F..%2F..%2Fpyproject.toml",
        "/schema/redoc",  # not offered
    ],
)
async def test_nothing_else_is_served_under_the_documentation(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 404
