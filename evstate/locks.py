"""Leases on scopes: taking, renewing, releasing and breaking them, for a client.

A lease is decided like every write (:mod:`evstate.writer`, :mod:`evstate.rules`): its
LOCK event is written only if no live lease overlaps the scope when the event takes its
place in the stage's log, and its token is that event's offset. While this client holds
a lease, the engine attaches the token to every write under the scope, and a background
task renews the lease every third of its ttl. A holder that loses its lease (broken,
taken over after it lapsed) finds out at its next renewal or write: :class:`FencedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Generator
from datetime import datetime
from types import TracebackType
from typing import Any

from evstate.engine import Engine
from evstate.errors import FencedError, LockHeldError, ValidationError
from evstate.model import Lease, Scope
from evstate.rules import lockable
from evstate.writer import Intent

__all__ = ["HeldLease", "LockAttempt", "Locks"]

log = logging.getLogger("evstate.locks")

# How often a waiting lock asks again, at most (it also asks when the holder's lease lapses).
_POLL = 0.25


def _path(scope: Scope | str) -> str:
    if isinstance(scope, Scope):
        return scope.path
    if isinstance(scope, str):
        return Scope(*scope.split("/")).path  # validates every name
    raise ValidationError(f"scope must be a Scope or a path, not {type(scope).__name__}")


def _token(token: object) -> int:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ValidationError(f"a lock token is an int >= 0, not {token!r}")
    return token


class HeldLease:
    """A lease this client holds; renewed in the background until released.

    Attributes mirror :class:`~evstate.model.Lease`: ``scope``, ``token``, ``holder``,
    ``info``, ``acquired_at``, ``expires_at`` (the latest renewal's).
    """

    def __init__(self, locks: Locks, lease: Lease, ttl: float) -> None:
        self._locks = locks
        self._lease = lease
        self._ttl = ttl
        self._lost: BaseException | None = None
        self._released = False
        self._renewing = asyncio.create_task(self._renew_loop(), name=f"evstate-renew-{lease}")

    @property
    def lease(self) -> Lease:
        """The lease as of its latest renewal."""
        return self._lease

    @property
    def scope(self) -> str:
        """The locked scope's path."""
        return self._lease.scope

    @property
    def token(self) -> int:
        """The fencing token."""
        return self._lease.token

    @property
    def holder(self) -> str:
        """Who holds it."""
        return self._lease.holder

    @property
    def info(self) -> dict[str, Any]:
        """What the holder shows others."""
        return self._lease.info

    @property
    def acquired_at(self) -> datetime:
        """When it was taken."""
        return self._lease.acquired_at

    @property
    def expires_at(self) -> datetime:
        """When it lapses unless renewed."""
        return self._lease.expires_at

    @property
    def held(self) -> bool:
        """False once released, or once a renewal found it broken or taken over."""
        return not self._released and self._lost is None

    async def renew(self) -> None:
        """Extend the lease by its ttl from now (the background task does this by itself).

        Raises:
            FencedError: the lease was broken or taken over; nothing was written.
        """
        if self._lost is not None:
            raise self._lost
        try:
            outcome = await self._locks.engine.write(
                self._locks.intent("RENEW", self.scope, token=self.token, ttl=self._ttl)
            )
        except FencedError as exc:
            self._lose(exc)
            raise
        if outcome.lease is not None:
            self._lease = outcome.lease

    async def release(self) -> None:
        """Release the lease (an UNLOCK event). Idempotent.

        Raises:
            FencedError: the lease had been broken or taken over before; nothing written.
        """
        if self._released:
            return
        self._released = True
        self._locks.forget(self)
        self._renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewing
        self._locks.engine.unhold(self._lease)
        if self._lost is not None:
            raise self._lost
        await self._locks.engine.write(self._locks.intent("UNLOCK", self.scope, token=self.token))

    def _lose(self, exc: BaseException) -> None:
        self._lost = exc
        self._locks.engine.unhold(self._lease)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self.renew()
            except FencedError:
                log.warning("lost the lease %s on %s: %s", self.token, self.scope, self._lost)
                return
            except Exception as exc:  # transient: the next tick tries again
                log.warning("renewing the lease %s on %s failed: %s", self.token, self.scope, exc)

    async def __aenter__(self) -> HeldLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"HeldLease({self.scope!r}, token={self.token}, holder={self.holder!r})"


class LockAttempt:
    """``client.lock(...)``: await it for a :class:`HeldLease`, or use ``async with``."""

    def __init__(
        self, locks: Locks, path: str, ttl: float, wait: float, info: dict[str, Any] | None
    ) -> None:
        self._locks = locks
        self._path = path
        self._ttl = ttl
        self._wait = wait
        self._info = info
        self._held: HeldLease | None = None

    def __await__(self) -> Generator[Any, None, HeldLease]:
        return self._locks.acquire(self._path, self._ttl, self._wait, self._info).__await__()

    async def __aenter__(self) -> HeldLease:
        self._held = await self
        return self._held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held is not None:
            await self._held.release()


class Locks:
    """A client's side of leases; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: set[HeldLease] = set()

    async def release_all(self) -> None:
        """Release every lease still held (the client is closing); failures are logged."""
        held, self._held = list(self._held), set()
        for lease in held:
            try:
                await lease.release()
            except Exception as exc:
                log.warning(
                    "could not release the lease %s on %s: %s", lease.token, lease.scope, exc
                )

    def forget(self, lease: HeldLease) -> None:
        """``lease`` is released: no longer this client's to release at close."""
        self._held.discard(lease)

    def intent(
        self,
        op: Any,
        path: str,
        *,
        token: int | None = None,
        ttl: float | None = None,
        info: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> Intent:
        """The intent of a lock event on ``path``, by ``actor`` (default: the client's)."""
        return Intent(
            op=op,
            scope=Scope(*path.split("/")),
            key="",
            actor=actor or self.engine.settings.actor,
            lock_token=token,
            ttl=ttl,
            info=info,
        )

    def lock(
        self,
        scope: Scope | str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        info: dict[str, Any] | None = None,
    ) -> LockAttempt:
        """See :meth:`evstate.client.EvstateClient.lock`."""
        path = _path(scope)
        lockable(path)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.5 <= ttl <= 86400:
            raise ValidationError(f"ttl must be seconds between 0.5 and 86400, not {ttl!r}")
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
            raise ValidationError(f"wait must be seconds >= 0, not {wait!r}")
        if info is not None and not isinstance(info, dict):
            raise ValidationError(f"info must be a dict, not {type(info).__name__}")
        return LockAttempt(self, path, float(ttl), float(wait), info)

    async def acquire(
        self, path: str, ttl: float, wait: float, info: dict[str, Any] | None
    ) -> HeldLease:
        """Take the lease on ``path``, asking again until ``wait`` seconds have passed.

        Raises:
            LockHeldError: still held by someone else after ``wait``.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                outcome = await self.engine.write(self.intent("LOCK", path, ttl=ttl, info=info))
            except LockHeldError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                lapses = exc.expires_at.timestamp() - time.time()
                await asyncio.sleep(max(0.01, min(left, _POLL, max(lapses, 0.0) + 0.01)))
                continue
            assert outcome.lease is not None
            self.engine.hold(outcome.lease)
            held = HeldLease(self, outcome.lease, ttl)
            self._held.add(held)
            return held

    async def take(
        self, scope: Scope | str, ttl: float, info: dict[str, Any] | None, actor: str | None
    ) -> Lease:
        """Take a lease for someone else (``evstate serve``): no renewal, no token attached.

        Raises:
            LockHeldError: held by someone else.
        """
        self.lock(scope, ttl=ttl, info=info)  # validates
        outcome = await self.engine.write(
            self.intent("LOCK", _path(scope), ttl=ttl, info=info, actor=actor)
        )
        assert outcome.lease is not None
        return outcome.lease

    async def renew_for(
        self, scope: Scope | str, token: int, ttl: float, actor: str | None = None
    ) -> Lease:
        """Renew a lease taken with :meth:`take`.

        Raises:
            FencedError: it was broken or taken over.
        """
        self.lock(scope, ttl=ttl)  # validates
        outcome = await self.engine.write(
            self.intent("RENEW", _path(scope), token=_token(token), ttl=ttl, actor=actor)
        )
        assert outcome.lease is not None
        return outcome.lease

    async def release_for(self, scope: Scope | str, token: int, actor: str | None = None) -> None:
        """Release a lease taken with :meth:`take`.

        Raises:
            FencedError: it was broken or taken over.
        """
        await self.engine.write(
            self.intent("UNLOCK", _path(scope), token=_token(token), actor=actor)
        )

    async def break_lock(self, scope: Scope | str, token: int, actor: str | None = None) -> None:
        """End the lease ``token`` on ``scope``, whoever holds it (a BREAK event).

        Raises:
            NoSuchLeaseError: no lease with that token is on the scope.
        """
        await self.engine.write(
            self.intent("BREAK", _path(scope), token=_token(token), actor=actor)
        )

    async def live(self, scope: Scope | str | None = None) -> list[Lease]:
        """Live leases: all, or those on ``scope``, covering it or nested in it."""
        if scope is None:
            await self.engine.catch_up()
            path = None
        else:
            path = _path(scope)
            await self.engine.consistent(Scope(*path.split("/")), "strong")
        now = time.time()
        return sorted(
            (lease for lease in self.engine.leases(path) if lease.expires_at.timestamp() > now),
            key=lambda lease: lease.scope,
        )
