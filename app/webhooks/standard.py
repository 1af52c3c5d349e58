"""Standard Webhooks signatures: HMAC-SHA256 over `id.timestamp.body`, secrets `whsec_…`.

Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(space-separated `v1,<base64>` entries). Several secrets may be configured at once, so
that a secret can be rotated without refusing a delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

TOLERANCE_S = 5 * 60
PREFIX = "whsec_"


class SignatureError(Exception):
    """The request is not signed by a holder of one of our secrets."""


def decode_secret(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except binascii.Error as error:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from error


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for a message (used by senders and tests)."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str:
    """Check the signature; returns the webhook-id, raises SignatureError otherwise."""
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not message_id or not stamp or not signatures:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a Unix time") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from now")
    offered = [
        candidate.partition(",")[2]
        for candidate in signatures.split()
        if candidate.startswith("v1,")
    ]
    for secret in secrets:
        expected = sign(secret, message_id, timestamp, body).partition(",")[2]
        # Every candidate compared in constant time, whatever matches first.
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return message_id
    raise SignatureError("no valid v1 signature for any configured secret")
