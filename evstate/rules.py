"""The write rules: locks, compare-and-set and idempotency, decided in log order.

Pure functions, no I/O. The writer calls them for each event just before it is sent,
while it holds its partition's transactional ids, against a :class:`Ledger` that holds
everything committed to the partition before (the view caught up to the end, plus the
writer's own writes since). Kafka fences any other writer that could have slipped a
record in between, so what these functions decide is what the log's order says; see
``docs/design.md`` (Locks and compare-and-set).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from evstate.errors import (
    ConflictError,
    FencedError,
    LockHeldError,
    NoSuchLeaseError,
    ValidationError,
)
from evstate.model import Lease, Position

__all__ = [
    "Ledger",
    "check_lock",
    "check_release",
    "check_version",
    "check_write",
    "lockable",
]


class Ledger(Protocol):
    """What the rules read: the partition as of just before the event being decided."""

    def version(self, record_key: bytes) -> int:
        """The key's current version; 0 when it has no state."""
        ...

    def leases(self, stage: str) -> Iterable[Lease]:
        """Every lease recorded in ``stage`` (live or lapsed)."""
        ...

    def written(self, partition: int, idempotency_key: str) -> Position | None:
        """Where a write with this idempotency key was committed in ``partition``, if one was."""
        ...


def lockable(path: str) -> None:
    """Refuse a lock on a scope that spans stages.

    Raises:
        ValidationError: ``path`` has one name.
    """
    if "/" not in path:
        raise ValidationError(
            f"cannot lock {path!r}: a lock is taken on a stage (app/stage) or a scope "
            "nested in one; a one-name scope spans every stage of the app"
        )


def check_write(
    path: str, token: int | None, leases: Iterable[Lease], now: datetime, what: str
) -> None:
    """Refuse a write into ``path`` that a lease forbids.

    A live lease covering ``path`` (on it or on a scope it is nested in) admits only
    writes carrying its token. A write carrying a token needs a covering lease with that
    token, live or lapsed but not yet taken over, broken or released.

    Raises:
        LockHeldError: another's live lease covers ``path`` and the write has no token.
        FencedError: the write's token is not (any more) a covering lease's.
    """
    covering = [lease for lease in leases if lease.covers(path)]
    for lease in covering:
        if lease.token != token and lease.live(now):
            if token is None:
                raise _held(lease, path, what)
            raise FencedError(
                f"the lease {token} on {path} is no longer held: {lease.holder} holds "
                f"{lease.scope} with token {lease.token}; {what} refused, nothing was written",
                scope=path,
                token=token,
            )
    if token is not None and not any(lease.token == token for lease in covering):
        raise FencedError(
            f"the lease {token} covering {path} is no longer held (released, broken or "
            f"taken over); {what} refused, nothing was written",
            scope=path,
            token=token,
        )


def check_lock(path: str, leases: Iterable[Lease], now: datetime) -> None:
    """Refuse a lock on ``path`` that would overlap a live lease.

    Raises:
        ValidationError: ``path`` spans stages.
        LockHeldError: a live lease is on ``path``, on a scope it is nested in, or on one
            nested in it.
    """
    lockable(path)
    for lease in leases:
        if lease.overlaps(path) and lease.live(now):
            raise _held(lease, path, "lock")


def check_release(path: str, token: int, leases: Iterable[Lease], what: str) -> Lease:
    """The lease on exactly ``path`` with ``token``, for a renewal, release or break.

    Raises:
        FencedError: (renew, unlock) no such lease any more: it was broken or taken over.
        NoSuchLeaseError: (break) no such lease.
    """
    for lease in leases:
        if lease.scope == path and lease.token == token:
            return lease
    current = [lease for lease in leases if lease.scope == path]
    now_held = f"; the lease there now is {current[0].token}" if current else ""
    if what == "break":
        raise NoSuchLeaseError(
            f"no lease {token} on {path} to break{now_held}; nothing was written",
            scope=path,
            token=token,
        )
    raise FencedError(
        f"the lease {token} on {path} is no longer held (broken, released or taken "
        f"over){now_held}; {what} refused, nothing was written",
        scope=path,
        token=token,
    )


def check_version(path: str, key: str, expected: int | None, actual: int) -> None:
    """Refuse a compare-and-set write whose expected version is not the key's.

    Raises:
        ConflictError: ``expected`` is given and differs from ``actual``.
    """
    if expected is not None and expected != actual:
        raise ConflictError(scope=path, key=key, expected=expected, actual=actual)


def _held(lease: Lease, path: str, what: str) -> LockHeldError:
    return LockHeldError(
        scope=lease.scope,
        holder=lease.holder,
        info=lease.info,
        token=lease.token,
        expires_at=lease.expires_at,
        wanted=path,
        action=what,
    )
