"""What every console handler shares: the server's client, the principals in force,
sessions, the live hub and the templates; who is signed in and what they may read;
rendering, and reading query parameters."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import jinja2
from aiohttp import web

from evstate.client import EvstateClient
from evstate.errors import ValidationError
from evstate.model import Scope
from evstate.principals import Permission, Principal, decide, may
from evstate.serve import audit
from evstate.serve.auth import PRINCIPAL, Gate
from evstate.serve.ui.live import LiveHub
from evstate.serve.ui.sessions import COOKIE, Session, Sessions

PREFIX = "/ui"
"""Where the console is mounted."""

PAGE_SIZE = 100
"""Rows per page of a scope's resource table."""


class ServerBackend(Protocol):
    """What the console needs of ``evstate serve``'s backend (:mod:`evstate.serve.backend`).

    ``wait_ready`` raises (a 503-ish error) while Kafka is known to be down.
    """

    client: EvstateClient

    async def wait_ready(self) -> None: ...


@dataclass(slots=True)
class Console:
    """The console's state, one per server."""

    backend: Callable[[], ServerBackend]
    gate: Gate
    sessions: Sessions
    hub: LiveHub
    templates: jinja2.Environment

    async def client(self) -> EvstateClient:
        """The server's client, once it is connected (raises while Kafka is down)."""
        backend = self.backend()
        await backend.wait_ready()
        return backend.client


CONSOLE: Final = web.AppKey("console", Console)
SESSION: Final = web.RequestKey("console_session", Session)
"""The request's session, once :func:`sign_in_check` found it good."""


def signed_in(request: web.Request) -> tuple[Session, Principal] | None:
    """The session the request's cookie stands for and its principal as the principals in
    force have it now; None when there is no cookie, it is forged or expired, or its
    principal is gone or no longer has the token it signed in with."""
    console = request.config_dict[CONSOLE]
    session = console.sessions.check(request.cookies.get(COOKIE))
    if session is None:
        return None
    principal = console.sessions.resolve(session, console.gate.principals)
    return None if principal is None else (session, principal)


def sign_in_check(request: web.Request) -> bool:
    """Put the request's session and principal on it (:data:`SESSION`,
    :data:`~evstate.serve.auth.PRINCIPAL`: the access log records who); False when it
    has none."""
    found = signed_in(request)
    if found is None:
        return False
    request[SESSION], request[PRINCIPAL] = found
    return True


def current_session(request: web.Request) -> Session | None:
    """The request's session, if it is signed in."""
    return request.get(SESSION)


def session_of(request: web.Request) -> Session:
    """The request's session (the console's middleware let only signed-in requests by)."""
    found = current_session(request)
    if found is None:
        raise web.HTTPUnauthorized(text="Sign in first.")
    return found


def principal_of(request: web.Request) -> Principal:
    """Who the request is signed in as."""
    if PRINCIPAL not in request:
        raise web.HTTPUnauthorized(text="Sign in first.")
    return request[PRINCIPAL]


def allowed_scope(request: web.Request, path: str, permission: Permission = "read") -> Scope:
    """The scope at ``path``, once the signed-in principal may ``permission`` it.

    The API's own check: the names are checked as :class:`~evstate.model.Scope` checks
    every chain (``..``, empty names, control characters refused), then
    :func:`~evstate.principals.decide` on its path. The scope goes to the access log.

    Raises:
        InvalidScopeError: a name evstate refuses (400).
        ForbiddenError: no grant covers it (403, naming principal, permission and scope).
    """
    scope = Scope.parse(path)
    request[audit.SCOPE] = scope.path
    decide(principal_of(request), permission, scope.path)
    return scope


def url(page: str, /, **params: Any) -> str:
    """A console URL with its query parameters encoded (None values left out)."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{PREFIX}/{page}" + (f"?{query}" if query else "")


def when(value: datetime | None) -> str:
    """A time as the console prints it (UTC, to the second)."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def environment() -> jinja2.Environment:
    """The templates (package data), autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evstate.serve.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["url"] = url
    env.filters["when"] = when
    env.filters["iso"] = iso
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page from ``template``, with the session (if any) and request in its context."""
    console = request.config_dict[CONSOLE]
    page = console.templates.get_template(template)
    session = current_session(request)
    principal = request[PRINCIPAL] if session is not None else None

    def readable(path: str) -> bool:  # a link to a scope only where it may be followed
        return principal is not None and may(principal, "read", path)

    text = page.render(
        session=session,
        principal=None if principal is None else principal.name,
        readable=readable,
        path_qs=request.path_qs,
        **context,
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def int_param(request: web.Request, name: str, default: int = 1) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdecimal() or not 1 <= int(raw) <= 10**9:
        raise ValidationError(f"{name} must be a whole number from 1, got {raw!r}")
    return int(raw)


def time_param(raw: str | None, name: str) -> datetime | None:
    """A moment from a form's ``datetime-local`` field (read as UTC) or an ISO time."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{name} must be a date and time such as 2026-12-01T12:00 (UTC), got {raw!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise ValidationError(f"the query parameter {name!r} is missing")
    return value
