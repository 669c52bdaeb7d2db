"""Feeds the view from the state topic and lets readers wait for a position.

One background task reads every partition of the state topic (``read_committed``) from
the view's stored offsets and applies each fetched batch to the view together with the
partition's new position, in one WriteBatch. Readers call :meth:`Applier.wait_for` with an
offset they must see; it returns once the view's position for that partition has passed
it, or raises :class:`ConsistencyTimeout` naming partition, wanted and reached offsets.

What the view holds per record key: :func:`~evstate.view.encode_value` of the key's
version and serialized state.

Records that cannot be applied (not Avro, unknown schema, a key that is not
``scope:id``) are poison: logged once, counted, skipped; their offsets still advance. The
layout marker (:mod:`evstate.layout`) is no event and no poison: it is passed over.

Start marks: when it starts, the applier asks for every partition's end (its high
watermark, open transactions included). A partition is *ready* once the view has applied
it up to that mark, i.e. every write acknowledged before this process looked. Readers of
a partition (and writers, whose version numbers come from the view) wait for its
readiness, and while they wait the applier fetches only the partitions someone waits for,
so one scope's read on an empty view does not wait for all the others. A transaction
left open by a writer killed mid-write is aborted after a short grace (:mod:`evstate.held`)
rather than waited for until the broker's transaction timeout.

Tombstones: Kafka drops a delete's tombstone ``delete.retention.ms`` after compaction. The
view records, per partition, a time at which it held every record appended before it (when
it last found itself at the partition's end, or the last applied record's timestamp); a
partition whose time is older than half that retention (or unknown) may have missed
deletes, so it is dropped and read again from its start before anything is served from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evstate import events, keys, metrics
from evstate.config import Settings
from evstate.errors import (
    ClosedError,
    ConsistencyTimeout,
    EvstateError,
    MalformedEventError,
)
from evstate.held import LOOK_EVERY, HeldPartitions, Release
from evstate.kafka import Record, Tail
from evstate.layout import MARKER_KEY
from evstate.model import Position
from evstate.view import View, encode_value

log = logging.getLogger(__name__)

# Seconds between checks that the view dir still exists.
_ALIVE_EVERY = 1.0
# A batch this large is written from a worker thread so the event loop keeps serving.
_THREAD_BATCH = 512
# Seconds between two records of "fresh" times at a partition's end; between progress lines.
_MARK_EVERY = 5.0
_PROGRESS_EVERY = 2.0

Progress = Callable[[int, int], None]
"""Called with (records done, records in all) while a rebuild runs."""


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
    lease_changes: int = 0
    poison: list[Poison] = field(default_factory=list)
    markers: int = 0  # layout markers passed over (not events, not poison)


def to_changes(
    records: Iterable[Record], stats: ApplierStats, *, report: bool = True
) -> list[tuple[bytes, bytes | None]]:
    """Turn state-topic records into view changes, skipping poison into ``stats``.

    With ``report``, each poison record is logged and counted in the metrics (the view's
    applier reads each record once; a verification re-reading the topic does not report).
    """
    changes: list[tuple[bytes, bytes | None]] = []
    for r in records:
        # A record's Position is made only for poison: it is most of the cost of a
        # tombstone, and a good part of a SET's outside fastavro.
        if r.key is None or b":" not in r.key:
            if r.key == MARKER_KEY:  # the layout marker: not an event, not poison
                stats.markers += 1
                continue
            pos = Position(r.partition, r.offset)
            _poison(stats, pos, f"record key {r.key!r} is not 'scope:id'", report)
            continue
        if r.headers and r.headers[-1][0] != events.TIME_HEADER:  # a plain SET ends so
            _index_idempotency(r, changes)
        if r.key[-1] == _COLON:  # a lock event
            _lease_change(r, changes, stats, report)
            continue
        if r.value is None:  # a DELETE: tombstone
            changes.append((r.key, None))
            continue
        try:
            head = events.summarize(r.value, r.headers)
        except MalformedEventError as exc:
            pos = Position(r.partition, r.offset)
            _poison(stats, pos, _reason_at(r.value, r, pos, exc), report)
            continue
        if head.op == "SET" and head.state_text is not None:
            changes.append((r.key, encode_value(head.version, head.state_text)))
        elif head.op == "DELETE":
            changes.append((r.key, None))
    stats.records_applied += len(changes)
    if report:
        metrics.RECORDS_APPLIED.labels(stats.topic).inc(len(changes))
    return changes


_COLON = ord(":")
IDEMPOTENCY_WINDOW = 24 * 3600.0
"""Seconds a write's idempotency key is remembered: a retry within it is recognised."""
_PRUNE_EVERY = 3600.0
_STAMP = struct.Struct(">qq")


