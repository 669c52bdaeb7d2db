"""Who is calling ``evstate serve``: the principals file, kept current, and the middleware
that puts the caller's :class:`~evstate.principals.Principal` on each request.

The grant check itself is pure (:func:`evstate.principals.decide`); which permission each
method needs is the protocol's (:data:`evstate.serve.protocol.PERMISSIONS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from evstate.errors import ConfigError
from evstate.principals import Principal, Principals, parse_principals
from evstate.serve import metrics as serve_metrics
from evstate.serve.protocol import Refused

log = logging.getLogger(__name__)

OPEN_PATHS: Final = frozenset({"/version"})
"""Paths answered without a token: Alchemy v2's version probe (:mod:`evstate.serve.stacks`)."""

POLL_INTERVAL: Final = 1.0
"""Seconds between looks at the principals file for a change."""

PRINCIPAL: Final = web.RequestKey("principal", Principal)
"""The authenticated caller of a request (set by :func:`authenticate`)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Signature = tuple[int, int, int, int]


def _signature(path: Path) -> _Signature:
    st = path.stat()
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def load_file(path: str | os.PathLike[str]) -> Principals:
    """Read and check a principals file.

    Raises:
        ConfigError: unreadable, or not a valid principals file (the reason, never a token).
    """
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read principals file {path}: {exc.strerror or exc}") from None
    return parse_principals(text, f"principals file {path}")


class Gate:
    """The principals in force: one token's ``default``, or a file's, re-read when it
    changes (looked at every ``poll_interval`` seconds) or on :meth:`reload`.

    A file that fails to read or check keeps the principals before it in force, and the
    log says why; requests in flight are never dropped (the swap is one assignment).
    """

    def __init__(self, principals: Principals, path: Path | None = None) -> None:
        self.principals = principals
        self.path = path
        self._seen: _Signature | None = None
        if path is not None:
            with contextlib.suppress(OSError):
                self._seen = _signature(path)

    @classmethod
    def open(cls, *, token: str | None, auth_file: str | None) -> Gate:
        """The gate of a server: from ``auth_file`` when given, else the single ``token``.

        Raises:
            ConfigError: neither is given, or the file is not a valid principals file.
        """
        if auth_file is not None:
            path = Path(auth_file)
            gate = cls(load_file(path), path)
            log.info(
                "evstate serve: %d principals from %s%s",
                len(gate.principals.principals),
                path,
                " (EVSTATE_TOKEN is not used with a principals file)" if token else "",
            )
            return gate
        if not token:
            raise ConfigError(
                "evstate serve needs a bearer token or a principals file: set EVSTATE_TOKEN "
                "(or --token), or EVSTATE_AUTH_FILE (or --auth)"
            )
        return cls(Principals.single(token))

    def reload(self) -> bool:
        """Read the file again now. True when new principals are in force."""
        if self.path is None:
            return False
        try:
            signature = _signature(self.path)
            principals = load_file(self.path)
        except (OSError, ConfigError) as exc:
            log.error("evstate serve: keeping the principals in force: %s", exc)
            return False
        self._seen = signature
        self.principals = principals
        log.info(
            "evstate serve: %d principals from %s in force", len(principals.principals), self.path
        )
        return True

    def changed(self) -> bool:
        """Whether the file looks different from the one last read (or tried)."""
        if self.path is None:
            return False
        try:
            signature = _signature(self.path)
        except OSError:
            signature = None
        if signature == self._seen:
            return False
        if signature is None:
            log.error(
                "evstate serve: principals file %s is gone; keeping those in force", self.path
            )
        self._seen = signature
        return signature is not None

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Re-read the file whenever it changes, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload()


GATE: Final = web.AppKey("gate", Gate)
_OWN_SIGN_IN: Final = web.AppKey("own_sign_in", tuple[str, ...])


def install(
    app: web.Application,
    gate: Gate,
    *,
    poll_interval: float = POLL_INTERVAL,
    own_sign_in: tuple[str, ...] = (),
) -> None:
    """Put ``gate`` on ``app`` and watch its file while the app runs.

    Args:
        app: the server's application.
        gate: the principals in force.
        poll_interval: seconds between looks at the principals file.
        own_sign_in: path prefixes (``/ui``) of parts that authenticate their requests
            themselves, through the same gate (the console's sign-in and sessions):
            :func:`authenticate` lets them by without a bearer token.
    """
    app[GATE] = gate
    app[_OWN_SIGN_IN] = own_sign_in

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(gate.watch(poll_interval), name="evstate-serve-auth")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    if gate.path is not None:
        app.cleanup_ctx.append(watching)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless ``Authorization: Bearer <token>`` names a principal; else put it on the
    request (:data:`PRINCIPAL`). ``GET /metrics`` checks its own token; the parts given as
    ``own_sign_in`` to :func:`install` (the console) sign in on their own, with the gate;
    :data:`OPEN_PATHS` need none."""
    if (
        request.path == serve_metrics.PATH
        or request.path in OPEN_PATHS
        or any(
            request.path == p or request.path.startswith(p + "/")
            for p in request.config_dict.get(_OWN_SIGN_IN, ())
        )
    ):
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding back the same
    # way gives the bytes sent, so a non-UTF-8 token is simply an unknown one (401).
    principal = (
        request.app[GATE].principals.authenticate(given.strip().encode("utf-8", "surrogateescape"))
        if scheme.lower() == "bearer"
        else None
    )
    if principal is None:
        raise Refused(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    request[PRINCIPAL] = principal
    return await handler(request)
