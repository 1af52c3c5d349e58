"""One casing on the wire: every body the public API answers with is camelCase
(app/wire.py), read off the OpenAPI document the API serves; the webhook endpoints
alone keep Entity Permissions Core's snake_case."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

WEBHOOKS = "/api/v1/webhooks/"


def _names(schema: dict[str, Any], components: dict[str, Any], seen: set[str]) -> Iterator[str]:
    """Every property name a body of `schema` can carry, following $refs once each."""
    if ref := schema.get("$ref"):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            yield from _names(components[name], components, seen)
        return
    for key, value in schema.get("properties", {}).items():
        yield key
        yield from _names(value, components, seen)
    for combinator in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(combinator, []):
            yield from _names(option, components, seen)
    if isinstance(items := schema.get("items"), dict):
        yield from _names(items, components, seen)


def _bodies(operation: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for response in operation.get("responses", {}).values():
        for media in response.get("content", {}).values():
            yield media["schema"]
    for media in operation.get("requestBody", {}).get("content", {}).values():
        yield media["schema"]


async def _field_names(client: httpx.AsyncClient, *, webhooks: bool) -> dict[str, set[str]]:
    document = (await client.get("/schema/openapi.json")).json()
    components = document["components"]["schemas"]
    found: dict[str, set[str]] = {}
    for path, operations in document["paths"].items():
        if path.startswith(WEBHOOKS) != webhooks:
            continue
        for method, operation in operations.items():
            for schema in _bodies(operation):
                found.setdefault(f"{method.upper()} {path}", set()).update(
                    _names(schema, components, set())
                )
    return found


async def test_every_body_of_the_public_api_is_camel_case(client: httpx.AsyncClient) -> None:
    found = await _field_names(client, webhooks=False)

    # The walk reaches the markets, admin, health and error bodies.
    assert {"statusCode", "processingStatus", "replayedAs", "tokenSymbol"} <= set().union(
        *found.values()
    )
    snake = {where: sorted(n for n in names if "_" in n) for where, names in found.items()}
    assert {where: names for where, names in snake.items() if names} == {}


async def test_the_webhook_receipts_keep_the_senders_snake_case(
    client: httpx.AsyncClient,
) -> None:
    found = await _field_names(client, webhooks=True)

    assert "event_id" in set().union(*found.values())
