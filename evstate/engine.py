"""The engine below every store and feature: lifecycle, topics, the write path, waiting.

One :class:`Engine` per process (inside an :class:`~evstate.client.EvstateClient`) owns
the Kafka connections (admin, writer), the RocksDB view and the applier feeding it.
Stores call :meth:`Engine.write`, :meth:`Engine.consistent` and :meth:`Engine.ready`.

Consistency (``session``, the default): a read of a scope waits until the view has applied
that scope's partition up to where it ended when this engine started (every write
acknowledged before the process looked), and up to this engine's own latest write there.
Writes wait for the first part too, since a key's next version comes from the view.
``strong`` waits for the partition's end as of the call; ``eventual`` does not wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from types import TracebackType

from evstate import fencing, keys, metrics
from evstate.applier import Applier, Progress
from evstate.config import Settings
from evstate.errors import ClosedError, ValidationError
from evstate.kafka import Admin, TopicSpec
from evstate.layout_check import check_layout
from evstate.model import (
    CONSISTENCIES,
    ChangeEvent,
    Consistency,
    Lease,
    Lifecycle,
    Position,
    Scope,
)
from evstate.view import View, decode_value
from evstate.writer import Intent, Outcome, Writer

__all__ = ["Engine"]


class Engine:
    """A process's connection to Kafka and its view; see the module docstring.

    Use as ``async with Engine(settings)``, or ``start()``/``close()``. Operations start
    it on first use.
    """

    def __init__(self, settings: Settings) -> None:
        """Args:
        settings: where Kafka and the view are, and how to talk to them.
        """
        self.settings = settings
        self._state = Lifecycle.UNOPENED
        self._lock = asyncio.Lock()
        self._view: View | None = None
        self._writer: Writer | None = None
        self._admin: Admin | None = None
        self._applier: Applier | None = None
        self._topics_ready = False
        self._written: dict[int, int] = {}
        self._held: dict[str, int] = {}  # scope path -> token of a lease this client holds
        if settings.lock_scope is not None and settings.lock_token is not None:
            self._held[settings.lock_scope.strip("/")] = settings.lock_token
        self._partitions: dict[str, tuple[int, int]] = {}  # scope path -> (count, partition)

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Engine:
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
        return self._state

    async def start(self) -> None:
        """Open the view and connect to Kafka; a no-op when already open.

        Raises:
            ViewLockedError: another process uses ``view_dir``.
            BrokerUnavailableError: Kafka did not answer within ``connect_timeout``.
            LayoutError: the state topic was written with the old partition rule.
            ClosedError: the client was closed.
        """
        async with self._lock:
            if self._state is Lifecycle.OPEN:
                return
            if self._state is Lifecycle.CLOSED:
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
            self._state = Lifecycle.OPEN

    async def close(self) -> None:
        """Stop applying, disconnect, close the view. Idempotent."""
        async with self._lock:
            if self._state is Lifecycle.CLOSED:
                return
            self._state = Lifecycle.CLOSED
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Each resource is released even if stopping another one failed. The writer goes
        # first: its queued writes may need the applier to catch a partition up.
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                await writer.stop()
        finally:
            applier, admin, view = self._applier, self._admin, self._view
            self._applier = self._admin = self._view = None
            try:
                if applier is not None:
                    await applier.stop()
            finally:
                try:
                    if admin is not None:
                        await admin.stop()
                finally:
                    if view is not None:
                        view.close()

    async def _open(self) -> None:
        if self._state is not Lifecycle.OPEN:
            await self.start()

    async def _start_applier(self, partitions: int) -> None:
        assert self._view is not None
        assert self._admin is not None
        await check_layout(self.settings, self._admin, self._view)  # LayoutError: migrate
        configs = await self._admin.topic_configs(self.settings.state_topic)
        retention = configs.get("delete.retention.ms")
        applier = Applier(
            self.settings,
            self._view,
            partitions,
            tombstone_retention_ms=int(retention) if retention is not None else None,
            release=self._release,
        )
        await applier.start()
        self._applier = applier

    async def _release(self, partition: int) -> bool:
        """Abort a transaction a writer left open in ``partition`` (readers wait behind it);
        False, doing nothing, while this process's own commit there is in flight."""
        if self._writer is not None and self._writer.committing(partition):
            return False
        await fencing.release(self.settings, partition)
        return True

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
            LayoutError: the state topic was written with the old partition rule.
        """
        await self._open()
        if self._topics_ready:
            return
        async with self._lock:
            if self._topics_ready:
                return
            assert self._admin is not None
            limits = [await self._admin.ensure_topic(spec) for spec in self._specs()]
            applying = self._applier is not None  # mark an empty topic before writing to it
            await check_layout(
                self.settings, self._admin, self._view, write=True, applying=applying
            )
            if self._applier is None:
                await self._start_applier(self.settings.partitions)
            writer = Writer(
                self.settings,
                partitions=self.settings.partitions,
                max_bytes=min(limits),
                ledger=ViewLedger(self.view, self._leases_seen),
                catch_up=self._catch_up_partition,
                end_offset=self._end_offset,
                applied=self._applied,
            )
            await writer.start()
            self._writer = writer
            self._topics_ready = True

    # -- what stores call ---------------------------------------------------------

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

    async def check_write(self, scope: Scope, event: ChangeEvent) -> None:
        """Refuse ``event`` as :meth:`write` would before sending anything; send nothing.

        Lets a caller with many events (an import) check every one before the first write.

        Raises:
            EventTooLargeError: the encoded event is over the topic's limit.
            UnserializableError, SerdeError: the event does not encode.
        """
        await self.ensure_topics()
        assert self._writer is not None
        self._writer.records(scope, event)

    async def write(self, intent: Intent) -> Outcome:
        """Decide ``intent`` in log order and append it; wait for Kafka's acknowledgement.

        A write into a scope covered by a lease this client holds carries its token.

        Raises:
            LockHeldError, FencedError, NoSuchLeaseError, ConflictError: refused by the
                write rules; nothing was written.
            EventTooLargeError: the encoded event is over the topic's limit; nothing sent.
            WriteFailedError, BrokerUnavailableError: Kafka did not acknowledge.
        """
        await self.ensure_topics()
        assert self._writer is not None
        # No wait for the start mark here: the partition's sequencer first fences every
        # other writer (aborting a dead one's open transaction at once), then catches up.
        if intent.lock_token is None and intent.op in ("SET", "DELETE") and self._held:
            token = self.held_token(intent.scope.path)
            if token is not None:
                intent = dataclasses.replace(intent, lock_token=token)
        outcome = await self._writer.write(intent)
        pos = outcome.position
        if pos is not None and pos.offset > self._written.get(pos.partition, -1):
            self._written[pos.partition] = pos.offset
        return outcome

    def held_token(self, path: str) -> int | None:
        """The token of a lease this client holds that covers ``path``, if any."""
        at = len(path)
        while at > 0:
            token = self._held.get(path[:at])
            if token is not None:
                return token
            at = path.rfind("/", 0, at)
        return None

    def hold(self, lease: Lease) -> None:
        """Attach ``lease``'s token to this client's writes under its scope from now on."""
        self._held[lease.scope] = lease.token

    def unhold(self, lease: Lease) -> None:
        """Stop attaching ``lease``'s token (released, broken or lost)."""
        if self._held.get(lease.scope) == lease.token:
            del self._held[lease.scope]

    def leases(self, path: str | None = None) -> list[Lease]:
        """Leases recorded in the view: all, or those on ``path`` or nested in it."""
        found = []
        prefix = keys.lease_key(keys.stage_of(path)) if path else keys.LEASE_PREFIX
        for _, raw in self.view.rules_items(prefix):
            lease = Lease.from_json(json.loads(raw))
            if path is None or lease.covers(path) or lease.scope.startswith(path + "/"):
                found.append(lease)
        return found

    async def _catch_up_partition(self, partition: int) -> int:
        """Wait until the view holds everything committed to ``partition`` so far; its end."""
        end = await self._end_offset(partition)
        applier = self._applier
        assert applier is not None
        await applier.ready(partition)
        await applier.wait_until(partition, end)
        return end

    async def _end_offset(self, partition: int) -> int:
        applier = self._applier
        if applier is None:
            raise ClosedError("this EvstateClient is closed")
        return await applier.end_offset(partition)

    def _leases_seen(self) -> int:
        return self._applier.leases_seen if self._applier is not None else 0

    def _applied(self, partition: int) -> int | None:
        return self._applier.applied(partition) if self._applier is not None else None

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
        # Every read comes here: one coroutine, and what is already so (the engine open,
        # the partition ready, the client's own writes applied) is checked without another.
        with metrics.timed_consistency(self.settings.state_topic, label):
            if self._state is not Lifecycle.OPEN:
                await self.start()
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
            if not applier.ready_now(partition):
                await applier.ready(partition)
            if consistency == "strong":
                await applier.wait_until(partition, await applier.end_offset(partition))
                return
            written = self._written.get(partition)
            if written is not None and applier.applied(partition) <= written:
                await applier.wait_for(partition, written)

    async def ready(self, scope: Scope) -> None:
        """Wait until the view holds everything committed to ``scope``'s partition before
        this client started (what a write needs to number its version).

        Raises:
            ConsistencyTimeout: the view made no progress for ``read_timeout``.
        """
        if self._applier is not None:
            await self._applier.ready(self.partition_of(scope))

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

    @property
    def applier(self) -> Applier | None:
        """The applier feeding the view (None until the state topic exists)."""
        return self._applier

    def topic_partitions(self) -> int | None:
        """How many partitions the topics have; None while the state topic does not exist."""
        return self._applier.partitions if self._applier is not None else None


