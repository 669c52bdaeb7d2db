"""The console's aiohttp application (mounted at ``/ui/`` by :mod:`evstate.serve.app`):
sign-in and sessions (the server's principals, through its
:class:`~evstate.serve.auth.Gate`), security headers, HTML errors, static files, live
events."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from evstate.errors import EvstateError, ForbiddenError
from evstate.principals import hash_token, may
from evstate.serve.auth import PRINCIPAL, Gate
from evstate.serve.protocol import Refused, status_of
from evstate.serve.ui import pages
from evstate.serve.ui.context import (
    CONSOLE,
    PREFIX,
    Console,
    ServerBackend,
    allowed_scope,
    environment,
    iso,
    render,
    required,
    session_of,
    sign_in_check,
    signed_in,
)
from evstate.serve.ui.live import LiveHub
from evstate.serve.ui.sessions import COOKIE, Sessions

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPEN = {f"{PREFIX}/sign-in"}  # and static files
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_HEARTBEAT = 15.0
_HEADERS = {
    # No inline script or style: everything the page runs or wears is ours, from /ui/static.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sessions, security headers and HTML errors for every console request."""
    if request.path == PREFIX:  # /ui is the console too
        raise web.HTTPPermanentRedirect(f"{PREFIX}/")
    try:
        response = await _signed_in(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = render(
            request, "error.html", exc.status, title=exc.reason, message=exc.text or exc.reason
        )
    except Refused as exc:
        response = render(
            request, "error.html", exc.status, title="Not available", message=str(exc)
        )
    except EvstateError as exc:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        title = "Forbidden" if isinstance(exc, ForbiddenError) else "Refused"
        response = render(request, "error.html", status, title=title, message=str(exc))
    except Exception:  # a fault of ours: the trace goes to the log, never the page
        log.exception("evstate console: unexpected error in %s %s", request.method, request.path)
        response = render(
            request, "error.html", 500, title="Internal error",
            message="An internal error in evstate serve (see its log).",
        )  # fmt: skip
    if not isinstance(response, web.FileResponse) and not response.prepared:
        response.headers.update(_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _OPEN or request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    if not sign_in_check(request):  # every request: a principal removed is signed out
        if request.path == f"{PREFIX}/events" or request.method != "GET":
            raise web.HTTPUnauthorized(text="Sign in first.")
        raise web.HTTPSeeOther(f"{PREFIX}/sign-in?{_next(request.path_qs)}")
    if request.method == "POST" and not _same_origin(request):
        raise web.HTTPForbidden(text="A form from another site was refused.")
    return await handler(request)


def _next(path_qs: str) -> str:
    return urllib.parse.urlencode({"next": path_qs})


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


def _safe_next(value: str | None) -> str:
    # Only a path of the console: never another site (an open redirect), never //host.
    if value and value.startswith(f"{PREFIX}/") and "\\" not in value:
        return value
    return f"{PREFIX}/"


async def _sign_in_form(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", next=_safe_next(request.query.get("next")), error=None)


async def _sign_in(request: web.Request) -> web.Response:
    console = request.config_dict[CONSOLE]
    form = await request.post()
    given, nxt = form.get("token"), form.get("next")
    target = _safe_next(nxt if isinstance(nxt, str) else None)
    # The API's lookup (sha256, then compare_digest), on the principals in force now.
    token = given.strip().encode("utf-8", "surrogateescape") if isinstance(given, str) else b""
    principal = console.gate.principals.authenticate(token) if token else None
    if principal is None:
        await asyncio.sleep(0.2)  # a guesser gets five tries a second per connection
        return render(request, "sign_in.html", 401, next=target, error="Wrong token.")
    request[PRINCIPAL] = principal  # the access log records who signed in
    cookie, _ = console.sessions.issue(principal.name, hash_token(token))
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=console.sessions.ttl,
        path=f"{PREFIX}/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _sign_out(request: web.Request) -> web.Response:
    form = await request.post()
    csrf = form.get("csrf")
    if not Sessions.csrf_ok(session_of(request), csrf if isinstance(csrf, str) else None):
        raise web.HTTPForbidden(text="The form is stale (CSRF check failed); reload the page.")
    response = web.HTTPSeeOther(f"{PREFIX}/sign-in")
    response.del_cookie(COOKIE, path=f"{PREFIX}/")
    raise response


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound(text="No such file.")
    body = importlib.resources.files("evstate.serve.ui").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=_STATIC[name])
    response.headers["Cache-Control"] = "max-age=300"
    return response


def _still_reads(request: web.Request, path: str) -> bool:
    """Whether the stream's session still holds, and its principal may still read
    ``path``, as the principals in force have it now."""
    found = signed_in(request)
    return found is not None and may(found[1], "read", path)


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each new change of ``scope`` (or of ``key`` in it), for a
    principal that may read it. The stream ends when the session no longer holds (its
    principal removed, its token gone) or the grant is gone: the next event or
    heartbeat finds out."""
    console = request.config_dict[CONSOLE]
    scope = allowed_scope(request, required(request, "scope")).path
    sub = console.hub.subscribe(scope, request.query.get("key") or None)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", **_HEADERS, "Cache-Control": "no-store"}
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), _HEARTBEAT)
            except TimeoutError:
                if not _still_reads(request, scope):
                    break
                await response.write(b": heartbeat\n\n")
                continue
            if event is None or not _still_reads(request, scope):
                break
            data = {
                "op": event.op,
                "key": event.key,
                "version": event.version,
                "actor": event.actor,
                "reason": event.reason,
                "at": iso(event.timestamp),
            }
            await response.write(f"event: change\ndata: {json.dumps(data)}\n\n".encode())
    except ConnectionResetError:  # the tab left
        pass
    finally:
        console.hub.unsubscribe(sub)
    return response


def console_app(backend: Callable[[], ServerBackend], gate: Gate) -> web.Application:
    """The console, to mount with ``app.add_subapp(PREFIX, console_app(...))``.

    Sessions are signed with a random key made here: a restart signs everyone out.

    Args:
        backend: returns the server's backend (its client and readiness).
        gate: the server's principals in force (the API's): who may sign in with which
            token, and what each may read or break.

    Returns:
        The application; its live feed starts with the first page served and stops when
        the server shuts down.
    """
    app = web.Application(middlewares=[_guard])
    console = Console(
        backend=backend,
        gate=gate,
        sessions=Sessions(),
        hub=LiveHub(lambda: console.client()),
        templates=environment(),
    )
    app[CONSOLE] = console

    async def life(app: web.Application) -> AsyncIterator[None]:
        yield
        await console.hub.close()

    async def end_streams(app: web.Application) -> None:
        # Before aiohttp waits for open requests: open tabs must not hold a stop up.
        with contextlib.suppress(Exception):
            await console.hub.close()

    app.cleanup_ctx.append(life)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/", pages.scopes_page)
    app.router.add_get("/scope", pages.scope_page)
    app.router.add_get("/history", pages.history_page)
    app.router.add_get("/resource", pages.resource_page)
    app.router.add_post("/locks/break", pages.break_lock)
    app.router.add_get("/sign-in", _sign_in_form)
    app.router.add_post("/sign-in", _sign_in)
    app.router.add_post("/sign-out", _sign_out)
    app.router.add_get("/events", _events)
    app.router.add_get("/static/{name}", _static)
    return app
