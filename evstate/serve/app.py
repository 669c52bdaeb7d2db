"""The aiohttp application of ``evstate serve``: middlewares, handlers, the runner.

The protocol (methods, statuses, the envelope) is :mod:`evstate.serve.protocol`; the
client's life and readiness :mod:`evstate.serve.backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

from aiohttp import ClientPayloadError, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from evstate.config import Settings
from evstate.errors import (
    ConfigError,
    EvstateError,
)
from evstate.secrets import SecretKeys
from evstate.serve import audit, auth, stacks
from evstate.serve import metrics as serve_metrics
from evstate.serve.backend import Backend
from evstate.serve.protocol import (
    CALL,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    HEADER_TIMEOUT,
    SETTLE_TIMEOUT,
    Refused,
    details_of,
    dispatch,
    envelope,
    parse_body,
    parse_call,
    status_of,
)
from evstate.serve.stacks import is_stacks_path
from evstate.serve.ui import PREFIX as CONSOLE_PREFIX
from evstate.serve.ui import console_app

log = logging.getLogger(__name__)

_BACKEND: Final = web.AppKey("backend", Backend)
_MAX_BODY: Final = web.AppKey("max_body", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- middlewares and handlers -------------------------------------------------------


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, aiohttp's own 404/405/413 included, as the JSON envelope."""
    try:
        return await handler(request)
    except Refused as exc:
        if exc.status == 401 and is_stacks_path(request.path):
            # Alchemy v2 expects no body (UnauthorizedNoContent); it says nothing more.
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return envelope(exc.status, error=str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = envelope(exc.status, error=_text(exc))
        if "Allow" in exc.headers:  # 405 says which methods would do
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except EvstateError as exc:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return envelope(status, error=str(exc), details=details_of(exc))
    except Exception:
        log.exception("evstate serve: unexpected error in %s %s", request.method, request.path)
        return envelope(500, error="internal error in evstate serve (see its log)")


def _text(exc: web.HTTPException) -> str:
    # aiohttp's texts read "404: Not Found"; the envelope carries the status already.
    text = exc.text or exc.reason
    prefix = f"{exc.status}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


async def _head(request: web.Request) -> web.StreamResponse:
    request.app[_BACKEND].check_caught_up()
    return envelope(200)


async def _post(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, f"the body is {request.content_length} bytes; the limit is {limit}")
    try:
        raw = await request.read()
    except (ConnectionError, asyncio.IncompleteReadError, ClientPayloadError) as exc:
        # The client left mid-body: nobody to answer, nothing to trace.
        log.info("evstate serve: %s left before sending the whole body (%s)", request.remote, exc)
        raise Refused(400, "the request body ended early") from None
    call = parse_call(parse_body(raw))
    request[CALL] = call
    await backend.wait_ready()
    partitions = backend.client.settings.partitions
    if call.min_position is not None and call.min_position.partition >= partitions:
        raise Refused(
            400,
            f"context.minPosition {call.min_position.token!r} names partition "
            f"{call.min_position.partition}; the state topic has partitions 0-{partitions - 1}",
        )
    return envelope(200, result=await dispatch(backend.client, call, request[auth.PRINCIPAL]))


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    auth_file: str | None = None,
    auth_poll_interval: float = auth.POLL_INTERVAL,
    access_log: bool | None = None,
    alchemy_v2: bool = False,
    secret_keys: SecretKeys | None = None,
    plaintext_secrets: bool = False,
) -> web.Application:
    """Build the aiohttp application of ``evstate serve``.

    The application owns one :class:`~evstate.client.EvstateClient` made from
    ``settings``: opened (with retries) when the app starts, closed when it stops.

    Args:
        settings: where Kafka and the view are.
        token: the bearer token clients must send (the principal ``default``, with every
            permission); ``settings.token`` when None. Not used with a principals file.
        metrics_token: the bearer token ``GET /metrics`` needs; ``settings.metrics_token``
            when None; no token at all when both are None.
        max_body: largest request body in bytes; larger ones get 413.
        auth_file: the principals file (:mod:`evstate.principals`); ``settings.auth_file``
            when None. Re-read when it changes (looked at every ``auth_poll_interval``
            seconds) and on SIGHUP (:func:`run_server`).
        access_log: record every request in the topic ``{prefix}.access``
            (:mod:`evstate.access`); None: when there is a principals file.
        alchemy_v2: answer Alchemy v2's REST state routes too (:mod:`evstate.serve.stacks`).
        secret_keys: the keys v2 secrets are sealed with at rest.
        plaintext_secrets: serve v2 without ``secret_keys``, keeping secrets as sent
            (only when explicitly asked: they then reach Kafka in plaintext).

    Returns:
        The application, to run with :func:`run_server` or any aiohttp runner.

    Raises:
        ConfigError: no token and no principals file, a principals file that is not
            valid, ``max_body`` below 1, or ``alchemy_v2`` without ``secret_keys`` (and
            without ``plaintext_secrets``).
    """
    token = token if token is not None else settings.token
    auth_file = auth_file if auth_file is not None else settings.auth_file
    gate = auth.Gate.open(token=token, auth_file=auth_file)
    if alchemy_v2 and secret_keys is None and not plaintext_secrets:
        raise ConfigError(
            "Alchemy v2 sends secrets in plaintext: evstate serve seals them at rest and needs "
            "secret keys for that (EVSTATE_SECRET_KEYS, or --secret-key-file; make one with "
            "`evstate secret-key`), or --plaintext-secrets to keep them as sent"
        )
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ConfigError(f"max_body must be an int >= 1, got {max_body!r}")
    app = web.Application(
        middlewares=[serve_metrics.count_requests, _errors_as_json, auth.authenticate],
        client_max_size=max_body,
    )
    auth.install(app, gate, poll_interval=auth_poll_interval, own_sign_in=(CONSOLE_PREFIX,))
    if access_log if access_log is not None else gate.path is not None:
        audit.install(app, settings)
    app[_MAX_BODY] = max_body

    async def backend_life(app: web.Application) -> AsyncIterator[None]:
        backend = Backend(settings)
        app[_BACKEND] = backend
        backend.start()
        yield
        await backend.close()

    app.cleanup_ctx.append(backend_life)
    app.router.add_route("HEAD", "/", _head)
    metrics_token = metrics_token if metrics_token is not None else settings.metrics_token
    app.router.add_get(
        serve_metrics.PATH,
        serve_metrics.metrics_handler(
            lambda: app[_BACKEND].client if _BACKEND in app else None, metrics_token
        ),
    )
    app.router.add_post("/", _post)
    if alchemy_v2:
        stacks.install(app, lambda: app[_BACKEND], keys=secret_keys, max_body=max_body)
    # The console signs in through the same gate: the same principals and grants.
    app.add_subapp(CONSOLE_PREFIX, console_app(lambda: app[_BACKEND], gate))
    return app


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse as JSON too."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own answer is text/plain and echoes the offending line (a header of
        # 8 KiB, a token); ours names the kind of problem only, and logs a client's
        # mistake in one line.
        kind = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        if status >= 500:  # a fault of ours: the trace goes to the log, never the answer
            log.error("evstate serve: error answering %s", request.remote, exc_info=exc)
        else:
            log.info("evstate serve: bad request from %s: %s (%d)", request.remote, kind, status)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was started already; closing the connection")
        what = "a malformed HTTP request" if status < 500 else "an internal error"
        hint = "; request lines and headers are limited to 8 KiB" if kind == "LineTooLong" else ""
        response = envelope(status, error=f"{what} ({kind}{hint})")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class _AccessLog(AbstractAccessLogger):
    """One line per request; the path without its query, where a careless client may put
    a token."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs',
            request.remote,
            request.method,
            request.rel_url.raw_path,
            response.status,
            time,
        )


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def make_runner(app: web.Application, *, header_timeout: float = HEADER_TIMEOUT) -> web.AppRunner:
    """The runner :func:`run_server` serves ``app`` with.

    Beyond aiohttp's defaults: a connection that has not sent a whole request line and
    headers within ``header_timeout`` seconds (also: idle that long between requests) is
    closed; unparsable requests are answered with the JSON envelope, without echoing
    them; the access log leaves query strings out.

    Args:
        app: from :func:`create_app`.
        header_timeout: seconds; must be finite and above 0.

    Raises:
        ConfigError: ``header_timeout`` is not a number of seconds above 0.
    """
    if (
        isinstance(header_timeout, bool)
        or not isinstance(header_timeout, int | float)
        or not math.isfinite(header_timeout)
        or header_timeout <= 0
    ):
        raise ConfigError(f"header_timeout must be seconds above 0, got {header_timeout!r}")
    return _Runner(
        app,
        handle_signals=False,
        keepalive_timeout=header_timeout,
        access_log_class=_AccessLog,
    )


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) from a PEM certificate chain and key.

    Raises:
        ConfigError: a file is missing or unreadable, or the key does not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {cert_file} and key {key_file}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
        ) from None
    return context


async def run_server(
    app: web.Application,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_listening: Callable[[str], None] | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, or until its client fails for good; SIGHUP
    re-reads the principals file.

    The socket is bound once the client's first attempt to open is over (or after a few
    seconds): a view dir that another process holds is an error before anything listens.

    Args:
        app: from :func:`create_app`.
        host: address to bind.
        port: port to bind; 0 picks a free one (passed to ``on_listening``).
        on_listening: called with the base URL once the socket is bound.
        header_timeout: see :func:`make_runner`.
        tls: serve HTTPS with this context (:func:`tls_context`); plain HTTP when None.

    Raises:
        EvstateError: the client could not be opened and retrying would not help.
    """
    runner = make_runner(app, header_timeout=header_timeout)
    await runner.setup()
    try:
        backend = app[_BACKEND]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.settled.wait(), SETTLE_TIMEOUT)
        if backend.fatal.done():
            raise backend.fatal.result()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        bound = runner.addresses[0]
        scheme = "https" if tls is not None else "http"
        url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
        if on_listening is not None:
            on_listening(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, app[auth.GATE].reload)
        try:
            fatal = backend.fatal
            stopped = asyncio.create_task(stop.wait())
            waiters: set[asyncio.Future[Any]] = {fatal, stopped}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if fatal.done():
                raise fatal.result()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
