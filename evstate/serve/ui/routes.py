"""The console's aiohttp application (mounted at ``/ui/`` by :mod:`evstate.serve.app`):
sign-in and sessions, security headers, HTML errors, static files, live events."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from evstate.errors import EvstateError
from evstate.serve.protocol import Refused, status_of
from evstate.serve.ui import pages
from evstate.serve.ui.context import (
    CONSOLE,
    PREFIX,
    Console,
    ServerBackend,
    current_session,
    environment,
    iso,
    render,
    required,
    session_of,
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
        response = render(request, "error.html", status, title="Refused", message=str(exc))
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
    if current_session(request) is None:
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
    if not isinstance(given, str) or not console.sessions.token_matches(given.strip()):
        await asyncio.sleep(0.2)  # a guesser gets five tries a second per connection
        return render(request, "sign_in.html", 401, next=target, error="Wrong token.")
    cookie, _ = console.sessions.issue()
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


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each new change of ``scope`` (or of ``key`` in it)."""
    console = request.config_dict[CONSOLE]
    scope = required(request, "scope")
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
                await response.write(b": heartbeat\n\n")
                continue
            if event is None:
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


def is_console(path: str) -> bool:
    """Whether a request path is the console's (it signs in on its own)."""
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def console_app(backend: Callable[[], ServerBackend], token: bytes) -> web.Application:
    """The console, to mount with ``app.add_subapp(PREFIX, console_app(...))``.

    Args:
        backend: returns the server's backend (its client and readiness).
        token: the server's bearer token: the sign-in credential.

    Returns:
        The application; its live feed starts with the first page served and stops when
        the server shuts down.
    """
    app = web.Application(middlewares=[_guard])
    console = Console(
        backend=backend,
        sessions=Sessions(token),
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
