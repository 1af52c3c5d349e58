"""/metrics read by a test: a scrape, and one sample of it."""

from __future__ import annotations

import re

import httpx


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return response.text
