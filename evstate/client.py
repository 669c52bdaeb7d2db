"""What a program uses: one :class:`EvstateClient` per process, composing the engine, the
stores of every scope, watchers and the history.

:class:`~evstate.engine.Engine` does the work (Kafka, the view, waiting); stores
(:class:`~evstate.store.KafkaStateStore`) are thin and share it; watchers
(:class:`~evstate.watch.Watcher`) have consumers of their own and are closed with the
client; history, state-as-of and diffs read the history topic (:mod:`evstate.history`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from evstate import keys
from evstate.applier import Applier, Progress
from evstate.config import Settings
from evstate.engine import Engine
from evstate.errors import ClosedError, ValidationError
from evstate.history import Diff, Point, diff_trees, read_events, replay_trees
from evstate.locks import HeldLease, LockAttempt, Locks
from evstate.model import (
    CONSISTENCIES,
    ChangeEvent,
    Consistency,
    Lease,
    Lifecycle,
    Position,
    Scope,
    State,
    Tree,
)
from evstate.serde import deserialize_state
from evstate.stacks import is_reserved
from evstate.store import KafkaStateStore
from evstate.verify import VerifyReport, verify
from evstate.view import View
from evstate.watch import Start, Watcher

__all__ = [
    "CONSISTENCIES",
    "ClientState",
    "Consistency",
    "EvstateClient",
    "HeldLease",
    "StoreFactory",
    "store_factory",
]

ClientState = Lifecycle
"""Where a client is in its life (UNOPENED, OPEN, CLOSED)."""


class EvstateClient:
    """A process's connection to evstate: one engine (producers, consumer, view), shared
    by every scope's store.

    Use as ``async with EvstateClient(bootstrap_servers=..., view_dir=...) as client``;
    ``client.store(scope)`` gives the store of a scope. Operations start the client on
    first use, so factories may hand out stores before anything is awaited.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        """Args:
        settings: complete settings; otherwise built by ``Settings.from_env(**overrides)``.
        **overrides: any :class:`~evstate.config.Settings` field.

        Raises:
            ConfigError: a setting is invalid.
        """
        self.settings = settings if settings is not None else Settings.from_env(**overrides)
        self.engine = Engine(self.settings)
        self._locks = Locks(self.engine)
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> EvstateClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def state(self) -> Lifecycle:
        """UNOPENED, OPEN or CLOSED."""
        return self.engine.state

    async def start(self) -> None:
        """Open the view and connect to Kafka; a no-op when already open.

        Raises:
            ViewLockedError: another process uses ``view_dir``.
            BrokerUnavailableError: Kafka did not answer within ``connect_timeout``.
            ClosedError: the client was closed.
        """
        await self.engine.start()

    async def close(self) -> None:
        """Close the watchers it made, stop applying, disconnect, close the view. Idempotent.

        A watcher closed here commits what its loop handled and leaves its group, as
        leaving its ``async with`` would.
        """
        watchers = list(self._watchers)
        self._watchers.clear()
        try:
            if self.engine.state is Lifecycle.OPEN:
                await self._locks.release_all()
            await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
        finally:
            await self.engine.close()

    # -- locks --------------------------------------------------------------------

    def lock(
        self,
        scope: Scope | str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        info: dict[str, Any] | None = None,
    ) -> LockAttempt:
        """Take a lease on ``scope`` and every scope nested in it.

        ``async with client.lock(scope) as lease:``, or ``lease = await client.lock(...)``
        then ``await lease.release()``. While held, the lease is renewed every ``ttl / 3``
        seconds and its token is attached to this client's writes under the scope; any
        other write there is refused (``LockHeldError``). A killed holder's lease lapses
        ``ttl`` seconds after its last renewal.

        Args:
            scope: a stage (``app/stage``) or a scope nested in one, as a Scope or a path.
            ttl: seconds the lease lasts without renewal (0.5 to 86400).
            wait: seconds to keep asking while someone else holds it.
            info: what the holder wants others to see (command, CI job URL, pid...).

        Raises:
            LockHeldError: held by someone else (after ``wait``); names the holder.
            ValidationError: a one-name scope (it spans stages), a bad ttl or wait.
        """
        return self._locks.lock(scope, ttl=ttl, wait=wait, info=info)

    async def break_lock(self, scope: Scope | str, token: int, *, actor: str | None = None) -> None:
        """End the lease ``token`` on ``scope``, whoever holds it (a BREAK in the history).

        The holder's later writes, renewals and release raise ``FencedError``.

        Raises:
            NoSuchLeaseError: no lease with that token is on the scope.
        """
        await self._locks.break_lock(scope, token, actor)

    async def take_lease(
        self,
        scope: Scope | str,
        *,
        ttl: float = 30.0,
        info: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> Lease:
        """Take a lease on behalf of a remote holder (``evstate serve``).

        Unlike :meth:`lock`, nothing renews it and this client's writes do not carry its
        token: the holder renews it (:meth:`renew_lease`) and names the token itself.
        ``actor`` (on these and :meth:`break_lock`) records who, instead of the client's.

        Raises:
            LockHeldError: held by someone else.
        """
        return await self._locks.take(scope, ttl, info, actor)

    async def renew_lease(
        self, scope: Scope | str, token: int, *, ttl: float = 30.0, actor: str | None = None
    ) -> Lease:
        """Extend a lease taken with :meth:`take_lease` by ``ttl`` from now.

        Raises:
            FencedError: the lease was broken or taken over.
        """
        return await self._locks.renew_for(scope, token, ttl, actor)

    async def release_lease(
        self, scope: Scope | str, token: int, *, actor: str | None = None
    ) -> None:
        """Release a lease taken with :meth:`take_lease`.

        Raises:
            FencedError: the lease was broken or taken over.
        """
        await self._locks.release_for(scope, token, actor)

    async def locks(self, scope: Scope | str | None = None) -> list[Lease]:
        """Live leases: every one, or those on ``scope``, covering it or nested in it."""
        return await self._locks.live(scope)

    # -- stores -------------------------------------------------------------------

    def store(self, scope: Scope) -> KafkaStateStore:
        """The store of ``scope``, sharing this client.

        A scope without a password gets the ``password`` setting (``EVSTATE_PASSWORD``).
        """
        if scope.password is None and self.settings.password is not None:
            scope = Scope(*scope.chain, password=self.settings.password)
        return KafkaStateStore(scope, engine=self.engine)

    # -- the view as a whole (CLI, server) ----------------------------------------

    @property
    def view(self) -> View:
        """The open view (for reads)."""
        return self.engine.view

    @property
    def applier(self) -> Applier | None:
        """The applier feeding the view (None until the state topic exists)."""
        return self.engine.applier

    async def ensure_topics(self) -> None:
        """Create the topics if missing, check them if present (idempotent).

        Raises:
            TopicMismatchError: a topic exists with another cleanup policy or partitions.
        """
        await self.engine.ensure_topics()

    async def consistent(
        self,
        scope: Scope,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> None:
        """Wait until the view may serve a read of ``scope``; see :meth:`Engine.consistent`."""
        await self.engine.consistent(scope, consistency, min_position)

    def partition_of(self, scope: Scope) -> int:
        """The partition holding every event of ``scope``."""
        return self.engine.partition_of(scope)

    def scopes(self) -> list[str]:
        """Every scope path that has at least one state in the view, sorted."""
        return self.engine.scopes()

    async def catch_up(self, timeout: float | None = None) -> None:
        """Wait until the view has applied everything committed to the topic so far.

        Raises:
            ConsistencyTimeout: out of time, or no progress for ``read_timeout``.
        """
        await self.engine.catch_up(timeout)

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Drop the view and replay the state topic into it.

        Returns:
            The number of records read.
        """
        return await self.engine.rebuild(progress)

    async def verify(self) -> VerifyReport:
        """Recompute the state from the topic and compare it with the view, key by key.

        Returns:
            The differences (none when the view is right) and the unreadable records.
        """
        return await verify(self.engine)

    # -- history and watchers -----------------------------------------------------

    async def history(
        self,
        scope: Scope,
        key: str | None = None,
        *,
        since: Point | None = None,
        until: Point | None = None,
        progress: Progress | None = None,
    ) -> AsyncIterator[ChangeEvent]:
        """Every event of ``scope`` (or of ``key`` in it), oldest first.

        Args:
            scope: the scope.
            key: only this key's events.
            since: first point to include (a ``datetime``, or a Position of an event).
            until: last point to include.
            progress: called with (offsets read, offsets in all) while reading.

        Raises:
            ValidationError: a bound is a naive datetime or a Position of another partition.
        """
        await self.engine.start()
        partitions = self.engine.topic_partitions()
        if partitions is None:
            return
        if key is not None:
            keys.validate_key(key)
        async for event in read_events(
            self.settings,
            partitions,
            scope,
            key=key,
            since=since,
            until=until,
            progress=progress,
        ):
            yield event

    async def state_at(
        self, scope: Scope, at: Point, progress: Progress | None = None
    ) -> dict[str, State]:
        """Every state of ``scope`` as it was at ``at`` (a ``datetime`` or an event's Position).

        Raises:
            SecretError: a state holds secrets and the scope has no (or a wrong) password.
            ValidationError: an Alchemy v2 stage (``~v2.<stack>/<stage>``), whose records
                are no v1 ``State``: read them with :meth:`trees_at`.
        """
        if is_reserved(scope.chain):
            raise ValidationError(
                f"{scope.path} holds Alchemy v2 records, which are no v1 States: read them "
                "as stored trees with trees_at (evstate replay)"
            )
        trees = await self.trees_at(scope, at, progress)
        return {key: deserialize_state(scope, tree) for key, tree in trees.items()}

    async def trees_at(self, scope: Scope, at: Point, progress: Progress | None) -> dict[str, Tree]:
        await self.engine.start()
        partitions = self.engine.topic_partitions()
        if partitions is None:
            return {}
        return await replay_trees(self.settings, partitions, scope, at, progress)

    async def diff(self, scope: Scope, a: Point, b: Point) -> Diff:
        """The keys added, removed and changed in ``scope`` from point ``a`` to point ``b``.

        Returns:
            A :class:`~evstate.history.Diff` of serialized states (secrets stay encrypted).
        """
        return diff_trees(await self.trees_at(scope, a, None), await self.trees_at(scope, b, None))

    def watch(
        self,
        scope: Scope | str | None = None,
        *,
        group: str | None = None,
        start: Start = "latest",
    ) -> Watcher:
        """Every change written from ``start`` on, as it happens.

        ``async with client.watch("app/prod", group="notifier") as changes:
        async for event in changes: ...`` — iterating without ``async with`` works too;
        closing the client closes every watcher it made. The watcher has its own Kafka
        consumer: it reads neither the client's view nor its connection.

        Args:
            scope: a :class:`~evstate.model.Scope` (that scope only); a scope path such as
                ``"app"`` or ``"app/prod"`` (that scope and every scope nested in it, not
                ``"app/prod2"``); or None (every scope).
            group: a consumer group id: progress committed in Kafka, at-least-once,
                members of a group share the work. None: a reader of its own.
            start: where to begin when the group has nothing committed: ``"latest"``,
                ``"earliest"``, a tz-aware ``datetime``, or a :class:`Position` of the
                topic watched (that event included).

        Returns:
            An unopened :class:`~evstate.watch.Watcher` yielding ``WatchedEvent``.

        Raises:
            ValidationError: an invalid scope, group or start.
            ClosedError: the client is closed.
        """
        if self.engine.state is Lifecycle.CLOSED:
            raise ClosedError("this EvstateClient is closed; make a new one")
        watcher = Watcher(self.settings, scope, group=group, start=start)
        self._watchers.add(watcher)
        return watcher


class StoreFactory:
    """Alchemy-style ``state_store(scope)``: every store shares one lazily started client."""

    def __init__(self, **settings: Any) -> None:
        """Args:
        **settings: :class:`~evstate.config.Settings` fields (the rest from the environment).
        """
        self.client = EvstateClient(**settings)

    def __call__(self, scope: Scope) -> KafkaStateStore:
        """The store of ``scope``."""
        return self.client.store(scope)

    async def aclose(self) -> None:
        """Close the shared client."""
        await self.client.close()


def store_factory(**settings: Any) -> StoreFactory:
    """Return ``scope -> KafkaStateStore`` for Alchemy-style code; close it with ``aclose()``.

    Args:
        **settings: :class:`~evstate.config.Settings` fields; the rest come from
            ``EVSTATE_*`` environment variables.
    """
    return StoreFactory(**settings)
