"""Console sign-in: the bearer token checked once, then a signed, expiring cookie.

A session cookie is ``{expires}.{nonce}.{signature}``: the signature is HMAC-SHA256 over
the rest, keyed by a key derived from the server's token, so changing the token signs
everyone out, and a cookie cannot be made or stretched without the token. The cookie is
HttpOnly and SameSite=Strict (Secure too over HTTPS). Forms that change something carry a
CSRF token derived from the session's nonce, checked in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "evstate_console"
"""The session cookie's name."""

SESSION_TTL = 8 * 3600
"""Seconds a session lasts after sign-in."""


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: when it expires, and its CSRF token."""

    expires: int
    csrf: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens for one server token."""

    def __init__(self, token: bytes, ttl: int = SESSION_TTL) -> None:
        """Args:
        token: the server's bearer token (the sign-in credential).
        ttl: seconds a session lasts.
        """
        self._token = token
        self._key = hmac.new(token, b"evstate console session v1", hashlib.sha256).digest()
        self.ttl = ttl

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the server's token (constant-time compare)."""
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token)

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _csrf(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        """A new session: the cookie's value and what it stands for."""
        expires = int((time.time() if now is None else now) + self.ttl)
        nonce = secrets.token_urlsafe(18)
        body = f"{expires}.{nonce}"
        return f"{body}.{self._sign(body)}", Session(expires, self._csrf(nonce))

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie stands for; None when absent, forged, or expired."""
        if not cookie:
            return None
        expires, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not expires.isdecimal() or not nonce or not signature:
            return None
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{nonce}")):
            return None
        if int(expires) <= (time.time() if now is None else now):
            return None
        return Session(int(expires), self._csrf(nonce))

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        """Whether a form's CSRF field matches the session's (constant-time compare)."""
        return given is not None and hmac.compare_digest(given, session.csrf)
