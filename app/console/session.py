"""Console sessions: a signed cookie, its CSRF token, and the sign-in form's token.

A session is minted only by a sign-in with ADMIN_TOKEN, fresh each time (a cookie set
before sign-in is never promoted: no fixation), and carries when it expires. It is
signed with a key derived from ADMIN_TOKEN, so changing the token ends every session;
nothing is stored server-side, so the console keeps working while Redis is down, which
is when an operator needs it. The CSRF token of a session is derived from it, and the
sign-in form's from a random value kept in a cookie of its own: a forged form from
another site carries neither (and SameSite=Strict keeps the cookies from it anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Final

import msgspec

SESSION_COOKIE: Final = "console_session"
SIGN_IN_COOKIE: Final = "console_sign_in"
LIFETIME_S: Final = 8 * 3600
SIGN_IN_FORM_LIFETIME_S: Final = 3600
MAX_COOKIE_CHARACTERS: Final = 1024
MAX_OPERATOR_CHARACTERS: Final = 64

_encode = msgspec.json.Encoder().encode


class Session(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sid: str  # random: what the CSRF token is derived from
    operator: str  # the name given at sign-in, for the audit log
    issued_at: int
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionKeys:
    def __init__(self, admin_token: str) -> None:
        self._key = hmac.new(
            admin_token.encode(), b"market-backend operator console v1", hashlib.sha256
        ).digest()

    def _mac(self, purpose: str, text: str) -> str:
        message = f"{purpose}\x00{text}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def mint(self, operator: str, now: float | None = None, lifetime_s: int = LIFETIME_S) -> str:
        issued = int(time.time() if now is None else now)
        session = Session(secrets.token_urlsafe(16), operator, issued, issued + lifetime_s)
        body = _b64(_encode(session))
        return f"{body}.{self._mac('session', body)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie holds; None when absent, forged, malformed or expired."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARACTERS:
            return None
        body, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None
        try:
            session = msgspec.json.decode(_unb64(body), type=Session)
        except (ValueError, binascii.Error, msgspec.DecodeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.sid)

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(
            str(offered).encode(), self.csrf_token(session).encode()
        )

    def sign_in_form(self) -> tuple[str, str]:
        """A fresh (cookie value, form token) pair for the sign-in form."""
        nonce = f"{int(time.time())}.{secrets.token_urlsafe(16)}"
        return nonce, self._mac("sign-in", nonce)

    def sign_in_form_ok(self, cookie: str | None, offered: str | None) -> bool:
        if not cookie or not offered or len(cookie) > MAX_COOKIE_CHARACTERS:
            return False
        issued, _, _ = cookie.partition(".")
        if not issued.isdigit() or int(issued) + SIGN_IN_FORM_LIFETIME_S < time.time():
            return False
        return hmac.compare_digest(offered.encode(), self._mac("sign-in", cookie).encode())


def token_matches(offered: str, expected: str) -> bool:
    """The admin token, compared in constant time (as digests: equal lengths)."""
    return hmac.compare_digest(
        hashlib.sha256(offered.encode(errors="surrogateescape")).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def operator_name(text: str) -> str | None:
    """The name an operator signs in under, or None when it cannot be one."""
    name = " ".join(text.split())
    if not name or len(name) > MAX_OPERATOR_CHARACTERS or not name.isprintable():
        return None
    return name
