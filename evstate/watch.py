"""React to changes as they happen: :func:`watch` yields every new event of some scopes.

A watcher reads the history topic (the state topic when ``history`` is off), keeps the
records whose key is in what it watches — one scope, a scope and every scope nested in
it, or everything — and yields each as a :class:`WatchedEvent`, a
:class:`~evstate.model.ChangeEvent` that can be acknowledged.

With a ``group`` the watcher is a member of a Kafka consumer group, and its progress is
committed in Kafka, at least once: an event counts as handled when the loop asks for the
next one or calls :meth:`WatchedEvent.ack`. A process that dies (or a loop that raises)
before that gets the event again when it, or another member, takes over. Members of one
group share the partitions; every group sees every event; each scope's events arrive in
the order they were written (one scope is one partition). Without a group, a watcher
reads from ``start`` on and commits nothing.

``start`` says where a watcher with nothing committed begins: ``"latest"`` (only what is
written from now on), ``"earliest"`` (everything the topic keeps), a tz-aware
``datetime`` (events from then on), or a :class:`~evstate.model.Position` of the topic
watched — an event's ``position`` as a watcher or ``client.history`` yielded it — from
which that partition is read, that event included (other partitions: from now on). A
group that has committed progress resumes from it whatever ``start`` says.

Records that are not readable events are logged, counted in :attr:`Watcher.stats` and
skipped. Scope filtering looks at record keys (``scope/path:id``) before anything is
decoded, so a watcher of one scope pays little for the traffic of others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from evstate import keys, metrics
from evstate.config import Settings
from evstate.errors import ClosedError, EvstateError, MalformedEventError, ValidationError
from evstate.history import CLOCK_SLACK, record_event
from evstate.kafka import Admin, GroupTail, Record
from evstate.layout import MARKER_KEY
from evstate.layout_check import check_layout
from evstate.model import ChangeEvent, Lifecycle, Position, Scope

__all__ = ["Start", "WatchStats", "WatchedEvent", "Watcher", "WatcherState"]

log = logging.getLogger(__name__)

Start = Literal["earliest", "latest"] | datetime | Position
"""Where a watcher with nothing committed begins."""

# Handled events are committed before each fetch, and at least this often in between.
_COMMIT_INTERVAL = 1.0
_FETCH_WAIT = 1.0
_MAX_RECORDS = 2000
# How often a watcher started before the first write looks for the topic.
_TOPIC_POLL = 0.5


@dataclass(frozen=True, kw_only=True)
class WatchedEvent(ChangeEvent):
    """A :class:`~evstate.model.ChangeEvent` yielded by a watcher, with :meth:`ack`.

    Compares equal to other watched events with the same fields; :attr:`change` is the
    plain event, for comparing with events read elsewhere.
    """

    _watcher: Watcher | None = field(default=None, repr=False, compare=False)

    async def ack(self) -> None:
        """Mark this event handled and commit the group's progress now.

        Asking the watcher for the next event does the same (the commit then happens
        within a second); call this to make the progress durable before doing something
        slow, or before leaving the loop with ``break``. Without a group it does nothing.

        Raises:
            KafkaError: the broker refused the commit.
        """
        if self._watcher is not None:
            await self._watcher._ack(self)

    @property
    def change(self) -> ChangeEvent:
        """The plain event (equal to the same event read by ``history``)."""
        return ChangeEvent(**{f.name: getattr(self, f.name) for f in _EVENT_FIELDS})


_EVENT_FIELDS = fields(ChangeEvent)


def _watched(event: ChangeEvent, watcher: Watcher) -> WatchedEvent:
    # The event was validated when decoded: copy its fields instead of building (and
    # validating) it again, on the path every event takes.
    watched = object.__new__(WatchedEvent)
    watched.__dict__.update(event.__dict__)
    object.__setattr__(watched, "_watcher", watcher)
    return watched


@dataclass(slots=True)
class WatchStats:
    """What a watcher has read so far.

    Attributes:
        delivered: events yielded.
        skipped: records of other scopes, or older than a ``datetime`` start.
        poison: records in scope that were not readable events (logged, skipped).
    """

    delivered: int = 0
    skipped: int = 0
    poison: int = 0


WatcherState = Lifecycle
"""Where a watcher is in its life (the same states as a client's)."""


class _Filter:
    """Which record keys a watcher wants: one scope, a scope and its nested ones, or all."""

    def __init__(self, scope: Scope | str | None) -> None:
        self.partition_scope: Scope | None = None
        self._prefixes: tuple[bytes, ...] = ()
        if isinstance(scope, Scope):
            self.partition_scope = scope
            self._prefixes = (keys.scope_prefix(scope).encode(),)
        elif isinstance(scope, str):
            path = Scope.parse(scope).path  # refuses '', ':' and empty names
            self._prefixes = (f"{path}:".encode(), f"{path}/".encode())
        elif scope is not None:
            raise ValidationError(
                f"scope must be a Scope, a scope path (str) or None, not {type(scope).__name__}"
            )

    def __call__(self, key: bytes) -> bool:
        # 'app/prod:' is the scope itself, 'app/prod/' a nested one; 'app/prod2:' neither.
        return not self._prefixes or key.startswith(self._prefixes)


def _check_start(start: object) -> Start:
    if start in ("earliest", "latest") or isinstance(start, Position):
        return start
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ValidationError(f"start must be a timezone-aware datetime, got {start!r}")
        return start
    raise ValidationError(
        f"start must be 'earliest', 'latest', a datetime or a Position, not {start!r}"
    )


class Watcher:
    """The events of some scopes as they are written: an async iterator and context manager.

    ``async with watcher:`` returns once the watcher has its partitions and knows where it
    starts, so a change made after that is seen (with ``start="latest"``). Iterating an
    unopened watcher opens it. Leaving the ``async with`` block commits what was handled
    (not the event the loop was in, unless acknowledged) and leaves the group.
    """

    def __init__(
        self,
        settings: Settings,
        scope: Scope | str | None = None,
        *,
        group: str | None = None,
        start: Start = "latest",
    ) -> None:
        """Args: as :meth:`evstate.client.EvstateClient.watch`.

        Raises:
            ValidationError: an invalid scope, group or start.
        """
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise ValidationError(f"group must be a non-empty str or None, got {group!r}")
        self.settings = settings
        self.group = group
        self.start_at = _check_start(start)
        self._filter = _Filter(scope)
        self.topic = settings.history_topic if settings.history else settings.state_topic
        self.stats = WatchStats()
        self._state = Lifecycle.UNOPENED
        self._lock = asyncio.Lock()
        self._tail: GroupTail | None = None
        self._topic_was_missing = False
        self._buffer: deque[Record] = deque()
        self._current: WatchedEvent | None = None
        self._done: dict[int, int] = {}  # partition → next offset to handle
        self._committed: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self._committer: asyncio.Task[None] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        # partition → end offset when it was positioned by time: older records below it
        # are dropped by event time; records written after the start never are.
        self._time_window: dict[int, int] = {}

    # -- lifecycle ----------------------------------------------------------------

    @property
    def state(self) -> Lifecycle:
        """UNOPENED, OPEN or CLOSED."""
        return self._state

    @property
    def partitions(self) -> set[int]:
        """The partitions this watcher reads now (with a group: its share)."""
        return set() if self._tail is None else self._tail.assigned()

    async def __aenter__(self) -> Watcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Join the group (or take the partitions) and position every partition.

        Waits for the topic to exist if nothing was ever written.

        Raises:
            BrokerUnavailableError: Kafka did not answer within ``connect_timeout``.
            KafkaError: the group did not assign partitions in time.
            LayoutError: the topics were written with the old partition rule.
            ValidationError: a Position start in another partition than the watched scope's.
            ClosedError: the watcher was closed.
        """
        async with self._lock:
            if self._state is Lifecycle.OPEN:
                return
            if self._state is Lifecycle.CLOSED:
                raise ClosedError("this watcher is closed; start a new one")
            partitions = await self._partitions()
            only: list[int] = []
            if self._filter.partition_scope is not None:
                only = [keys.partition_for(self._filter.partition_scope, partitions)]
                if isinstance(self.start_at, Position) and self.start_at.partition != only[0]:
                    raise ValidationError(
                        f"start={self.start_at} is in partition {self.start_at.partition}, "
                        f"but the events of {self._filter.partition_scope.path} are in "
                        f"partition {only[0]}"
                    )
            tail = GroupTail(
                self.settings,
                self.topic,
                self.group,
                partitions=partitions,
                only=only,
                assignments=_Assignments(self),
            )
            self._tail = tail
            try:
                await tail.start()
            except BaseException:
                self._tail = None
                await tail.stop()
                raise
            # Dropped without close (a loop that raised, say): leave the group anyway.
            self._finalizer = weakref.finalize(
                self, _stop_abandoned, asyncio.get_running_loop(), tail
            )
            self._state = Lifecycle.OPEN

    async def close(self) -> None:
        """Commit what was handled, leave the group, disconnect. Idempotent."""
        async with self._lock:
            if self._state is Lifecycle.CLOSED:
                return
            self._state = Lifecycle.CLOSED
            tail, self._tail = self._tail, None
            if self._finalizer is not None:
                self._finalizer.detach()
            if tail is None:
                return
            try:
                with contextlib.suppress(Exception):  # best effort: at-least-once holds anyway
                    await self._settle()
                    await self._commit(tail)
            finally:
                await tail.stop()

    async def aclose(self) -> None:
        """Same as :meth:`close` (the name async generators use)."""
        await self.close()

    async def _partitions(self) -> int:
        admin = Admin(self.settings)
        await admin.start()
        try:
            while (count := await admin.partitions(self.topic)) is None:
                if not self._topic_was_missing:
                    log.info("waiting for topic %s: nothing was written yet", self.topic)
                self._topic_was_missing = True
                await asyncio.sleep(_TOPIC_POLL)
            # Scopes are found by partition: refuse topics written with the old rule.
            await check_layout(self.settings, admin, None, write=False)
            return count
        finally:
            await admin.stop()

    # -- partitions gained and lost (called by the tail) ----------------------------

    async def _assigned(self, partitions: set[int]) -> None:
        """Position the partitions the group has no progress for, and commit that position.

        Committing the start at once means a member joining later resumes there, instead
        of applying ``start`` again at a later moment and missing what came between.
        """
        tail = self._tail
        assert tail is not None
        fresh: dict[int, int] = {}
        for p in sorted(partitions):
            self._done.pop(p, None)
            committed = await tail.committed(p)
            if committed is not None:
                self._committed[p] = committed
                continue
            offset = await self._first_offset(tail, p)
            tail.seek(p, offset)
            fresh[p] = offset
        if fresh and await tail.commit(fresh):
            self._committed.update(fresh)

    async def _revoked(self, partitions: set[int]) -> None:
        """Commit what was handled in the partitions going away; forget what is buffered."""
        tail = self._tail
        if tail is not None:
            await tail.commit({p: o for p, o in self._done.items() if p in partitions})
        self._buffer = deque(r for r in self._buffer if r.partition not in partitions)
        if self._current is not None and self._position(self._current).partition in partitions:
            self._current = None  # the next owner reads it again
        for p in partitions:
            self._done.pop(p, None)
            self._committed.pop(p, None)

    async def _first_offset(self, tail: GroupTail, partition: int) -> int:
        first, end = await tail.bounds(partition)
        start = self.start_at
        if start == "earliest" or (start == "latest" and self._topic_was_missing):
            return first  # a topic created after the watch began holds only new events
        if isinstance(start, Position):
            return max(first, start.offset) if start.partition == partition else end
        if isinstance(start, datetime):
            ms = max(0, int((start - CLOCK_SLACK).timestamp() * 1000))
            found = await tail.offset_for_time(partition, ms)
            self._time_window[partition] = end
            return end if found is None else found
        return end

    # -- iterating ------------------------------------------------------------------

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchedEvent:
        if self._state is Lifecycle.UNOPENED:
            await self.start()
        if self._state is Lifecycle.CLOSED:
            raise StopAsyncIteration
        if self._current is not None:  # the loop asked for the next one: handled
            self._handled(self._current)
            self._current = None
        tail = self._tail
        assert tail is not None
        if self.group is not None and time.monotonic() - self._last_commit > _COMMIT_INTERVAL:
            self._commit_soon(tail)
        while True:
            while self._buffer:
                record = self._buffer.popleft()
                event = self._event(record)
                if event is None:
                    self._done[record.partition] = record.offset + 1
                    continue
                self._current = event
                self.stats.delivered += 1
                return event
            if self.group is not None:
                # Everything fetched is handled: the positions also step over the
                # transaction markers, so the group's lag can reach zero.
                for p, position in (await tail.positions()).items():
                    if position > self._done.get(p, self._committed.get(p, position)):
                        self._done[p] = position
                self._commit_soon(tail)
            batches = await tail.fetch(_FETCH_WAIT, _MAX_RECORDS)
            for records in batches.values():
                self._buffer.extend(records)
            if self.group is not None:
                self._report_lag(tail)

    def _report_lag(self, tail: GroupTail) -> None:
        """``evstate_watch_lag``: what is committed to the partitions but not handled yet."""
        assert self.group is not None
        lag = 0
        for p, end in tail.last_stable().items():
            done = self._done.get(p, self._committed.get(p))
            if end is not None and done is not None:
                lag += max(0, end - done)
        metrics.watch_lag(self.topic, self.group, lag)

    def _event(self, record: Record) -> WatchedEvent | None:
        """The event a record holds if it is wanted; None for skipped and poison records."""
        key = record.key
        if key is None or b":" not in key:
            if key == MARKER_KEY:  # the state topic's layout marker (history off)
                self.stats.skipped += 1
            else:
                self._poison(record, f"record key {key!r} is not 'scope:id'")
            return None
        if not self._filter(key):
            self.stats.skipped += 1
            return None
        try:
            event = record_event(record)
        except MalformedEventError as exc:
            self._poison(record, str(exc))
            return None
        window = self._time_window.get(record.partition)
        if window is not None:
            if record.offset >= window:
                del self._time_window[record.partition]
            elif isinstance(self.start_at, datetime) and event.timestamp < self.start_at:
                self.stats.skipped += 1
                return None
        return _watched(event, self)

    def _poison(self, record: Record, reason: str) -> None:
        self.stats.poison += 1
        log.warning(
            "skipping unreadable record at %s:%s of %s: %s",
            record.partition,
            record.offset,
            self.topic,
            reason,
        )

    @staticmethod
    def _position(event: ChangeEvent) -> Position:
        assert event.position is not None  # every event read from Kafka has one
        return event.position

    def _handled(self, event: ChangeEvent) -> None:
        pos = self._position(event)
        if pos.offset + 1 > self._done.get(pos.partition, -1):
            self._done[pos.partition] = pos.offset + 1

    async def _ack(self, event: WatchedEvent) -> None:
        if self.group is None or self._tail is None:
            return
        self._handled(event)
        if self._current is event:
            self._current = None
        await self._settle()
        await self._commit(self._tail)

    def _commit_soon(self, tail: GroupTail) -> None:
        """Commit in the background (one commit in flight at a time), so a slow commit
        never holds back the next event; :meth:`_ack` and :meth:`close` wait for it."""
        self._last_commit = time.monotonic()
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_quietly(tail))

    async def _commit_quietly(self, tail: GroupTail) -> None:
        try:
            await self._commit(tail)
        except EvstateError as exc:  # progress stays in memory; the next commit retries
            log.warning("committing group %r's progress failed: %s", self.group, exc)

    async def _settle(self) -> None:
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer

    async def _commit(self, tail: GroupTail) -> None:
        self._last_commit = time.monotonic()
        due = {p: o for p, o in self._done.items() if self._committed.get(p) != o}
        if due and await tail.commit(due):
            self._committed.update(due)


class _Assignments:
    """Passes the tail's partition changes on to the watcher (see ``kafka.Assignments``).

    Holds the watcher weakly: the consumer lives in aiokafka's background tasks, and must
    not keep an abandoned watcher (and its group membership) alive.
    """

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = weakref.ref(watcher)

    async def assigned(self, partitions: set[int]) -> None:
        watcher = self._watcher()
        if watcher is not None:
            await watcher._assigned(partitions)

    async def revoked(self, partitions: set[int]) -> None:
        watcher = self._watcher()
        if watcher is not None:
            await watcher._revoked(partitions)


# Stops of abandoned watchers' consumers, kept until done (a bare task may be collected).
_STOPPING: set[asyncio.Task[None]] = set()


def _stop_abandoned(loop: asyncio.AbstractEventLoop, tail: GroupTail) -> None:
    """Leave the group of a watcher that was dropped without being closed."""
    if loop.is_closed():
        return

    def stop() -> None:
        task = loop.create_task(tail.stop(), name="evstate-watch-abandoned")
        _STOPPING.add(task)
        task.add_done_callback(_STOPPING.discard)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(stop)
