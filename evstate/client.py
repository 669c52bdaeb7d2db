"""One connection to Kafka and one view per process, shared by every scope's store.

:class:`EvstateClient` owns the producer, the admin client, the RocksDB view and the
applier that feeds it. Stores (:class:`~evstate.store.KafkaStateStore`) are thin: they
validate, serialize and call :meth:`EvstateClient.write` / :meth:`EvstateClient.consistent`.

Read-your-writes: the client remembers, per partition, the highest offset it wrote; a
``session`` read waits until the view has applied it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from evstate import keys, metrics
from evstate.applier import (
    Applier,
    ApplierStats,
    Poison,
    Progress,
    decode_view_value,
    to_changes,
)
from evstate.config import Settings
from evstate.errors import ClosedError, ValidationError
from evstate.history import Diff, Point, Tree, diff_trees, read_events, replay_trees
from evstate.log import Admin, Tail, TopicSpec
from evstate.model import ChangeEvent, Position, Scope, State
from evstate.serde import deserialize_state
from evstate.view import View
from evstate.watch import Start, Watcher
from evstate.watch import watch as watch_changes
from evstate.writer import Writer

if TYPE_CHECKING:
    from evstate.store import KafkaStateStore

Consistency = Literal["session", "strong", "eventual"]
CONSISTENCIES: tuple[Consistency, ...] = ("session", "strong", "eventual")


class ClientState(enum.Enum):
    """Where a client is in its life."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Difference:
    """One key on which the view and the topic disagree."""

    key: str
    problem: Literal["missing from view", "not in topic", "different value"]


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found: keys that differ, and records the view had to skip."""

    keys: int
    differences: list[Difference]
    poison: list[Poison]

    @property
    def ok(self) -> bool:
        """True when the view matches the topic (skipped poison records are reported, not
        counted as a mismatch: the topic itself holds them)."""
        return not self.differences


class EvstateClient:
    """A process's connection to evstate: one producer, one consumer, one view.

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
        self._state = ClientState.UNOPENED
        self._lock = asyncio.Lock()
        self._view: View | None = None
        self._writer: Writer | None = None
        self._admin: Admin | None = None
        self._applier: Applier | None = None
        self._topics_ready = False
        self._written: dict[int, int] = {}
        self._versions: dict[bytes, int] = {}
        self._partitions: dict[str, tuple[int, int]] = {}  # scope path -> (count, partition)

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
    def state(self) -> ClientState:
        """UNOPENED, OPEN or CLOSED."""
        return self._state

    async def start(self) -> None:
        """Open the view and connect to Kafka; a no-op when already open.

        Raises:
            ViewLockedError: another process uses ``view_dir``.
            BrokerUnavailableError: Kafka did not answer within ``connect_timeout``.
            ClosedError: the client was closed.
        """
        async with self._lock:
            if self._state is ClientState.OPEN:
                return
            if self._state is ClientState.CLOSED:
                raise ClosedError("this EvstateClient is closed; make a new one")
            self._view = await asyncio.to_thread(View.open, self.settings.view_dir)
            try:  # on failure, _shutdown closes the view again
                admin = Admin(self.settings)
                await admin.start()
                self._admin = admin
                partitions = await admin.partitions(self.settings.state_topic)
                if partitions is not None:
                    await self._start_applier(partitions)
            except BaseException:
                await self._shutdown()
                raise
            self._state = ClientState.OPEN

    async def close(self) -> None:
        """Stop applying, disconnect, close the view. Idempotent."""
        async with self._lock:
            if self._state is ClientState.CLOSED:
                return
            self._state = ClientState.CLOSED
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Each resource is released even if stopping another one failed.
        applier, writer, admin, view = self._applier, self._writer, self._admin, self._view
        self._applier = self._writer = self._admin = self._view = None
        try:
            if applier is not None:
                await applier.stop()
        finally:
            try:
                if writer is not None:
                    await writer.stop()
            finally:
                try:
                    if admin is not None:
                        await admin.stop()
                finally:
                    if view is not None:
                        view.close()

    async def _open(self) -> None:
        if self._state is not ClientState.OPEN:
            await self.start()

    async def _start_applier(self, partitions: int) -> None:
        assert self._view is not None
        applier = Applier(self.settings, self._view, partitions)
        await applier.start()
        self._applier = applier

    # -- topics -------------------------------------------------------------------

    async def _discover_topic(self) -> Applier | None:
        """Start applying if another process created the state topic since we started."""
        async with self._lock:
            if self._applier is None and self._admin is not None:
                partitions = await self._admin.partitions(self.settings.state_topic)
                if partitions is not None:
                    await self._start_applier(partitions)
            return self._applier

    def _specs(self) -> list[TopicSpec]:
        s = self.settings
        specs = [
            TopicSpec(
                name=s.state_topic,
                partitions=s.partitions,
                replication_factor=s.replication_factor,
                configs={**s.state_topic_configs, "cleanup.policy": "compact"},
            )
        ]
        if s.history:
            specs.append(
                TopicSpec(
                    name=s.history_topic,
                    partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    configs={
                        "retention.ms": str(s.history_retention_ms),
                        **s.history_topic_configs,
                        "cleanup.policy": "delete",
                    },
                )
            )
        return specs

    async def ensure_topics(self) -> None:
        """Create the topics if missing, check them if present (idempotent).

        Raises:
            TopicMismatchError: a topic exists with another cleanup policy or partition count.
        """
        await self._open()
        if self._topics_ready:
            return
        async with self._lock:
            if self._topics_ready:
                return
            assert self._admin is not None
            limits = [await self._admin.ensure_topic(spec) for spec in self._specs()]
            if self._applier is None:
                await self._start_applier(self.settings.partitions)
            writer = Writer(
                self.settings, partitions=self.settings.partitions, max_bytes=min(limits)
            )
            await writer.start()
            self._writer = writer
            self._topics_ready = True

    # -- what stores call ---------------------------------------------------------

    def store(self, scope: Scope) -> KafkaStateStore:
        """The store of ``scope``, sharing this client.

        A scope without a password gets the ``password`` setting (``EVSTATE_PASSWORD``).
        """
        from evstate.store import KafkaStateStore

        if scope.password is None and self.settings.password is not None:
            scope = Scope(*scope.chain, password=self.settings.password)
        return KafkaStateStore(scope, client=self)

    def partition_of(self, scope: Scope) -> int:
        """The partition holding every event of ``scope`` (cached: it is on every read)."""
        partitions = (
            self._applier.partitions if self._applier is not None else self.settings.partitions
        )
        cached = self._partitions.get(scope.path)
        if cached is None or cached[0] != partitions:
            cached = (partitions, keys.partition_for(scope, partitions))
            self._partitions[scope.path] = cached
        return cached[1]

    @property
    def view(self) -> View:
        """The open view (for reads)."""
        if self._view is None:
            raise ClosedError("this EvstateClient is not open")
        return self._view

    def next_version(self, record_key: bytes) -> int:
        """The version a new event of ``record_key`` gets: one above the newest known.

        The newest known is the larger of what the view holds and what this process
        wrote; writers in other processes are seen once the view has applied them.
        """
        raw = self.view.get(record_key)
        in_view = decode_view_value(raw)[0] if raw is not None else 0
        return max(in_view, self._versions.get(record_key, 0)) + 1

    async def write(self, scope: Scope, event: ChangeEvent) -> Position:
        """Append ``event`` (state and history topics) and wait for Kafka's acknowledgement.

        Returns:
            The event's position in the state topic.

        Raises:
            EventTooLargeError: the encoded event is over the topic's limit; nothing sent.
            WriteFailedError, BrokerUnavailableError: Kafka did not acknowledge.
        """
        await self.ensure_topics()
        assert self._writer is not None
        pos = await self._writer.write(scope, event)
        if pos.offset > self._written.get(pos.partition, -1):
            self._written[pos.partition] = pos.offset
        self._versions[keys.record_key(scope, event.key).encode("utf-8")] = event.version
        return pos

    async def consistent(
        self,
        scope: Scope,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> None:
        """Wait until the view may serve a read of ``scope`` at the asked consistency.

        Each wait is counted (``evstate_consistency_waits_total`` by outcome) and timed.

        Raises:
            ConsistencyTimeout: the view did not get there within ``read_timeout``.
            ValidationError: unknown consistency.
        """
        label = consistency if consistency in CONSISTENCIES else "invalid"
        with metrics.timed_consistency(self.settings.state_topic, label):
            await self._consistent(scope, consistency, min_position)

    async def _consistent(
        self, scope: Scope, consistency: Consistency, min_position: Position | None
    ) -> None:
        await self._open()
        if consistency not in CONSISTENCIES:
            raise ValidationError(
                f"consistency must be one of {', '.join(CONSISTENCIES)}, not {consistency!r}"
            )
        applier = self._applier
        if applier is None and (consistency != "eventual" or min_position is not None):
            applier = await self._discover_topic()
        if applier is None:  # no topic yet: nothing was ever written
            return
        applier.check()
        if min_position is not None:
            await applier.wait_for(min_position.partition, min_position.offset)
        if consistency == "eventual":
            return
        partition = self.partition_of(scope)
        if consistency == "strong":
            await applier.wait_until(partition, await applier.end_offset(partition))
            return
        written = self._written.get(partition)
        if written is not None:
            await applier.wait_for(partition, written)

    def applied_position(self, scope: Scope) -> Position:
        """The view's position in ``scope``'s partition, as a token (offset = last applied)."""
        partition = self.partition_of(scope)
        applied = self._applier.applied(partition) if self._applier is not None else 0
        return Position(partition, applied - 1)

    # -- whole-view operations (CLI) ---------------------------------------------

    def scopes(self) -> list[str]:
        """Every scope path that has at least one state in the view, sorted."""
        return [p.decode("utf-8") for p in self.view.prefixes(b":")]

    async def catch_up(self, timeout: float | None = None) -> None:
        """Wait until the view has applied everything committed to the topic so far.

        Args:
            timeout: seconds in all; None waits as long as the view keeps applying.

        Raises:
            ConsistencyTimeout: out of time, or the view made no progress for
                ``read_timeout``.
        """
        await self._open()
        if self._applier is not None:
            await self._applier.catch_up(timeout)

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Drop the view and replay the state topic into it.

        Returns:
            The number of records read.
        """
        await self._open()
        if self._applier is None:
            self.view.clear()
            return 0
        return await self._applier.rebuild(progress)

    async def verify(self) -> VerifyReport:
        """Recompute the state from the topic and compare it with the view, key by key.

        Returns:
            The differences (none when the view is right) and the unreadable records.
        """
        await self.catch_up()
        applier = self._applier
        if applier is None:
            return VerifyReport(0, [], [])
        await applier.stop()  # hold the view still while comparing
        try:
            upto = self.view.applied_offsets()
            expected: dict[bytes, bytes | None] = {}
            tail = Tail(self.settings, self.settings.state_topic, applier.partitions)
            await tail.start({})
            try:
                stats = ApplierStats(self.settings.state_topic)
                while True:
                    positions = await tail.positions()
                    if all(positions[p] >= upto.get(p, 0) for p in positions):
                        break
                    for p, records in (await tail.fetch(0.5)).items():
                        wanted = [r for r in records if r.offset < upto.get(p, 0)]
                        expected.update(to_changes(wanted, stats, report=False))
            finally:
                await tail.stop()
            found = dict(self.view.scan_prefix(b""))
        finally:
            await applier.start()
        diffs: list[Difference] = []
        for key, value in expected.items():
            have = found.pop(key, None)
            if value is None and have is not None:
                diffs.append(Difference(key.decode(), "not in topic"))
            elif value is not None and have is None:
                diffs.append(Difference(key.decode(), "missing from view"))
            elif value != have:
                diffs.append(Difference(key.decode(), "different value"))
        diffs.extend(Difference(key.decode(), "not in topic") for key in found)
        live = sum(1 for value in expected.values() if value is not None)
        return VerifyReport(live, sorted(diffs, key=lambda d: d.key), stats.poison)

    def _history_partitions(self) -> int | None:
        return self._applier.partitions if self._applier is not None else None

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
        await self._open()
        partitions = self._history_partitions()
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
        """
        trees = await self.trees_at(scope, at, progress)
        return {key: deserialize_state(scope, tree) for key, tree in trees.items()}

    async def trees_at(self, scope: Scope, at: Point, progress: Progress | None) -> dict[str, Tree]:
        await self._open()
        partitions = self._history_partitions()
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
        """Every change from ``start`` on, as it happens; see :func:`evstate.watch.watch`.

        ``async with client.watch("app/prod", group="notifier") as changes:
        async for event in changes: ...`` — ``event.ack()`` commits at once.

        Raises:
            ValidationError: an invalid scope, group or start.
            ClosedError: the client is closed.
        """
        return watch_changes(self, scope, group=group, start=start)

    @property
    def applier(self) -> Applier | None:
        """The applier feeding the view (None until the state topic exists)."""
        return self._applier
