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
``version``    ``[id]``     the key's version (0: no state), for ``expectedVersion``
``lock``       ``[]``       a lease on the chain's scope: ``{"scope", "holder", "info",
                            "acquiredAt", "expiresAt", "token"}`` (times in epoch ms)
``renew``      ``[token]``  the lease, extended by ``ttl`` from now
``unlock``     ``[token]``  ``null`` (the lease is released)
``locks``      ``[]``       live leases on the scope, covering it or nested in it
``breakLock``  ``[token]``  ``null`` (someone else's lease is broken: admin only)
``accessLog``  ``[]``       the newest access-log entries on the scope: admin only
=============  ===========  ==========================================================

Each method needs a permission on the chain's scope (:data:`PERMISSIONS`; see
:mod:`evstate.principals`): the reads ``read``, ``init``/``deinit``/``set``/``delete``
``write``, ``lock``/``renew``/``unlock`` ``lock``, ``breakLock`` ``admin``. ``listScopes``
needs none on the scope itself and names only the nested scopes the caller may read (or
holds a grant inside). A refusal is 403, naming the principal, the permission and the
scope; nothing is read or written. Every event written carries the principal as its
actor; ``context`` may add ``reason``, ``correlationId`` and ``onBehalfOf`` (the end user
the principal acted for, recorded as such, never as the actor).

Some methods take one more param, an object of options (``OPTIONS``): ``set`` and
``delete`` ``{"expectedVersion", "idempotencyKey"}`` (compare-and-set; a retry with the
same key writes nothing and answers the first attempt's position), ``lock`` ``{"ttl",
"info"}`` (seconds, default 30; what others see of the holder) and ``renew`` ``{"ttl"}``.

States travel as Alchemy serialized them (secrets encrypted by the client), and are stored
and answered as they are: the server holds no password. ``context`` may also carry
``consistency`` (``session``, the default, ``strong`` or ``eventual``) and ``minPosition``
(a token from ``set``) for reads, as the Python API's keyword arguments, and ``lockToken``
(the token of a lease the caller holds, from ``lock`` or ``evstate run --lock``) for writes
into a locked scope (``set``, ``delete``, ``deinit``).

``HEAD /`` answers 200 once the server is connected to Kafka, its topics exist (it
creates them at start, as ``init`` would) and its view holds everything committed before
it started; 503 before, saying which. ``GET /metrics`` serves the Prometheus metrics
(:mod:`evstate.serve.metrics`; no token unless a metrics token is set). Requests are
served once it is connected: each waits until the view has caught up with the partition
it needs (``session`` consistency). Every other request needs ``Authorization: Bearer
<token>`` naming a principal (:mod:`evstate.serve.auth`). Statuses: 400 bad JSON, method
or params (a key or scope name evstate refuses, a marker that would not decode, a
``minPosition`` in a partition that does not exist, a request aiohttp cannot parse, such
as a header over 8 KiB: never echoed); 401 token missing or wrong (a token that is not
UTF-8 included); 403 no grant for the method on the scope (nothing read or written;
``code``, ``principal``, ``permission``, ``scope``); 404/405 other paths and verbs; 409
refused by a lock or a compare-and-set (nothing written; the answer also carries
``code`` and the error's data, see :func:`details_of`); 413 body over the limit (or an
event over the broker's); 503 Kafka unreachable, a write not acknowledged, a read not
consistent in time (all retriable); 500 anything else, with no stack trace (that goes to
the server's log). A connection that does not send its headers within ``header_timeout``
is closed, and the access log never holds a query string.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from evstate import access
from evstate.client import EvstateClient
from evstate.errors import (
    ClosedError,
    ConfigError,
    ConflictError,
    ConsistencyTimeout,
    EventTooLargeError,
    EvstateError,
    FencedError,
    ForbiddenError,
    KafkaError,
    LockError,
    LockHeldError,
    MalformedEventError,
    NoSuchLeaseError,
    SealedSecretError,
    SerdeError,
    TopicMismatchError,
    ValidationError,
    ViewError,
)
from evstate.model import CONSISTENCIES, Consistency, Position, Scope
from evstate.names import printable
from evstate.principals import Permission, Principal, decide, may_see
from evstate.stacks import STACK_PREFIX, is_reserved
from evstate.store import KafkaStateStore

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8787
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
"""Largest request body accepted (bytes); larger ones are answered 413."""
HEADER_TIMEOUT: Final = 10.0
"""Seconds a connection may take to send a request's line and headers (or stay idle)."""
# How long run_server waits for the client's first attempt to open before listening.
SETTLE_TIMEOUT: Final = 3.0
# DELETEs of a deinit in flight at once, as KafkaStateStore.deinit.
_DEINIT_CONCURRENCY: Final = 64

DEFAULT_TTL: Final = 30.0
"""Seconds a lease taken with ``lock`` lasts unless renewed, when ``ttl`` is not given."""

_STR: Final = "a string"
_IDS: Final = "a list of strings"
_STATE: Final = "a state object"
_LEASE: Final = "a lock token (an int >= 0)"
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
    "version": (_STR,),
    "lock": (),
    "renew": (_LEASE,),
    "unlock": (_LEASE,),
    "locks": (),
    "breakLock": (_LEASE,),
    "accessLog": (),
}

# method -> the permission it needs on the chain's scope (None: listScopes, filtered).
PERMISSIONS: Final[dict[str, Permission | None]] = {
    "init": "write",
    "deinit": "write",
    "list": "read",
    "count": "read",
    "get": "read",
    "getBatch": "read",
    "all": "read",
    "set": "write",
    "delete": "write",
    "listScopes": None,
    "version": "read",
    "lock": "lock",
    "renew": "lock",
    "unlock": "lock",
    "locks": "read",
    "breakLock": "admin",
    "accessLog": "admin",
}
# context fields a caller may add to what its writes record, and their limit in chars.
_NOTES: Final = {"reason": 1000, "correlationId": 200, "onBehalfOf": 200}

_WRITE_OPTIONS: Final = ("expectedVersion", "idempotencyKey")
# method -> the names its optional last param (an object) may hold
OPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "set": _WRITE_OPTIONS,
    "delete": _WRITE_OPTIONS,
    "lock": ("ttl", "info"),
    "renew": ("ttl",),
    "accessLog": ("since", "principal", "limit"),  # checked by access.query
}

