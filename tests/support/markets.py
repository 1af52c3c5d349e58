"""Requests of the markets API, as the seed wrote them."""

from __future__ import annotations

from typing import Any

REGISTER = "/api/v1/markets/register"


def seed_body(**changes: Any) -> dict[str, Any]:
    """The seed's register example, with real UUIDs."""
    body: dict[str, Any] = {
        "name": "Test Market",
        "issuerId": "9b2f7c1e-1111-4a5b-8c9d-0123456789ab",
        "assetType": "real_estate",
        "tokenSymbol": "TEST",
        "tokenName": "Test Token",
        "totalSupply": 1000000,
        "entityId": "9b2f7c1e-2222-4a5b-8c9d-0123456789ab",
        "assetDetails": {},
    }
    body.update(changes)
    return body
