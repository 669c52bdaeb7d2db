"""``GET /metrics`` of ``evstate serve``: the process's Prometheus metrics, as text.

One job: render :mod:`evstate.metrics` for a scraper, and count the requests the server
answers. The view's applied offsets and lags are read from the server's client when a
scrape arrives (no request to Kafka: the lag is as of the view's last fetch).

The route needs no token unless a metrics token is set (``--metrics-token`` or
``EVSTATE_METRICS_TOKEN``); then ``Authorization: Bearer <metrics token>`` is required
(compared in constant time). The store's own token is never asked for here, so a
scraper's configuration need not hold it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from evstate import metrics
from evstate.client import EvstateClient

__all__ = ["PATH", "count_requests", "metrics_handler"]

PATH: Final = "/metrics"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``evstate_http_requests_total{method,status}`` for every answer, errors included."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.HTTP_REQUESTS.labels(request.method, str(exc.status)).inc()
        raise
    except Exception:
        metrics.HTTP_REQUESTS.labels(request.method, "500").inc()
        raise
    metrics.HTTP_REQUESTS.labels(request.method, str(response.status)).inc()
    return response


def metrics_handler(
    client: Callable[[], EvstateClient | None], token: str | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of ``GET /metrics``.

    Args:
        client: returns the server's client (None before it exists), for the view's
            positions.
        token: the bearer token a scraper must send, or None for none.
    """
    expected = None if token is None else token.encode("utf-8")

    async def handle(request: web.Request) -> web.Response:
        if expected is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8"), expected
            ):
                return web.Response(
                    status=401,
                    text="missing or wrong metrics token (Authorization: Bearer <token>)\n",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        current = client()
        applier = None if current is None else current.applier
        if applier is not None:
            metrics.view_positions(applier.stats.topic, applier.positions())
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
