"""``evstate serve``: the store over HTTP, speaking the protocol of Alchemy's remote state service.

One job: turn HTTP requests into calls on :class:`~evstate.store.KafkaStateStore` and
answers back into JSON. Every request is ``POST /`` with a JSON body::

    {"method": "get", "params": ["bucket"], "context": {"chain": ["app", "dev"]}}

and every answer, error or not, is a JSON envelope::

    {"success": true, "status": 200, "result": ...}
    {"success": false, "status": 400, "error": "invalid key 'a:b': ..."}

=============  ===========  ==========================================================
method         params       result
=============  ===========  ==========================================================
``init``       ``[]``       ``null`` (creates the topics)
``deinit``     ``[]``       ``null`` (a DELETE event for every key of the scope)
``list``       ``[]``       ids directly in the scope
``count``      ``[]``       how many states the scope holds
``get``        ``[id]``     the stored state, or ``null``
``getBatch``   ``[[ids]]``  ``{id: state}`` for the ids that have one
``all``        ``[]``       ``{id: state}``
``set``        ``[id, s]``  the write's position token (``"partition:offset"``)
``delete``     ``[id]``     the position token (a missing id is a no-op)
``listScopes`` ``[]``       names of the nested scopes directly below that hold states
=============  ===========  ==========================================================

States travel as Alchemy serialized them (secrets encrypted by the client), and are stored
and answered as they are: the server holds no password. ``context`` may also carry
``consistency`` (``session``, the default, ``strong`` or ``eventual``) and ``minPosition``
(a token from ``set``) for reads, as the Python API's keyword arguments.

``HEAD /`` answers 200 once the server is connected to Kafka, its topics exist (it
creates them at start, as ``init`` would) and its view holds everything committed before
it started; 503 before, saying which. Requests are served once it is connected: each waits
until the view has caught up with the partition it needs (``session`` consistency). Every
request needs ``Authorization: Bearer <token>`` (compared in constant time). Statuses:
400 bad JSON, method or params (a key or scope name evstate refuses, a marker that would
not decode, a ``minPosition`` in a partition that does not exist, a request aiohttp cannot
parse, such as a header over 8 KiB: never echoed); 401 token missing or wrong (a token
that is not UTF-8 included); 404/405 other paths and verbs; 413 body over the limit (or an
event over the broker's); 503 Kafka unreachable, a write not acknowledged, a read not
consistent in time (all retriable); 500 anything else, with no stack trace (that goes to
the server's log). A connection that does not send its headers within ``header_timeout``
is closed, and the access log never holds a query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, NoReturn

from aiohttp import ClientPayloadError, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from evstate.client import EvstateClient
from evstate.config import Settings
from evstate.errors import (
    ClosedError,
    ConfigError,
    ConsistencyTimeout,
    EventTooLargeError,
    EvstateError,
    KafkaError,
    MalformedEventError,
    SerdeError,
    TopicMismatchError,
    ValidationError,
    ViewError,
)
from evstate.model import CONSISTENCIES, Consistency, Lifecycle, Position, Scope
from evstate.store import KafkaStateStore

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY",
    "DEFAULT_PORT",
    "HEADER_TIMEOUT",
    "METHODS",
    "create_app",
    "make_runner",
    "run_server",
    "status_of",
]

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8787
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
"""Largest request body accepted (bytes); larger ones are answered 413."""
HEADER_TIMEOUT: Final = 10.0
"""Seconds a connection may take to send a request's line and headers (or stay idle)."""
# How long run_server waits for the client's first attempt to open before listening.
_SETTLE_TIMEOUT: Final = 3.0

_STR: Final = "a string"
_IDS: Final = "a list of strings"
_STATE: Final = "a state object"
# method -> what each positional param must be
METHODS: Final[dict[str, tuple[str, ...]]] = {
    "init": (),
    "deinit": (),
    "list": (),
    "count": (),
    "get": (_STR,),
    "getBatch": (_IDS,),
    "all": (),
    "set": (_STR, _STATE),
    "delete": (_STR,),
    "listScopes": (),
}

