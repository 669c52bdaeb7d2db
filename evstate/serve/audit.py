"""The access log of ``evstate serve``: a middleware that appends one
:class:`~evstate.access.AccessRecord` per request (reads, writes, refusals, ``HEAD /``)
to :class:`~evstate.access.AccessLog`, which sends them to Kafka in batches."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

from evstate.access import AccessLog, AccessRecord
from evstate.config import Settings
from evstate.serve.auth import PRINCIPAL
from evstate.serve.protocol import CALL

ACCESS_LOG: Final = web.AppKey("access_log", AccessLog)
SCOPE: Final = web.RequestKey("access_scope", str)
"""The scope a request that is no protocol call touched (a console page), for its record."""
KEY: Final = web.RequestKey("access_key", str)
"""The key such a request touched, if one."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(app: web.Application, settings: Settings) -> None:
    """Keep an access log while ``app`` runs, and record every request in it."""

    async def life(app: web.Application) -> AsyncIterator[None]:
        async with AccessLog(settings) as access:
            app[ACCESS_LOG] = access
            yield

    app.cleanup_ctx.append(life)
    app.middlewares.insert(1, _record)


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    arrived = int(time.time() * 1000)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect (the console's) is answered by raising
        _append(request, exc.status, started, arrived)
        raise
    _append(request, response.status, started, arrived)
    return response


def _append(request: web.Request, status: int, started: float, arrived: int) -> None:
    access = request.config_dict.get(ACCESS_LOG)
    if access is None:
        return
    principal = request.get(PRINCIPAL)
    call = request.get(CALL)
    access.append(
        AccessRecord(
            time=arrived,
            principal=None if principal is None else principal.name,
            # A path is the caller's text: bounded (it never holds the query string).
            method=call.method if call is not None else f"{request.method} {request.path}"[:200],
            scope=request.get(SCOPE) if call is None else call.scope.path,
            key=request.get(KEY) if call is None else call.key,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            remote=request.remote,
            on_behalf_of=None if call is None else call.notes.get("onBehalfOf"),
            correlation_id=None if call is None else call.notes.get("correlationId"),
        )
    )
