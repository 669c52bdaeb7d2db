"""Alchemy v2's HTTP state routes on ``evstate serve``, beside v1's ``POST /``.

Alchemy 2.x (``makeHttpStateStore`` from ``alchemy/State``) speaks REST:

=========================================================  ========================
route                                                      answer
=========================================================  ========================
``GET /version`` (no token)                                ``{"version": 5}``
``GET /state/stacks``                                      stack names
``GET /state/stacks/{stack}/stages``                       stage names
``GET …/stages/{stage}/resources``                         fqns (the output left out)
``GET …/stages/{stage}/resources/{fqn}``                   the record, or ``null``
``PUT …/stages/{stage}/resources/{fqn}``                   the record as sent
``DELETE …/stages/{stage}/resources/{fqn}``                204
``GET …/stages/{stage}/replaced-resources``                records with status replaced
``GET|PUT …/stages/{stage}/output``                        the stack output / as sent
``DELETE /state/stacks/{stack}[?stage=]``                  204 (a DELETE per record)
=========================================================  ========================

A missing record is 200 ``null``, never 404 (Alchemy retries a 404 as a worker not yet
deployed). The fqn arrives percent-encoded twice (the client encodes it, then the path):
aiohttp decodes once, :func:`_fqn` the second time. Reads need ``read`` on the stage's
scope (:func:`evstate.stacks.stage_scope`), writes ``write``; a stack deleted whole
needs ``write`` on the stack (``~v2.<stack>``). A bad token is 401 with an empty body
(Alchemy's ``UnauthorizedNoContent``; the middleware in :mod:`evstate.serve.app`).

**Under a lease**: every route also answers under ``/lease/{token}/``. ``evstate run
--lock STACK/STAGE --state-url URL`` hands its child ``URL/lease/<token>`` as the state
URL, so the child's writes carry the lease's token (``lock_token``) without Alchemy
knowing; a write without it into a locked stage is refused (409).

**Secrets**: each value under a ``__redacted__`` key is sealed with the server's
:class:`~evstate.secrets.SecretKeys` before the event is made, and opened when read back
(:func:`evstate.stacks.seal_record`); no plaintext reaches Kafka, the view or a log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import ClientPayloadError, web

from evstate import stacks
from evstate.config import Settings
from evstate.errors import ConfigError, InvalidRecordError
from evstate.model import Scope, Tree
from evstate.principals import Permission, Principal, decide, may_see
from evstate.secrets import SecretKeys
from evstate.serve.auth import PRINCIPAL
from evstate.serve.backend import Backend
from evstate.serve.protocol import Refused, note_call, parse_body
from evstate.store import KafkaStateStore

log = logging.getLogger(__name__)

VERSION: Final = 5
"""The state-store contract version Alchemy 2.0.0-beta.79 expects (``STATE_STORE_VERSION``)."""
VERSION_PATH: Final = "/version"
_LEASE: Final = "/lease/{lease}"
_STAGE: Final = "/state/stacks/{stack}/stages/{stage}"
# DELETEs of a deleteStack in flight at once.
_CONCURRENCY: Final = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_stacks_path(path: str) -> bool:
    """Whether ``path`` is one of Alchemy v2's routes (they answer 401 with no body)."""
    return path.startswith(("/state/", "/lease/")) or path == VERSION_PATH