def _index_idempotency(r: Record, changes: list[tuple[bytes, bytes | None]]) -> None:
    """Index a write's idempotency key (its position and time) for the write rules."""
    for name, value in r.headers:
        if name == events.IDEMPOTENCY_HEADER:
            key = keys.idempotency_key(r.partition, bytes(value).decode("utf-8", "replace"))
            changes.append((key, _STAMP.pack(r.offset, r.timestamp_ms)))


def _lease_change(
    r: Record, changes: list[tuple[bytes, bytes | None]], stats: ApplierStats, report: bool
) -> None:
    """A lock event's change to its scope's lease: LOCK/RENEW set it, UNLOCK/BREAK drop it."""
    assert r.key is not None
    lease = keys.lease_key(r.key[:-1].decode("utf-8", "replace"))
    if r.value is None:
        changes.append((lease, None))
        stats.lease_changes += 1
        return
    try:
        head = events.summarize(r.value, r.headers)
        data = json.loads(head.state_text or "null")
        if head.op not in ("LOCK", "RENEW") or not isinstance(data, dict):
            raise MalformedEventError(f"a {head.op} event cannot carry a lease")
    except (MalformedEventError, ValueError) as exc:
        pos = Position(r.partition, r.offset)
        _poison(stats, pos, f"unreadable lock event: {exc}", report)
        return
    # A lease's token is its LOCK event's offset; a RENEW names the lease it extends.
    data["token"] = r.offset if head.op == "LOCK" else head.lock_token
    changes.append((lease, json.dumps(data, separators=(",", ":")).encode("utf-8")))
    stats.lease_changes += 1


def prune_idempotency_keys(view: View, now: float) -> int:
    """Forget the idempotency keys recorded more than :data:`IDEMPOTENCY_WINDOW` before ``now``.

    Returns:
        How many were forgotten.
    """
    oldest = (now - IDEMPOTENCY_WINDOW) * 1000
    old = [
        key
        for key, value in view.rules_items(keys.IDEMPOTENCY_PREFIX)
        if _STAMP.unpack_from(value)[1] < oldest
    ]
    if old:
        view.rules_delete(old)
    return len(old)


def _reason_at(value: bytes, r: Record, pos: Position, exc: MalformedEventError) -> str:
    """Why ``r`` is poison, naming ``pos``: decoding is pure, so it fails the same way again."""
    try:
        events.summarize(value, r.headers, pos)
    except MalformedEventError as again:
        return str(again)
    return str(exc)


def _poison(stats: ApplierStats, pos: Position, reason: str, report: bool) -> None:
    stats.poison.append(Poison(pos, reason))
    if report:
        log.warning("skipping unreadable record at %s of the state topic: %s", pos, reason)
        metrics.POISON_RECORDS.labels(stats.topic).inc()


