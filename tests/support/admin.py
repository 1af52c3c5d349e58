"""The admin API as a test calls it: the token, and the alerts it reports."""

from __future__ import annotations

import httpx

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def alerts(http: httpx.AsyncClient) -> dict[str, bool]:
    response = await http.get("/api/v1/admin/alerts", headers=ADMIN)
    assert response.status_code == 200
    return {a["name"]: a["firing"] for a in response.json()["alerts"]}