# First match wins, so subclasses come before their bases.
_STATUSES: Final[tuple[tuple[type[EvstateError], int], ...]] = (
    (EventTooLargeError, 413),
    (ValidationError, 400),
    (ConflictError, 409),
    (ForbiddenError, 403),
    (LockError, 409),  # LockHeldError, FencedError, NoSuchLeaseError
    (MalformedEventError, 500),
    (SealedSecretError, 500),
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


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def details_of(exc: EvstateError) -> dict[str, Any]:
    """What a refusal's answer carries beside its message, for a client to act on.

    ``code`` names the refusal; a lock held by someone else (``lockHeld``) adds the
    lease's ``scope``, ``holder``, ``info``, ``token`` and ``expiresAt`` (epoch ms), a
    lost lease (``fenced``) or a missing one (``noSuchLease``) its ``scope`` and
    ``token``, a compare-and-set (``conflict``) ``scope``, ``key``, ``expected`` and
    ``actual``. Other errors carry nothing more.
    """
    match exc:
        case LockHeldError():
            return {
                "code": "lockHeld",
                "scope": exc.scope,
                "holder": exc.holder,
                "info": exc.info,
                "token": exc.token,
                "expiresAt": _ms(exc.expires_at),
            }
        case FencedError():
            return {"code": "fenced", "scope": exc.scope, "token": exc.token}
        case NoSuchLeaseError():
            return {"code": "noSuchLease", "scope": exc.scope, "token": exc.token}
        case ConflictError():
            return {
                "code": "conflict",
                "scope": exc.scope,
                "key": exc.key,
                "expected": exc.expected,
                "actual": exc.actual,
            }
        case ForbiddenError():
            return {
                "code": "forbidden",
                "principal": exc.principal,
                "permission": exc.permission,
                "scope": exc.scope,
            }
    return {}


def envelope(
    status: int,
    *,
    result: Any = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"success": error is None, "status": status}
    if error is None:
        body["result"] = result
    else:
        body["error"] = error
        body.update(details or {})
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        response.headers["Retry-After"] = "1"
    return response


class Refused(Exception):
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
    lock_token: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The key (or lease token) the call is about, if any (for the access log)."""
        first = self.params[0] if self.params else None
        return first if isinstance(first, str) else None if first is None else str(first)


CALL: Final = web.RequestKey("call", _Call)
"""The parsed call of a ``POST /`` (for the access log), once it parsed."""


def note_call(request: web.Request, method: str, scope: Scope, key: str | None) -> None:
    """Say what a request of another protocol (Alchemy v2's routes) is about, for the
    access log, as :data:`CALL` does for ``POST /``."""
    request[CALL] = _Call(
        method=method,
        params=[] if key is None else [key],
        scope=scope,
        consistency="session",
        min_position=None,
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Refused(400, f"the body is not JSON: {exc}") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_param(method: str, index: int, kind: str, value: Any) -> None:
    ok = (
        isinstance(value, str)
        if kind == _STR
        else isinstance(value, list) and all(isinstance(v, str) for v in value)
        if kind == _IDS
        else _is_count(value)
        if kind == _LEASE
        else isinstance(value, dict)
    )
    if not ok:
        raise Refused(
            400, f"param {index} of {method!r} must be {kind}, got {type(value).__name__}"
        )


def _check_options(method: str, options: Any) -> dict[str, Any]:
    names = OPTIONS[method]
    if not isinstance(options, dict):
        raise Refused(
            400,
            f"the last param of {method!r} must be an object of options "
            f"({', '.join(names)}), got {type(options).__name__}",
        )
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise Refused(
            400,
            f"unknown option {json.dumps(unknown[0])[:100]} of {method!r}; expected "
            f"{', '.join(names)}",
        )
    version = options.get("expectedVersion")
    if version is not None and not _is_count(version):
        raise Refused(
            400,
            f"option expectedVersion of {method!r} must be an int >= 0 (0: the key must "
            f"have no state), got {json.dumps(version)[:100]}",
        )
    key = options.get("idempotencyKey")
    if key is not None and not isinstance(key, str):
        raise Refused(
            400,
            f"option idempotencyKey of {method!r} must be a string (e.g. a uuid), got "
            f"{type(key).__name__}",
        )
    ttl = options.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise Refused(400, f"option ttl of {method!r} must be seconds (a number), got {ttl!r}")
    info = options.get("info")
    if info is not None and not isinstance(info, dict):
        raise Refused(
            400, f"option info of {method!r} must be an object, got {type(info).__name__}"
        )
    return options


def _split_params(method: str, params: Any) -> tuple[list[Any], dict[str, Any]]:
    """The positional params and the options object (empty when not given)."""
    kinds = METHODS[method]
    optional = method in OPTIONS
    if (
        not isinstance(params, list)
        or len(params) < len(kinds)
        or len(params) > len(kinds) + optional
    ):
        shape = ", ".join(kinds) + (f"{', ' if kinds else ''}{{options}}?" if optional else "")
        raise Refused(400, f"{method!r} takes params [{shape}], got {json.dumps(params)[:200]}")
    for index, (kind, value) in enumerate(zip(kinds, params, strict=False)):
        _check_param(method, index, kind, value)
    if len(params) > len(kinds):
        return params[: len(kinds)], _check_options(method, params[-1])
    return params, {}


def parse_call(payload: Any) -> _Call:
    if not isinstance(payload, dict):
        raise Refused(400, 'the body must be a JSON object {"method", "params", "context"}')
    method = payload.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise Refused(400, f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    params, options = _split_params(method, payload.get("params", []))
    context = payload.get("context")
    if not isinstance(context, dict):
        raise Refused(400, 'the body needs "context": {"chain": [...]}')
    chain = context.get("chain")
    if not isinstance(chain, list) or not chain:
        raise Refused(400, "context.chain must be a non-empty list of scope names")
    if is_reserved(chain):
        raise Refused(
            400,
            f"scope names starting with {STACK_PREFIX!r} are Alchemy v2 stacks "
            "(GET/PUT /state/stacks/...); a v1 chain may not start with one",
        )
    consistency = context.get("consistency", "session")
    if consistency not in CONSISTENCIES:
        raise Refused(400, f"context.consistency must be one of {', '.join(CONSISTENCIES)}")
    token = context.get("minPosition")
    if token is not None and not isinstance(token, str):
        raise Refused(400, "context.minPosition must be a position token 'partition:offset'")
    lock_token = context.get("lockToken")
    if lock_token is not None and not _is_count(lock_token):
        raise Refused(
            400,
            "context.lockToken must be the token of a lease (an int >= 0, as `lock` answers "
            f"it or EVSTATE_LOCK_TOKEN holds it), got {json.dumps(lock_token)[:100]}",
        )
    notes = {}
    for name, limit in _NOTES.items():
        value = context.get(name)
        if value is None:
            continue
        if (
            not isinstance(value, str)
            or not value
            or len(value) > limit
            or printable(value) != value
        ):
            raise Refused(
                400,
                f"context.{name} must be a non-empty string of at most {limit} characters "
                "without control characters",
            )
        notes[name] = value
    return _Call(
        method=method,
        params=params,
        scope=Scope(*chain),  # InvalidScopeError (400) for a bad name
        consistency=consistency,
        min_position=None if token is None else Position.parse(token),
        lock_token=lock_token,
        options=options,
        notes=notes,
    )


def _child_scopes(client: EvstateClient, scope: Scope, principal: Principal) -> list[str]:
    # Paths join names with '/', so a name holding '/' reads as two levels here.
    prefix = scope.path + "/"
    names = {p[len(prefix) :].split("/")[0] for p in client.scopes() if p.startswith(prefix)}
    return sorted(n for n in names if may_see(principal, prefix + n))


async def _deinit(store: KafkaStateStore, writes: dict[str, Any]) -> None:
    # KafkaStateStore.deinit records the client's actor and takes no lock token: the same
    # DELETEs, each carrying the principal (and the token, if any).
    gate = asyncio.Semaphore(_DEINIT_CONCURRENCY)
    notes = {**writes, "reason": writes.get("reason") or "deinit"}

    async def one(key: str) -> None:
        async with gate:
            await store.delete(key, **notes)

    await asyncio.gather(*(one(k) for k in await store.list()))


def authorize(principal: Principal, call: _Call) -> None:
    """Refuse (:class:`ForbiddenError`, 403) a call the principal has no grant for.

    ``listScopes`` is let through when the principal may see the scope (it may read it, or
    holds a grant nested in it); its answer is filtered by :func:`_child_scopes`.
    """
    permission = PERMISSIONS[call.method]
    if permission is not None:
        decide(principal, permission, call.scope.path)
    elif not may_see(principal, call.scope.path):
        raise ForbiddenError(principal.name, "read", call.scope.path)


async def dispatch(client: EvstateClient, call: _Call, principal: Principal) -> Any:
    """Run ``call`` for ``principal``: authorized first, then its writes recorded with the
    principal as their actor.

    Raises:
        ForbiddenError: the principal has no grant for it; nothing was read or written.
        EvstateError: what the store raised.
    """
    authorize(principal, call)
    store: KafkaStateStore = client.store(call.scope)
    actor = principal.name
    reads: dict[str, Any] = {"consistency": call.consistency, "min_position": call.min_position}
    writes: dict[str, Any] = {
        "lock_token": call.lock_token,
        "actor": actor,
        "reason": call.notes.get("reason"),
        "correlation_id": call.notes.get("correlationId"),
        "on_behalf_of": call.notes.get("onBehalfOf"),
    }
    once: dict[str, Any] = {
        **writes,
        "expected_version": call.options.get("expectedVersion"),
        "idempotency_key": call.options.get("idempotencyKey"),
    }
    ttl = call.options.get("ttl")
    ttl = DEFAULT_TTL if ttl is None else ttl
    match call.method, call.params:
        case "init", []:
            await store.init()
            return None
        case "deinit", []:
            await _deinit(store, writes)
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
            return (await store.set_tree(key, tree, **once)).token
        case "delete", [key]:
            return (await store.delete(key, **once)).token
        case "version", [key]:
            return await store.version(key, consistency=call.consistency)
        case "lock", []:
            info = call.options.get("info")
            lease = await client.take_lease(call.scope, ttl=ttl, info=info, actor=actor)
            return lease.to_json()
        case "renew", [token]:
            return (await client.renew_lease(call.scope, token, ttl=ttl, actor=actor)).to_json()
        case "unlock", [token]:
            await client.release_lease(call.scope, token, actor=actor)
            return None
        case "breakLock", [token]:
            await client.break_lock(call.scope, token, actor=actor)
            return None
        case "accessLog", []:
            try:
                return await access.query(client.settings, call.scope.path, call.options)
            except access.NoAccessLogError as exc:
                raise Refused(404, str(exc)) from None
        case "locks", []:
            return [lease.to_json() for lease in await client.locks(call.scope)]
        case "listScopes", []:
            # Nested scopes live in other partitions: catch the whole view up (unless
            # the caller asked for eventual) rather than this scope's partition only.
            await client.consistent(call.scope, call.consistency, call.min_position)
            if call.consistency != "eventual":
                await client.catch_up()
            return _child_scopes(client, call.scope, principal)
    raise AssertionError(f"unhandled method {call.method}")  # pragma: no cover