class Applier:
    """The background task that keeps a :class:`View` up to date with the state topic."""

    def __init__(
        self,
        settings: Settings,
        view: View,
        partitions: int,
        *,
        tombstone_retention_ms: int | None = None,
        release: Release | None = None,
    ) -> None:
        """Args:
        settings: connection settings and the state topic.
        view: the view to feed.
        partitions: the state topic's partition count.
        tombstone_retention_ms: the topic's ``delete.retention.ms``; None trusts stored
            offsets however old they are.
        release: called (at most once per partition and ``transaction_timeout``) when a
            reader waits behind a transaction that has held the partition for a while;
            it returns False if it did nothing (the transaction is this process's own).
            None: wait for the broker's transaction timeout.
        """
        self._settings = settings
        self._view = view
        self._partitions = partitions
        self._retention_ms = tombstone_retention_ms
        self._tail: Tail | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied: dict[int, int] = {}
        self._progress = asyncio.Event()
        self._failure: EvstateError | None = None
        self._marks: dict[int, int] | None = None
        self._waiting: dict[int, int] = {}  # partition -> readers waiting for its mark
        self._fetched_at = 0.0  # wall time before the latest fetch
        self._marked_at = 0.0
        self._pruned_at = time.monotonic()  # the first pruning waits an hour
        # Lease changes the view holds, counted; a reader caching leases compares it.
        self.leases_seen = 0
        self._started_at = time.monotonic()
        self._reported_at = 0.0
        self.stats = ApplierStats(settings.state_topic)
        self._held = HeldPartitions(settings, release)

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

    async def start(self, *, just_read: bool = False) -> None:
        """Resume from the view's stored offsets and start applying in the background.

        The first start also takes the start marks (each partition's high watermark).

        Args:
            just_read: the view was read to every partition's end a moment ago (a
                rebuild): resume where it stopped, without asking whether its offsets are
                too old to have seen every tombstone. The check is for a view that was
                offline; a rebuild on a loaded machine can take longer than half of a
                very short ``delete.retention.ms`` to hand over, and must not be read
                again for that.
        """
        if not just_read:
            await self._forget_stale_partitions()
        self._applied = self._view.applied_offsets()
        self._tail = Tail(self._settings, self._settings.state_topic, self._partitions)
        await self._tail.start(self._applied)
        if self._marks is None:
            try:
                self._marks = await self._tail.high_watermarks()
            except BaseException:
                await self._tail.stop()
                raise
            self._started_at = time.monotonic()
        self._failure = None
        self._task = asyncio.create_task(self._run(), name="evstate-applier")

    async def stop(self) -> None:
        """Stop applying; what was applied stays in the view. Idempotent."""
        await self._held.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tail, self._tail = self._tail, None
        if tail is not None:
            with contextlib.suppress(EvstateError):  # best effort: a stale time is only slower
                self._mark_fresh(tail)
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
                # While a reader waits for a partition still short of its start mark,
                # fetch only the partitions readers wait for.
                cold = any(not self.ready_now(p) for p in self._waiting)
                tail.only_fetch(self._waiting if cold else ())
                self._fetched_at = time.time()
                batches = await tail.fetch(0.5)
                await self._apply(tail, batches)
                now = time.monotonic()
                if now - checked > _ALIVE_EVERY:
                    # A deleted view dir still accepts writes (into unlinked files), so
                    # ask the file system instead of waiting for a failed write.
                    self._view.check_alive()
                    checked = now
                if now - self._marked_at > _MARK_EVERY:
                    self._mark_fresh(tail)
                    self._marked_at = now
                if now - self._pruned_at > _PRUNE_EVERY:
                    await asyncio.to_thread(prune_idempotency_keys, self._view, time.time())
                    self._pruned_at = now
                if self._reported_at >= 0 and now - self._reported_at > _PROGRESS_EVERY:
                    self._report_progress(now)
                if self._reported_at >= 0:  # not ready: is a dead writer's transaction
                    stable = tail.last_stable()  # holding a start mark? (held.py)
                    for p, (applied, _) in self.behind().items():
                        if not cold or p in self._waiting:  # fetched: its offset is news
                            self._held.look(p, applied, stable.get(p))
        except asyncio.CancelledError:
            raise
        except EvstateError as exc:
            log.error("the view stopped applying: %s", exc)
            self._failure = exc
            self._notify()

    async def _apply(self, tail: Tail, batches: dict[int, list[Record]]) -> int:
        positions = await tail.positions()
        work = []
        fresh = {}
        size = 0
        for p, next_offset in positions.items():
            records = batches.get(p, [])
            if not records and next_offset == self._applied.get(p, 0):
                continue
            changes = to_changes(records, self.stats)
            size += len(changes)
            work.append((p, next_offset, changes))
            if records:
                fresh[p] = records[-1].timestamp_ms
        if not work:
            return 0
        if size >= _THREAD_BATCH:
            await asyncio.to_thread(self._view.apply_many, work, fresh)
        else:
            self._view.apply_many(work, fresh)
        for p, next_offset, _ in work:
            self._applied[p] = next_offset
        self.leases_seen = self.stats.lease_changes  # published after the view has them
        self._notify()
        return sum(len(b) for b in batches.values())

    # -- start marks and catching up ----------------------------------------------

    def ready_now(self, partition: int) -> bool:
        """True once the view has applied ``partition`` up to its start mark."""
        marks = self._marks
        return marks is None or self._applied.get(partition, 0) >= marks.get(partition, 0)

    def behind(self) -> dict[int, tuple[int, int]]:
        """The partitions not yet at their start mark: ``{partition: (applied, mark)}``."""
        marks = self._marks or {}
        return {
            p: (self._applied.get(p, 0), mark)
            for p, mark in sorted(marks.items())
            if self._applied.get(p, 0) < mark
        }

    async def ready(self, partition: int) -> None:
        """Wait until ``partition`` holds everything committed before this process looked.

        Waits as long as the view keeps applying (a cold start of a large topic takes as
        long as it takes), and fetches the waited-for partitions first meanwhile.

        Raises:
            ConsistencyTimeout: the view made no progress for ``read_timeout``.
            EvstateError: the applier failed.
        """
        if self.ready_now(partition):
            return
        assert self._marks is not None
        await self._wait_progressing(partition, self._marks[partition], None)

    def _report_progress(self, now: float) -> None:
        behind = self.behind()
        if not behind:
            if self._reported_at > 0:  # said it was catching up: say it is done
                log.info(
                    "the view of %s caught up in %.1f s",
                    self._settings.state_topic,
                    now - self._started_at,
                )
            self._reported_at = -1.0  # nothing more to report, ever
            return
        done = sum(min(applied, mark) for applied, mark in behind.values())
        total = sum(mark for _, mark in behind.values())
        log.info(
            "the view of %s is catching up: %d of %d offsets read in partitions %s",
            self._settings.state_topic,
            done,
            total,
            ", ".join(str(p) for p in behind),
        )
        self._reported_at = now

    def _mark_fresh(self, tail: Tail) -> None:
        """Record when each partition at its end last had all its records (see module doc)."""
        at = int(self._fetched_at * 1000)
        if at <= 0:
            return
        times = {
            p: at
            for p, stable in tail.last_stable().items()
            if stable is not None and self._applied.get(p, 0) >= stable
        }
        self._view.mark_fresh(times)

    async def _forget_stale_partitions(self) -> None:
        """Drop the partitions whose offsets are too old to have seen every tombstone."""
        if self._retention_ms is None:
            return
        now_ms = time.time() * 1000
        fresh = self._view.fresh_times()
        stale = {
            p
            for p, offset in self._view.applied_offsets().items()
            if offset > 0 and now_ms - fresh.get(p, 0) >= self._retention_ms / 2
        }
        if not stale:
            return
        log.warning(
            "the view at %s last had all of partitions %s of %s more than half of the "
            "topic's delete.retention.ms (%d ms) ago, so deletes may have been compacted "
            "away since: reading those partitions again from their start",
            self._view.path,
            ", ".join(str(p) for p in sorted(stale)),
            self._settings.state_topic,
            self._retention_ms,
        )
        count = self._partitions

        def partition_of(record_key: bytes) -> int:
            if record_key[:1] == b"\x00":
                return keys.meta_partition(record_key, count)
            path, sep, _ = record_key.partition(b":")
            if not sep:
                return -1
            return keys.partition_for(path.decode("utf-8", "replace"), count)

        await asyncio.to_thread(self._view.drop_partitions, stale, partition_of)
        self.stats.lease_changes += 1
        self.leases_seen = self.stats.lease_changes

    async def _wait_progressing(
        self, partition: int, position: int, deadline: float | None
    ) -> None:
        """:meth:`wait_until` for as long as the view keeps applying (or until ``deadline``)."""
        while True:
            before = self.stats.records_applied, self._applied.get(partition, 0)
            step = self._settings.read_timeout
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            try:
                await self.wait_until(partition, position, step)
                return
            except ConsistencyTimeout:
                now = self.stats.records_applied, self._applied.get(partition, 0)
                if now == before or (deadline is not None and time.monotonic() >= deadline):
                    raise

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
        now = time.monotonic()
        deadline, look_from = now + limit, now + LOOK_EVERY  # most waits end before
        self._waiting[partition] = self._waiting.get(partition, 0) + 1
        try:
            while self._applied.get(partition, 0) < position:
                if self._failure is not None:
                    raise self._failure
                now = time.monotonic()
                left = deadline - now
                held_at = None
                if now >= look_from or left <= 0:
                    stable = self._tail.last_stable().get(partition) if self._tail else None
                    held_at = self._held.look(partition, self._applied.get(partition, 0), stable)
                if left <= 0:
                    raise ConsistencyTimeout(
                        partition=partition,
                        wanted=position - 1,
                        reached=self._applied.get(partition, 0) - 1,
                        timeout=limit,
                        held_at=held_at,
                        transaction_timeout=self._settings.transaction_timeout,
                    )
                with contextlib.suppress(TimeoutError):  # not wait_for: 1 loop turn, not 3
                    async with asyncio.timeout(min(left, LOOK_EVERY)):
                        await self._progress.wait()
        finally:
            waiting = self._waiting[partition] - 1
            if waiting:
                self._waiting[partition] = waiting
            else:
                del self._waiting[partition]

    async def end_offset(self, partition: int) -> int:
        """The partition's end, asked of the broker now: once the view's position reaches
        it, every write acknowledged before this call is applied (see
        :meth:`~evstate.kafka.Tail.high_watermarks`)."""
        assert self._tail is not None
        return (await self._tail.high_watermarks())[partition]

    async def catch_up(self, timeout: float | None = None) -> None:
        """Wait until the view has applied everything committed when this was called.

        A bulk catch-up can take long: without ``timeout`` it waits as long as the view
        keeps applying, and gives up after ``read_timeout`` without any progress.
        """
        assert self._tail is not None
        ends = await self._tail.high_watermarks()
        deadline = None if timeout is None else time.monotonic() + timeout
        for p, end in ends.items():
            await self._wait_progressing(p, end, deadline)

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
            asked_at = int(time.time() * 1000)
            ends = await tail.end_offsets()
            starts = await tail.positions()
            total = sum(max(0, ends[p] - starts[p]) for p in ends)
            self._applied = {}
            if progress is not None:
                progress(0, total)
            while any(self._applied.get(p, starts[p]) < ends[p] for p in ends):
                self._fetched_at = time.time()
                read += await self._apply(tail, await tail.fetch(0.5, max_records=5_000))
                if progress is not None:  # records of the topic, the layout marker aside
                    progress(min(read - self.stats.markers, total), total)
            self._view.mark_fresh(dict.fromkeys(ends, asked_at))
            # The partitions at their end as of the last fetch are fresh as of then (for
            # the next start of a process on this view).
            self._mark_fresh(tail)
        finally:
            await tail.stop()
        self.stats.lease_changes += 1
        self.leases_seen = self.stats.lease_changes
        await self.start(just_read=True)
        return read - self.stats.markers  # records of the topic, the layout marker aside

    def check(self) -> None:
        """Raise the applier's failure (a vanished view dir, a closed client), if any."""
        if self._failure is not None:
            raise self._failure
