"""Standard Webhooks signatures: HMAC-SHA256 over `id.timestamp.body`, secrets `whsec_…`.

Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(space-separated `v1,<base64>` entries). Several secrets may be configured at once, so
that a secret can be rotated without refusing a delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus

from app.app_error import AppError, FieldError
from app.settings import decode_secret

TOLERANCE_S = 5 * 60
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Unix seconds in ASCII digits: int() alone would also take "+1_0", Arabic-Indic digits,
# and 400 digits, whose distance from now overflows a float (a 500). 15 digits reach
# the year 30 million.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")
# What a webhook-id may hold: printable ASCII, as every sender writes it. Other bytes
# reach us decoded as Latin-1 and are signed as UTF-8: no sender could match them.
_MESSAGE_ID = re.compile(r"[\x20-\x7e]+")


class SignatureError(AppError):
    """The request is not signed by a holder of one of our secrets; the message says why."""

    status_code = HTTPStatus.UNAUTHORIZED.value

    def __init__(self, reason: str) -> None:
        super().__init__(
            reason,
            detail="Signature verification failed",
            errors=[FieldError("signature", reason)],
        )


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for a message (used by senders and tests)."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def carries_signature(headers: Mapping[str, str]) -> bool:
    """Any of the three headers, even empty: such a request is verified, never waved through.

    `headers` has its names in lower case, as the framework gives them.
    """
    return any(name in headers for name in HEADERS)


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
    if not _MESSAGE_ID.fullmatch(message_id):
        raise SignatureError("webhook-id holds characters other than printable ASCII")
    if not _UNIX_SECONDS.fullmatch(stamp):
        raise SignatureError("webhook-timestamp is not a Unix time (1 to 15 digits)")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from now")
    offered = _offered_signatures(signatures)
    for secret in secrets:
        expected = sign(secret, message_id, timestamp, body).partition(",")[2].encode()
        # Every candidate compared in constant time, whatever matches first.
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return message_id
    raise SignatureError("no valid v1 signature for any configured secret")


def _offered_signatures(header: str) -> list[bytes]:
    """The v1 signatures offered, as bytes.

    compare_digest raises TypeError on a str holding anything but ASCII, and a header
    may hold any byte; a signature that is not ASCII can match nothing, so it is dropped.
    """
    return [
        candidate.removeprefix("v1,").encode()
        for candidate in header.split()
        if candidate.startswith("v1,") and candidate.isascii()
    ]
