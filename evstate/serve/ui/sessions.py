"""Console sign-in: a token checked once, then a signed, expiring cookie that names the
principal and is checked against the principals in force on every request. Pure, no I/O.

A session cookie is ``{expires}.{nonce}.{principal}.{mark}.{signature}``: ``principal`` is
the principal's name (base64url), ``mark`` an HMAC of the sha256 of the token it signed
in with, and ``signature`` an HMAC-SHA256 over the rest. Both are keyed by a random key
made when the server starts: a cookie cannot be made or stretched without it, a server
restart signs everyone out, and neither the token nor its sha256 is in the cookie.

On every request :meth:`Sessions.resolve` finds the principal by name among those in
force (the principals file as last read) and confirms that one of its tokens is still
the one the session signed in with: removing the principal, or the token from its
``tokens_sha256``, ends the session at its next request, and a changed grant applies at
once. The cookie is HttpOnly and SameSite=Strict (Secure too over HTTPS). Forms that
change something carry a CSRF token derived from the session's nonce, checked in
constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from evstate.principals import Principal, Principals

COOKIE = "evstate_console"
"""The session cookie's name."""

SESSION_TTL = 8 * 3600
"""Seconds a session lasts after sign-in."""


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: when it expires, its CSRF token, and who signed in.

    Attributes:
        expires: epoch seconds.
        csrf: the token its forms carry.
        principal: the principal's name.
        mark: the keyed hash of the sha256 of the token it signed in with.
    """

    expires: int
    csrf: str = field(repr=False)
    principal: str
    mark: str = field(repr=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


class Sessions:
    """Issues and checks session cookies and CSRF tokens with one signing key."""

    def __init__(self, key: bytes | None = None, ttl: int = SESSION_TTL) -> None:
        """Args:
        key: the signing key; a random one (per process) when None.
        ttl: seconds a session lasts.
        """
        self._key = key if key is not None else secrets.token_bytes(32)
        self.ttl = ttl

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def _csrf(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")

    def _mark(self, token_sha256: str) -> str:
        return self._sign(f"token.{token_sha256}")

    def issue(
        self, principal: str, token_sha256: str, now: float | None = None
    ) -> tuple[str, Session]:
        """A new session for ``principal``, signed in with the token whose hex sha256 is
        ``token_sha256``: the cookie's value and what it stands for."""
        expires = int((time.time() if now is None else now) + self.ttl)
        nonce = secrets.token_urlsafe(18)
        mark = self._mark(token_sha256)
        body = f"{expires}.{nonce}.{_b64(principal.encode())}.{mark}"
        return f"{body}.{self._sign(body)}", Session(expires, self._csrf(nonce), principal, mark)

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie stands for; None when absent, forged, or expired."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 5:
            return None
        expires, nonce, name, mark, signature = parts
        if not expires.isdecimal() or not all(parts):
            return None
        if not hmac.compare_digest(signature, self._sign(cookie.rpartition(".")[0])):
            return None
        if int(expires) <= (time.time() if now is None else now):
            return None
        principal = _unb64(name)
        if principal is None:  # pragma: no cover - only a cookie we signed gets here
            return None
        return Session(int(expires), self._csrf(nonce), principal, mark)

    def resolve(self, session: Session, principals: Principals) -> Principal | None:
        """The principal ``session`` signed in as, as ``principals`` have it now; None when
        it is gone or no longer has the token it signed in with."""
        principal = principals.named(session.principal)
        if principal is None:
            return None
        found = False
        for digest in principal.tokens_sha256:  # every one: no early exit to time
            found |= hmac.compare_digest(session.mark, self._mark(digest))
        return principal if found else None

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        """Whether a form's CSRF field matches the session's (constant-time compare)."""
        return given is not None and hmac.compare_digest(given, session.csrf)