class Stacks:
    """What the v2 handlers share: the server's backend, the secret keys, the body limit."""

    def __init__(
        self, backend: Callable[[], Backend], keys: SecretKeys | None, max_body: int
    ) -> None:
        self._backend = backend
        self.keys = keys
        self.max_body = max_body

    async def client_ready(self) -> Backend:
        backend = self._backend()
        await backend.wait_ready()
        return backend

    # -- the request's parts ----------------------------------------------------

    def place(
        self, request: web.Request, method: str, permission: Permission, *, fqn: bool = False
    ) -> tuple[Scope, str | None]:
        """The stage's scope and the record's key (the fqn's, when asked), checked,
        noted for the access log and authorized."""
        stack, stage = request.match_info["stack"], request.match_info["stage"]
        scope = stacks.stage_scope(stack, stage)
        key = stacks.fqn_key(_fqn(request)) if fqn else None
        note_call(request, method, scope, key)
        decide(request[PRINCIPAL], permission, scope.path)
        return scope, key

    async def body(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > self.max_body:
            raise Refused(
                413, f"the body is {request.content_length} bytes; the limit is {self.max_body}"
            )
        try:
            raw = await request.read()
        except (ConnectionError, asyncio.IncompleteReadError, ClientPayloadError):
            raise Refused(400, "the request body ended early") from None
        return None if not raw.strip() else parse_body(raw)

    async def seal(self, store: KafkaStateStore, key: str, tree: Tree) -> Tree:
        """``tree`` with its secrets sealed, unchanged ones keeping their stored bytes."""
        if self.keys is None:  # the server was told to keep secrets as sent
            return tree
        previous = await store.get_tree(key) if stacks.holds_redacted(tree) else None
        stack, stage = _names(store.scope)
        return stacks.seal_record(tree, self.keys, stacks.place(stack, stage, key), previous)

    def open(self, scope: Scope, key: str, tree: Tree) -> Tree:
        stack, stage = _names(scope)
        return stacks.open_record(tree, self.keys, stacks.place(stack, stage, key))


_STACKS: Final = web.AppKey("stacks", Stacks)


def _names(scope: Scope) -> tuple[str, str]:
    found = stacks.stack_of(scope.path)
    assert found is not None
    return found


def _fqn(request: web.Request) -> str:
    # aiohttp decoded the path once; the client encoded the fqn before the path.
    try:
        return unquote(request.match_info["fqn"], errors="strict")
    except UnicodeDecodeError:
        raise InvalidRecordError("the fqn in the URL is not UTF-8 once decoded") from None


def _lease(request: web.Request) -> int | None:
    text = request.match_info.get("lease")
    if text is None:
        return None
    if not text.isdecimal() or len(text) > 19:
        raise Refused(
            400,
            "the lease in /lease/<token>/state/... must be a lease's token (a decimal int, "
            "as evstate run --lock hands it over)",
        )
    return int(text)


def _writes(request: web.Request) -> dict[str, Any]:
    return {"actor": request[PRINCIPAL].name, "lock_token": _lease(request)}


def _json(value: Any) -> web.Response:
    return web.json_response(value)


def _store(backend: Backend, scope: Scope) -> KafkaStateStore:
    return backend.client.store(scope)


# -- handlers ---------------------------------------------------------------------


async def _version(request: web.Request) -> web.StreamResponse:
    return _json({"version": VERSION})


async def _stages_of(request: web.Request, principal: Principal) -> dict[str, list[str]]:
    """Every v2 stack in the view, with its stages the principal may see."""
    backend = await request.app[_STACKS].client_ready()
    await backend.client.catch_up()
    found: dict[str, list[str]] = {}
    for path in backend.client.scopes():
        names = stacks.stack_of(path)
        if names is not None and may_see(principal, path):
            found.setdefault(names[0], []).append(names[1])
    return found


async def _list_stacks(request: web.Request) -> web.StreamResponse:
    return _json(sorted(await _stages_of(request, request[PRINCIPAL])))


async def _list_stages(request: web.Request) -> web.StreamResponse:
    stack = request.match_info["stack"]
    stacks.stage_scope(stack, "_")  # checks the stack's name
    return _json(sorted((await _stages_of(request, request[PRINCIPAL])).get(stack, [])))


async def _list_resources(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, _ = here.place(request, "v2.list", "read")
    backend = await here.client_ready()
    keys = await _store(backend, scope).list()
    return _json([stacks.key_fqn(k) for k in keys if k != stacks.OUTPUT_KEY])


async def _get_state(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, key = here.place(request, "v2.get", "read", fqn=True)
    assert key is not None
    backend = await here.client_ready()
    tree = await _store(backend, scope).get_tree(key)
    return _json(None if tree is None else here.open(scope, key, tree))


async def _set_state(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, key = here.place(request, "v2.set", "write", fqn=True)
    assert key is not None
    record = stacks.check_record(stacks.key_fqn(key), await here.body(request))
    backend = await here.client_ready()
    store = _store(backend, scope)
    await store.set_record(key, await here.seal(store, key, record), **_writes(request))
    return _json(record)


async def _delete_state(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, key = here.place(request, "v2.delete", "write", fqn=True)
    assert key is not None
    backend = await here.client_ready()
    await _store(backend, scope).delete(key, **_writes(request))
    return web.Response(status=204)


async def _replaced(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, _ = here.place(request, "v2.replaced", "read")
    backend = await here.client_ready()
    trees = await _store(backend, scope).all_trees()
    return _json([here.open(scope, k, trees[k]) for k in stacks.replaced(trees)])


async def _get_output(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, _ = here.place(request, "v2.getOutput", "read")
    backend = await here.client_ready()
    tree = await _store(backend, scope).get_tree(stacks.OUTPUT_KEY)
    if tree is None:
        return _json(None)
    return _json(stacks.output_value(here.open(scope, stacks.OUTPUT_KEY, tree)))


async def _set_output(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    scope, _ = here.place(request, "v2.setOutput", "write")
    value = await here.body(request)
    record = stacks.output_record(value)
    backend = await here.client_ready()
    store = _store(backend, scope)
    tree = await here.seal(store, stacks.OUTPUT_KEY, record)
    await store.set_record(stacks.OUTPUT_KEY, tree, **_writes(request))
    return _json(value)


async def _delete_stack(request: web.Request) -> web.StreamResponse:
    here = request.app[_STACKS]
    stack = request.match_info["stack"]
    stage = request.query.get("stage")
    principal = request[PRINCIPAL]
    if stage is not None:
        scopes = [stacks.stage_scope(stack, stage)]
        note_call(request, "v2.deleteStack", scopes[0], None)
        decide(principal, "write", scopes[0].path)
    else:
        whole = stacks.stage_scope(stack, "_")
        note_call(request, "v2.deleteStack", Scope(whole.chain[0]), None)
        decide(principal, "write", whole.chain[0])
        stages = (await _stages_of(request, principal)).get(stack, [])
        scopes = [stacks.stage_scope(stack, s) for s in stages]
    backend = await here.client_ready()
    gate = asyncio.Semaphore(_CONCURRENCY)
    writes = {**_writes(request), "reason": "deleteStack"}

    async def one(store: KafkaStateStore, key: str) -> None:
        async with gate:
            await store.delete(key, **writes)

    for scope in scopes:
        store = _store(backend, scope)
        await asyncio.gather(*(one(store, k) for k in await store.list()))
    return web.Response(status=204)


def load_secret_keys(settings: Settings) -> SecretKeys | None:
    """The secret keys of ``settings``: ``secret_keys``, else the ``secret_key_file``'s;
    None when neither is set.

    Raises:
        ConfigError: the file cannot be read, or the keys are not valid (never echoed).
    """
    if settings.secret_keys:
        return SecretKeys.parse(settings.secret_keys, "EVSTATE_SECRET_KEYS")
    if settings.secret_key_file is None:
        return None
    try:
        text = Path(settings.secret_key_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(
            f"cannot read the secret key file {settings.secret_key_file}: {reason or exc}"
        ) from None
    return SecretKeys.parse(text, f"secret key file {settings.secret_key_file}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, tls: bool, allow: bool) -> None:
    """Refuse to serve Alchemy v2 (whose secrets travel in plaintext) on a non-loopback
    address without TLS, unless ``allow``.

    Raises:
        ConfigError: naming the address and the two ways out.
    """
    if tls or allow or is_loopback(host):
        return
    raise ConfigError(
        f"Alchemy v2 sends secrets in plaintext: serving it on {host} needs TLS (--tls-cert "
        "and --tls-key), or --insecure-http to accept that"
    )


def install(
    app: web.Application,
    backend: Callable[[], Backend],
    *,
    keys: SecretKeys | None,
    max_body: int,
) -> None:
    """Answer Alchemy v2's routes on ``app``, plainly and under ``/lease/{token}``.

    Args:
        app: the application of :func:`evstate.serve.app.create_app`.
        backend: the server's backend, once it exists.
        keys: the keys secrets are sealed with; None keeps them as sent (only when the
            server was told so).
        max_body: the largest body accepted (bytes).
    """
    app[_STACKS] = Stacks(backend, keys, max_body)
    app.router.add_get(VERSION_PATH, _version)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/state/stacks", _list_stacks),
        ("GET", "/state/stacks/{stack}/stages", _list_stages),
        ("GET", _STAGE + "/resources", _list_resources),
        ("GET", _STAGE + "/resources/{fqn}", _get_state),
        ("PUT", _STAGE + "/resources/{fqn}", _set_state),
        ("DELETE", _STAGE + "/resources/{fqn}", _delete_state),
        ("GET", _STAGE + "/replaced-resources", _replaced),
        ("GET", _STAGE + "/output", _get_output),
        ("PUT", _STAGE + "/output", _set_output),
        ("DELETE", "/state/stacks/{stack}", _delete_stack),
    ]
    for prefix in ("", _LEASE):
        for method, path, handler in routes:
            app.router.add_route(method, prefix + path, handler)