# First match wins, so subclasses come before their bases.
_STATUSES: Final[tuple[tuple[type[EvstateError], int], ...]] = (
    (EventTooLargeError, 413),
    (ValidationError, 400),
    (MalformedEventError, 500),
    (SerdeError, 400),
    (TopicMismatchError, 500),
    (KafkaError, 503),  # BrokerUnavailableError, WriteFailedError
    (ConsistencyTimeout, 503),
    (ClosedError, 503),
    (ViewError, 500),
    (ConfigError, 500),
)


def status_of(exc: EvstateError) -> int:
    """The HTTP status an evstate error is answered with."""
    for kind, status in _STATUSES:
        if isinstance(exc, kind):
            return status
    return 500


def _envelope(status: int, *, result: Any = None, error: str | None = None) -> web.Response:
    body: dict[str, Any] = {"success": error is None, "status": status}
    if error is None:
        body["result"] = result
    else:
        body["error"] = error
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        response.headers["Retry-After"] = "1"
    return response


class _Refused(Exception):
    """An answer other than 200, raised anywhere in a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the request --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    params: list[Any]
    scope: Scope
    consistency: Consistency
    min_position: Position | None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Refused(400, f"the body is not JSON: {exc}") from None


def _check_param(method: str, index: int, kind: str, value: Any) -> None:
    ok = (
        isinstance(value, str)
        if kind == _STR
        else isinstance(value, list) and all(isinstance(v, str) for v in value)
        if kind == _IDS
        else isinstance(value, dict)
    )
    if not ok:
        raise _Refused(
            400, f"param {index} of {method!r} must be {kind}, got {type(value).__name__}"
        )


def _parse_call(payload: Any) -> _Call:
    if not isinstance(payload, dict):
        raise _Refused(400, 'the body must be a JSON object {"method", "params", "context"}')
    method = payload.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise _Refused(400, f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    params = payload.get("params", [])
    kinds = METHODS[method]
    if not isinstance(params, list) or len(params) != len(kinds):
        raise _Refused(
            400, f"{method!r} takes params [{', '.join(kinds)}], got {json.dumps(params)[:200]}"
        )
    for index, (kind, value) in enumerate(zip(kinds, params, strict=True)):
        _check_param(method, index, kind, value)
    context = payload.get("context")
    if not isinstance(context, dict):
        raise _Refused(400, 'the body needs "context": {"chain": [...]}')
    chain = context.get("chain")
    if not isinstance(chain, list) or not chain:
        raise _Refused(400, "context.chain must be a non-empty list of scope names")
    consistency = context.get("consistency", "session")
    if consistency not in CONSISTENCIES:
        raise _Refused(400, f"context.consistency must be one of {', '.join(CONSISTENCIES)}")
    token = context.get("minPosition")
    if token is not None and not isinstance(token, str):
        raise _Refused(400, "context.minPosition must be a position token 'partition:offset'")
    return _Call(
        method=method,
        params=params,
        scope=Scope(*chain),  # InvalidScopeError (400) for a bad name
        consistency=consistency,
        min_position=None if token is None else Position.parse(token),
    )


def _child_scopes(client: EvstateClient, scope: Scope) -> list[str]:
    # Paths join names with '/', so a name holding '/' reads as two levels here.
    prefix = scope.path + "/"
    names = {p[len(prefix) :].split("/")[0] for p in client.scopes() if p.startswith(prefix)}
    return sorted(names)


async def _dispatch(client: EvstateClient, call: _Call) -> Any:
    store: KafkaStateStore = client.store(call.scope)
    reads: dict[str, Any] = {"consistency": call.consistency, "min_position": call.min_position}
    match call.method, call.params:
        case "init", []:
            await store.init()
            return None
        case "deinit", []:
            await store.deinit()
            return None
        case "list", []:
            return await store.list(**reads)
        case "count", []:
            return await store.count(**reads)
        case "get", [key]:
            return await store.get_tree(key, **reads)
        case "getBatch", [ids]:
            return await store.get_batch_trees(ids, **reads)
        case "all", []:
            return await store.all_trees(**reads)
        case "set", [key, tree]:
            return (await store.set_tree(key, tree)).token
        case "delete", [key]:
            return (await store.delete(key)).token
        case "listScopes", []:
            # Nested scopes live in other partitions: catch the whole view up (unless
            # the caller asked for eventual) rather than this scope's partition only.
            await client.consistent(call.scope, call.consistency, call.min_position)
            if call.consistency != "eventual":
                await client.catch_up()
            return _child_scopes(client, call.scope)
    raise AssertionError(f"unhandled method {call.method}")  # pragma: no cover


# -- the client's life ----------------------------------------------------------------


class _Backend:
    """The server's one :class:`EvstateClient`, opened in the background with retries.

    The server listens at once; until Kafka answers and the topics are there, requests
    get 503 with the reason. An error that retrying cannot fix (view locked, a topic
    with the wrong settings) is kept in ``fatal``.
    """

    def __init__(self, settings: Settings) -> None:
        self.client = EvstateClient(settings)
        self.last_error: EvstateError | None = None
        self.fatal: asyncio.Future[EvstateError] = asyncio.get_running_loop().create_future()
        self._opener: asyncio.Task[None] | None = None
        self._ready = False
        self._opened = asyncio.Event()
        # Set once the first attempt to open is over, however it went.
        self.settled = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready and self.client.state is Lifecycle.OPEN

    def start(self) -> None:
        self._opener = asyncio.create_task(self._open(), name="evstate-serve-open")

    async def _open(self) -> None:
        try:
            await self._open_with_retries()
        finally:
            self.settled.set()

    async def _open_with_retries(self) -> None:
        delay = 0.25
        while True:
            try:
                await self.client.start()
                # The server exists to serve the store: create (or check) the topics now,
                # so a bad topic fails at start and reads see other writers at once.
                await self.client.ensure_topics()
            except EvstateError as exc:
                self.last_error = exc
                if not exc.retriable:
                    log.error("evstate serve cannot open its client: %s", exc)
                    self.fatal.set_result(exc)
                    return
                log.warning("evstate serve: %s (retrying in %gs)", exc, delay)
                self.settled.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.last_error = None
                self._ready = True
                self._opened.set()
                log.info("evstate serve: connected to %s", self.client.settings.bootstrap_servers)
                return

    def check_ready(self) -> None:
        if self.ready:
            return
        self._refuse()

    async def wait_ready(self) -> None:
        """While the first connection is under way (nothing failed yet), wait up to
        ``read_timeout`` for it; then :meth:`check_ready` (503 while Kafka is known down)."""
        if not self._opened.is_set() and self.last_error is None and not self.fatal.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._opened.wait()), self.client.settings.read_timeout
                )
        self.check_ready()

    def check_caught_up(self) -> None:
        """Refuse (503) until the view holds everything committed before the server started."""
        self.check_ready()
        applier = self.client.applier
        behind = applier.behind() if applier is not None else {}
        if behind:
            done = sum(applied for applied, _ in behind.values())
            total = sum(mark for _, mark in behind.values())
            raise _Refused(
                503,
                f"evstate serve is catching up with the topic: {done} of {total} offsets read "
                f"in partitions {', '.join(str(p) for p in behind)}",
            )

    def _refuse(self) -> NoReturn:
        reason = (
            str(self.last_error)
            if self.last_error is not None
            else f"connecting to Kafka at {self.client.settings.bootstrap_servers}"
        )
        status = 500 if self.fatal.done() else 503
        raise _Refused(status, f"evstate serve is not ready: {reason}")

    async def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        await self.client.close()


_BACKEND: Final = web.AppKey("backend", _Backend)
_TOKEN: Final = web.AppKey("token", bytes)
_MAX_BODY: Final = web.AppKey("max_body", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- middlewares and handlers -------------------------------------------------------


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, aiohttp's own 404/405/413 included, as the JSON envelope."""
    try:
        return await handler(request)
    except _Refused as exc:
        return _envelope(exc.status, error=str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _envelope(exc.status, error=_text(exc))
        if "Allow" in exc.headers:  # 405 says which methods would do
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except EvstateError as exc:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return _envelope(status, error=str(exc))
    except Exception:
        log.exception("evstate serve: unexpected error in %s %s", request.method, request.path)
        return _envelope(500, error="internal error in evstate serve (see its log)")


def _text(exc: web.HTTPException) -> str:
    # aiohttp's texts read "404: Not Found"; the envelope carries the status already.
    text = exc.text or exc.reason
    prefix = f"{exc.status}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


@web.middleware
async def _bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless ``Authorization: Bearer <token>`` matches (constant-time compare)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[_TOKEN]
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding back the same
    # way gives the bytes sent, so a non-UTF-8 token is simply a wrong one (401).
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), expected
    ):
        raise _Refused(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    return await handler(request)


async def _head(request: web.Request) -> web.StreamResponse:
    request.app[_BACKEND].check_caught_up()
    return _envelope(200)


async def _post(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"the body is {request.content_length} bytes; the limit is {limit}")
    try:
        raw = await request.read()
    except (ConnectionError, asyncio.IncompleteReadError, ClientPayloadError) as exc:
        # The client left mid-body: nobody to answer, nothing to trace.
        log.info("evstate serve: %s left before sending the whole body (%s)", request.remote, exc)
        raise _Refused(400, "the request body ended early") from None
    call = _parse_call(_parse_body(raw))
    await backend.wait_ready()
    partitions = backend.client.settings.partitions
    if call.min_position is not None and call.min_position.partition >= partitions:
        raise _Refused(
            400,
            f"context.minPosition {call.min_position.token!r} names partition "
            f"{call.min_position.partition}; the state topic has partitions 0-{partitions - 1}",
        )
    return _envelope(200, result=await _dispatch(backend.client, call))


def create_app(
    settings: Settings, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> web.Application:
    """Build the aiohttp application of ``evstate serve``.

    The application owns one :class:`~evstate.client.EvstateClient` made from
    ``settings``: opened (with retries) when the app starts, closed when it stops.

    Args:
        settings: where Kafka and the view are.
        token: the bearer token clients must send; ``settings.token`` when None.
        max_body: largest request body in bytes; larger ones get 413.

    Returns:
        The application, to run with :func:`run_server` or any aiohttp runner.

    Raises:
        ConfigError: no token, or ``max_body`` below 1.
    """
    token = token if token is not None else settings.token
    if not token:
        raise ConfigError("evstate serve needs a bearer token: set EVSTATE_TOKEN (or pass --token)")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ConfigError(f"max_body must be an int >= 1, got {max_body!r}")
    app = web.Application(middlewares=[_errors_as_json, _bearer_token], client_max_size=max_body)
    app[_TOKEN] = token.encode("utf-8")
    app[_MAX_BODY] = max_body

    async def backend_life(app: web.Application) -> AsyncIterator[None]:
        backend = _Backend(settings)
        app[_BACKEND] = backend
        backend.start()
        yield
        await backend.close()

    app.cleanup_ctx.append(backend_life)
    app.router.add_route("HEAD", "/", _head)
    app.router.add_post("/", _post)
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
        response = _envelope(status, error=f"{what} ({kind}{hint})")
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


async def run_server(
    app: web.Application,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_listening: Callable[[str], None] | None = None,
    header_timeout: float = HEADER_TIMEOUT,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, or until its client fails for good.

    The socket is bound once the client's first attempt to open is over (or after a few
    seconds): a view dir that another process holds is an error before anything listens.

    Args:
        app: from :func:`create_app`.
        host: address to bind.
        port: port to bind; 0 picks a free one (passed to ``on_listening``).
        on_listening: called with the base URL once the socket is bound.
        header_timeout: see :func:`make_runner`.

    Raises:
        EvstateError: the client could not be opened and retrying would not help.
    """
    runner = make_runner(app, header_timeout=header_timeout)
    await runner.setup()
    try:
        backend = app[_BACKEND]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.settled.wait(), _SETTLE_TIMEOUT)
        if backend.fatal.done():
            raise backend.fatal.result()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
        if on_listening is not None:
            on_listening(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            fatal = backend.fatal
            stopped = asyncio.create_task(stop.wait())
            waiters: set[asyncio.Future[Any]] = {fatal, stopped}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if fatal.done():
                raise fatal.result()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
