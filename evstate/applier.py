"""Feeds the view from the state topic and lets readers wait for a position.

One background task reads every partition of the state topic (``read_committed``) from
the view's stored offsets and applies each fetched batch to the view together with the
partition's new position, in one WriteBatch. Readers call :meth:`Applier.wait_for` with an
offset they must see; it returns once the view's position for that partition has passed
it, or raises :class:`ConsistencyTimeout` naming partition, wanted and reached offsets.

What the view holds per record key (the *view value*): the key's version as 8 bytes
big-endian, then the state's serialized tree as compact JSON text (UTF-8).

Records that cannot be applied (not Avro, unknown schema, a key that is not
``scope:id``) are poison: logged once, counted, skipped; their offsets still advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evstate import events, metrics
from evstate.config import Settings
from evstate.errors import (
    ClosedError,
    ConsistencyTimeout,
    EvstateError,
    MalformedEventError,
)
from evstate.log import Record, Tail
from evstate.model import Position
from evstate.view import View

log = logging.getLogger(__name__)

_VERSION = struct.Struct(">Q")
# Seconds between checks that the view dir still exists.
_ALIVE_EVERY = 1.0
# A batch this large is written from a worker thread so the event loop keeps serving.
_THREAD_BATCH = 512

Progress = Callable[[int, int], None]
"""Called with (records done, records in all) while a rebuild runs."""


def encode_view_value(version: int, state_text: str) -> bytes:
    """The view value of a state: version, then its JSON text."""
    return _VERSION.pack(version) + state_text.encode("utf-8")


def decode_view_value(raw: bytes) -> tuple[int, bytes]:
    """Split a view value into ``(version, JSON bytes)``."""
    return _VERSION.unpack_from(raw)[0], raw[_VERSION.size :]


@dataclass(slots=True)
class Poison:
    """A record the view skipped."""

    position: Position
    reason: str


@dataclass(slots=True)
class ApplierStats:
    """Counters for tests, metrics and ``evstate verify``."""

    topic: str = ""
    records_applied: int = 0
    poison: list[Poison] = field(default_factory=list)


def to_changes(
    records: Iterable[Record], stats: ApplierStats, *, report: bool = True
) -> list[tuple[bytes, bytes | None]]:
    """Turn state-topic records into view changes, skipping poison into ``stats``.

    With ``report``, each poison record is logged and counted in the metrics (the view's
    applier reads each record once; a verification re-reading the topic does not report).
    """
    changes: list[tuple[bytes, bytes | None]] = []
    for r in records:
        pos = Position(r.partition, r.offset)
        if r.key is None or b":" not in r.key:
            _poison(stats, pos, f"record key {r.key!r} is not 'scope:id'", report)
            continue
        if r.value is None:  # a DELETE: tombstone
            changes.append((r.key, None))
            continue
        try:
            head = events.summarize(r.value, r.headers, pos)
        except MalformedEventError as exc:
            _poison(stats, pos, str(exc), report)
            continue
        if head.op == "SET" and head.state_text is not None:
            changes.append((r.key, encode_view_value(head.version, head.state_text)))
        elif head.op == "DELETE":
            changes.append((r.key, None))
        # LOCK/UNLOCK do not change state.
    stats.records_applied += len(changes)
    if report:
        metrics.RECORDS_APPLIED.labels(stats.topic).inc(len(changes))
    return changes


def _poison(stats: ApplierStats, pos: Position, reason: str, report: bool) -> None:
    stats.poison.append(Poison(pos, reason))
    if report:
        log.warning("skipping unreadable record at %s of the state topic: %s", pos, reason)
        metrics.POISON_RECORDS.labels(stats.topic).inc()


class Applier:
    """The background task that keeps a :class:`View` up to date with the state topic."""

    def __init__(self, settings: Settings, view: View, partitions: int) -> None:
        self._settings = settings
        self._view = view
        self._partitions = partitions
        self._tail: Tail | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied: dict[int, int] = {}
        self._progress = asyncio.Event()
        self._failure: EvstateError | None = None
        self.stats = ApplierStats(settings.state_topic)

    @property
    def partitions(self) -> int:
        """How many partitions the state topic has."""
        return self._partitions

    def applied(self, partition: int) -> int:
        """The view's position in ``partition``: the next offset it will apply."""
        return self._applied.get(partition, 0)

    def positions(self) -> dict[int, tuple[int, int | None]]:
        """Per partition: the view's position, and the last stable offset as last fetched
        (None until known). No request is sent: this is for metrics."""
        ends = self._tail.last_stable() if self._tail is not None else {}
        return {p: (self.applied(p), ends.get(p)) for p in range(self._partitions)}

    async def start(self) -> None:
        """Resume from the view's stored offsets and start applying in the background."""
        self._applied = self._view.applied_offsets()
        self._tail = Tail(self._settings, self._settings.state_topic, self._partitions)
        await self._tail.start(self._applied)
        self._failure = None
        self._task = asyncio.create_task(self._run(), name="evstate-applier")

    async def stop(self) -> None:
        """Stop applying; what was applied stays in the view. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tail, self._tail = self._tail, None
        if tail is not None:
            await tail.stop()
        self._failure = self._failure or ClosedError("the view's applier was stopped")
        self._notify()

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def _run(self) -> None:
        tail = self._tail
        assert tail is not None
        checked = time.monotonic()
        try:
            while True:
                batches = await tail.fetch(0.5)
                await self._apply(tail, batches)
                if time.monotonic() - checked > _ALIVE_EVERY:
                    # A deleted view dir still accepts writes (into unlinked files), so
                    # ask the file system instead of waiting for a failed write.
                    self._view.check_alive()
                    checked = time.monotonic()
        except asyncio.CancelledError:
            raise
        except EvstateError as exc:
            log.error("the view stopped applying: %s", exc)
            self._failure = exc
            self._notify()

    async def _apply(self, tail: Tail, batches: dict[int, list[Record]]) -> int:
        positions = await tail.positions()
        work = []
        size = 0
        for p, next_offset in positions.items():
            records = batches.get(p, [])
            if not records and next_offset == self._applied.get(p, 0):
                continue
            changes = to_changes(records, self.stats)
            size += len(changes)
            work.append((p, next_offset, changes))
        if not work:
            return 0
        if size >= _THREAD_BATCH:
            await asyncio.to_thread(self._view.apply_many, work)
        else:
            self._view.apply_many(work)
        for p, next_offset, _ in work:
            self._applied[p] = next_offset
        self._notify()
        return sum(len(b) for b in batches.values())

    async def wait_for(self, partition: int, offset: int, timeout: float | None = None) -> None:
        """Return once the view has applied ``offset`` of ``partition`` (and all before it).

        Raises:
            ConsistencyTimeout: not reached within ``timeout`` (default: read_timeout).
            EvstateError: the applier failed (e.g. the view dir vanished).
        """
        await self.wait_until(partition, offset + 1, timeout)

    async def wait_until(self, partition: int, position: int, timeout: float | None = None) -> None:
        """Return once the view's position in ``partition`` is at least ``position``."""
        if self._applied.get(partition, 0) >= position:
            return
        limit = self._settings.read_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._applied.get(partition, 0) < position:
            if self._failure is not None:
                raise self._failure
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsistencyTimeout(
                    partition=partition,
                    wanted=position - 1,
                    reached=self._applied.get(partition, 0) - 1,
                    timeout=limit,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)

    async def end_offset(self, partition: int) -> int:
        """The partition's last stable offset, asked of the broker now."""
        assert self._tail is not None
        return (await self._tail.end_offsets())[partition]

    async def catch_up(self, timeout: float | None = None) -> None:
        """Wait until the view has applied everything committed when this was called.

        A bulk catch-up can take long: without ``timeout`` it waits as long as the view
        keeps applying, and gives up after ``read_timeout`` without any progress.
        """
        assert self._tail is not None
        ends = await self._tail.end_offsets()
        deadline = None if timeout is None else time.monotonic() + timeout
        for p, end in ends.items():
            while True:
                before = self.stats.records_applied
                step = self._settings.read_timeout
                if deadline is not None:
                    step = min(step, max(0.0, deadline - time.monotonic()))
                try:
                    await self.wait_until(p, end, step)
                    break
                except ConsistencyTimeout:
                    progressed = self.stats.records_applied > before
                    if not progressed or (deadline is not None and time.monotonic() >= deadline):
                        raise

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Drop the view and replay the state topic into it, then resume applying.

        Returns:
            The number of records read.
        """
        await self.stop()
        await asyncio.to_thread(self._view.clear)
        self.stats = ApplierStats(self._settings.state_topic)
        tail = Tail(self._settings, self._settings.state_topic, self._partitions)
        await tail.start({})
        read = 0
        try:
            ends = await tail.end_offsets()
            starts = await tail.positions()
            total = sum(max(0, ends[p] - starts[p]) for p in ends)
            self._applied = {}
            if progress is not None:
                progress(0, total)
            while any(self._applied.get(p, starts[p]) < ends[p] for p in ends):
                read += await self._apply(tail, await tail.fetch(0.5, max_records=5_000))
                if progress is not None:
                    progress(min(read, total), total)
        finally:
            await tail.stop()
        await self.start()
        return read

    def check(self) -> None:
        """Raise the applier's failure (a vanished view dir, a closed client), if any."""
        if self._failure is not None:
            raise self._failure
