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

``HEAD /`` answers 200 once the server is connected to Kafka and its topics exist (it
creates them at start, as ``init`` would), 503 before. ``GET /metrics`` serves the
Prometheus metrics (:mod:`evstate.serve_metrics`; no token unless a metrics token is
set). Every other request needs ``Authorization: Bearer <token>`` (compared in constant
time). Statuses:
400 bad JSON, method or params; 401 token missing or wrong; 404/405 other paths and
verbs; 413 body over the limit (or an event over the broker's); 503 Kafka unreachable,
a write not acknowledged, a read not consistent in time (all retriable); 500 anything
else, with no stack trace (that goes to the server's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from evstate import serve_metrics
from evstate.client import CONSISTENCIES, ClientState, Consistency, EvstateClient
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
from evstate.model import Position, Scope
from evstate.store import KafkaStateStore

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY",
    "DEFAULT_PORT",
    "METHODS",
    "create_app",
    "run_server",
    "status_of",
]

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8787
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
"""Largest request body accepted (bytes); larger ones are answered 413."""

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

    @property
    def ready(self) -> bool:
        return self._ready and self.client.state is ClientState.OPEN

    def start(self) -> None:
        self._opener = asyncio.create_task(self._open(), name="evstate-serve-open")

    async def _open(self) -> None:
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
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.last_error = None
                self._ready = True
                log.info("evstate serve: connected to %s", self.client.settings.bootstrap_servers)
                return

    def check_ready(self) -> None:
        if self.ready:
            return
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
    """401 unless ``Authorization: Bearer <token>`` matches (constant-time compare).

    ``GET /metrics`` checks its own token (see :mod:`evstate.serve_metrics`).
    """
    if request.path == serve_metrics.PATH:
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[_TOKEN]
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), expected
    ):
        raise _Refused(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    return await handler(request)


async def _head(request: web.Request) -> web.StreamResponse:
    request.app[_BACKEND].check_ready()
    return _envelope(200)


async def _post(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"the body is {request.content_length} bytes; the limit is {limit}")
    call = _parse_call(_parse_body(await request.read()))
    backend.check_ready()
    return _envelope(200, result=await _dispatch(backend.client, call))


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> web.Application:
    """Build the aiohttp application of ``evstate serve``.

    The application owns one :class:`~evstate.client.EvstateClient` made from
    ``settings``: opened (with retries) when the app starts, closed when it stops.

    Args:
        settings: where Kafka and the view are.
        token: the bearer token clients must send; ``settings.token`` when None.
        metrics_token: the bearer token ``GET /metrics`` needs; ``settings.metrics_token``
            when None; no token at all when both are None.
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
    app = web.Application(
        middlewares=[serve_metrics.count_requests, _errors_as_json, _bearer_token],
        client_max_size=max_body,
    )
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
    metrics_token = metrics_token if metrics_token is not None else settings.metrics_token
    app.router.add_get(
        serve_metrics.PATH,
        serve_metrics.metrics_handler(
            lambda: app[_BACKEND].client if _BACKEND in app else None, metrics_token
        ),
    )
    return app


async def run_server(
    app: web.Application,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, or until its client fails for good.

    Args:
        app: from :func:`create_app`.
        host: address to bind.
        port: port to bind; 0 picks a free one (passed to ``on_listening``).
        on_listening: called with the base URL once the socket is bound.

    Raises:
        EvstateError: the client could not be opened and retrying would not help.
    """
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
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
            fatal = app[_BACKEND].fatal
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
