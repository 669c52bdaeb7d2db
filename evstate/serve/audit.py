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
    response = await handler(request)
    access = request.app.get(ACCESS_LOG)
    if access is None:
        return response
    principal = request.get(PRINCIPAL)
    call = request.get(CALL)
    access.append(
        AccessRecord(
            time=arrived,
            principal=None if principal is None else principal.name,
            # A path is the caller's text: bounded (it never holds the query string).
            method=call.method if call is not None else f"{request.method} {request.path}"[:200],
            scope=None if call is None else call.scope.path,
            key=None if call is None else call.key,
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            remote=request.remote,
            on_behalf_of=None if call is None else call.notes.get("onBehalfOf"),
            correlation_id=None if call is None else call.notes.get("correlationId"),
        )
    )
    return response