class ViewLedger:
    """The write rules' view of a partition (:class:`evstate.rules.Ledger`), read from the view.

    Leases are read on every write and change rarely: each stage's are cached until the
    applier reports a lease change applied to the view (``seen``).
    """

    def __init__(self, view: View, seen: Callable[[], int]) -> None:
        self._view = view
        self._seen = seen
        self._leases: dict[str, list[Lease]] = {}
        self._leases_at = -1

    def version(self, record_key: bytes) -> int:
        raw = self._view.get(record_key)
        return decode_value(raw)[0] if raw is not None else 0

    def leases(self, stage: str) -> list[Lease]:
        seen = self._seen()
        if seen != self._leases_at:
            self._leases.clear()
            self._leases_at = seen
        cached = self._leases.get(stage)
        if cached is None:
            cached = self._leases[stage] = [
                lease
                for _, raw in self._view.rules_items(keys.lease_key(stage))
                if keys.stage_of((lease := Lease.from_json(json.loads(raw))).scope) == stage
            ]
        return cached

    def written(self, partition: int, idempotency_key: str) -> Position | None:
        found = self._view.rules_items(keys.idempotency_key(partition, idempotency_key))
        if not found:
            return None
        return Position(partition, int.from_bytes(found[0][1][:8], "big"))
