"""Getting events decided and acknowledged: one sequencer per partition, fenced by Kafka.

Every write goes through its partition's *sequencer*. A sequencer owns a transactional id
shared by every evstate process writing to the topics (``{base}-p{N}``): registering it
fences whichever process used it before, so at any moment at most one process can commit
to the partition. Having registered it, the
sequencer waits until the view holds everything committed to the partition (its high
watermark), then decides each queued event against it with :mod:`evstate.rules` —
locks, compare-and-set, idempotency, the key's next version — and writes the accepted
ones in one transaction (group commit: up to 500 events per transaction, state and
history records together). Its own commits since are kept in an overlay, so the next
batch needs no wait. If another process took the ids meanwhile, the commit fails as
fenced, nothing of it is visible, and the sequencer registers again, catches up and
decides the batch again. Every record in the log was thus decided against every record
before it: the log's order is the decision's order.

One id, not a pool taking turns: two processes registering two ids at once can each end
up holding one, and both commit (a test saw lost compare-and-set updates that way). So a
lone writer's next transaction may find the previous one's commit markers unwritten
(CONCURRENT_TRANSACTIONS, KAFKA-5477). The partition's producer therefore opens the next
transaction as soon as one commits, and has its partitions added meanwhile
(:class:`~evstate.kafka.TransactionalProducer`): that wait falls between writes. An idle
sequencer aborts that open transaction after a third of ``transaction_timeout``; if the
abort fails, the producer is dropped and the sequencer registers again and catches up
before deciding anything. One transaction is in flight per partition at a time (a batch
is decided on the previous one's effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from evstate import events, keys, metrics, rules
from evstate.config import Settings
from evstate.errors import EventTooLargeError, EvstateError, WriteFailedError, WriterFencedError
from evstate.fencing import lane_id
from evstate.kafka import RECORD_OVERHEAD, OutRecord, TransactionalProducer
from evstate.model import LOCK_OPS, ChangeEvent, Lease, Op, Position, Scope, Tree, new_event_id

__all__ = ["Intent", "Outcome", "Writer"]

# Events per transaction at most; more wait for the next one.
MAX_GROUP = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """A write as asked for, before it is decided (version, lock checks, token)."""

    op: Op
    scope: Scope
    key: str  # "" for a lock event
    state: Tree | None = None
    actor: str
    reason: str | None = None
    correlation_id: str | None = None
    expected_version: int | None = None
    lock_token: int | None = None
    idempotency_key: str | None = None
    ttl: float | None = None  # LOCK, RENEW: seconds
    info: dict[str, Any] | None = None  # LOCK
    on_behalf_of: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an intent.

    ``position`` is None for a no-op (a DELETE of a key with no state); ``duplicate`` is
    True when an earlier write with the same idempotency key answered it (``event`` is
    then None and nothing was written).
    """

    position: Position | None
    version: int
    event: ChangeEvent | None
    lease: Lease | None = None
    duplicate: bool = False


Ledger = rules.Ledger


@dataclass
class _Overlay:
    """This sequencer's commits not yet known to be in the view, over the view's ledger.

    Entries carry the offset they were committed at, so those the view has applied can
    be dropped; a tentative layer (a batch being decided) is merged only once committed.
    """

    base: Ledger
    partition: int
    versions: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    leases: dict[str, tuple[Lease | None, int]] = field(default_factory=dict)
    written: dict[str, tuple[Position, int]] = field(default_factory=dict)

    def version(self, record_key: bytes) -> int:
        mine = self.versions.get(record_key)
        return mine[0] if mine is not None else self.base.version(record_key)

    def leases_in(self, stage: str) -> list[Lease]:
        changed = ((path, lease) for path, (lease, _) in self.leases.items())
        return _layered(self.base.leases(stage), changed, stage)

    def idempotent(self, key: str) -> Position | None:
        mine = self.written.get(key)
        return mine[0] if mine is not None else self.base.written(self.partition, key)

    def forget_applied(self, applied: int) -> None:
        """Drop entries the view has applied (their offset is below ``applied``)."""
        _forget(self.versions, applied)
        _forget(self.leases, applied)
        _forget(self.written, applied)


def _layered(
    below: Iterable[Lease], changed: Iterable[tuple[str, Lease | None]], stage: str
) -> list[Lease]:
    """The leases of ``stage``: those ``below``, with the ``changed`` ones over them."""
    found = {lease.scope: lease for lease in below}
    for path, lease in changed:
        if keys.stage_of(path) == stage:
            if lease is None:
                found.pop(path, None)
            else:
                found[path] = lease
    return list(found.values())


def _forget(table: dict[Any, tuple[Any, int]], applied: int) -> None:
    for key in [k for k, v in table.items() if v[1] < applied]:
        del table[key]


class _Tentative:
    """The ledger while a batch is decided: the overlay plus the batch's earlier events."""

    def __init__(self, overlay: _Overlay) -> None:
        self.overlay = overlay
        self.versions: dict[bytes, int] = {}
        self.leases: dict[str, Lease | None] = {}
        self.written: dict[str, int] = {}  # idempotency key -> index in the batch

    def version(self, record_key: bytes) -> int:
        mine = self.versions.get(record_key)
        return mine if mine is not None else self.overlay.version(record_key)

    def leases_in(self, stage: str) -> list[Lease]:
        return _layered(self.overlay.leases_in(stage), self.leases.items(), stage)


@dataclass
class _Pending:
    intent: Intent
    done: asyncio.Future[Outcome]
    queued_at: float = field(default_factory=time.monotonic)
    fenced: int = 0


class _Sequencer:
    """One partition's writer: owns its transactional ids, decides, commits."""

    def __init__(self, writer: Writer, partition: int) -> None:
        self._writer = writer
        self.partition = partition
        settings = writer.settings
        ahead = [(settings.state_topic, partition)]
        if settings.history:
            ahead.append((settings.history_topic, partition))
        self._lane = TransactionalProducer(
            settings, lane_id(settings, partition), max_request_size=writer.max_bytes, ahead=ahead
        )
        self._wake = asyncio.Event()
        self._owned = False
        self._fresh = False  # the view was just caught up to the partition's end
        # The partition's end if nobody else wrote since this sequencer caught up or last
        # committed (its records, then their commit marker); None: unknown.
        self._expected_end: int | None = None
        self.queue: deque[_Pending] = deque()
        self.committing = False  # a transaction of this sequencer is being written
        self.task: asyncio.Task[None] | None = None
        self.overlay = _Overlay(writer.ledger, partition)

    async def stop(self) -> None:
        await self._lane.stop()

    def wake(self) -> None:
        self._wake.set()

    def kick(self) -> None:
        self.wake()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"evstate-write-p{self.partition}")

    async def _run(self) -> None:
        while True:
            await self._drain()
            # The lane keeps the next transaction open (its partitions added) for the
            # next write; once idle for a while it is aborted, well within the broker's
            # transaction timeout.
            if not self._lane.opened_ahead or self._writer.closing:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._writer.settings.transaction_timeout / 3):
                    await self._wake.wait()
            if self.queue:
                continue
            await self._lane.close_ahead()
            self._expected_end = None  # the abort's marker is in the partition
            if not self._lane.registered:  # the abort failed: fenced meanwhile?
                self._lost()
            if not self.queue:
                return

    async def _drain(self) -> None:
        while self.queue:
            group = [self.queue.popleft() for _ in range(min(MAX_GROUP, len(self.queue)))]
            group = [p for p in group if not p.done.done()]  # callers may have given up
            if not group:
                continue
            try:
                if not (self._owned and self._lane.registered):
                    await self._own()
                await self._commit(group)
            except WriterFencedError as exc:
                self._lost()
                again = [p for p in group if not p.done.done()]
                limit = self._writer.settings.request_timeout
                for p in again:
                    p.fenced += 1
                    if time.monotonic() - p.queued_at > limit:
                        p.done.set_exception(
                            WriteFailedError(
                                f"{exc}; other writers kept taking partition {self.partition} "
                                f"for {limit:g}s ({p.fenced} times): nothing was written, "
                                "retry later"
                            )
                        )
                self.queue.extendleft(reversed([p for p in again if not p.done.done()]))
                # Writers that fence each other back off at random, so one gets through.
                await asyncio.sleep(random.uniform(0.002, 0.01) * min(10, group[0].fenced))
            except BaseException as exc:
                # Not acknowledged (or unknown): the overlay may hold what was not written.
                self._lost()
                failure: BaseException = exc
                if not isinstance(exc, EvstateError):  # a bug or a cancellation: say so
                    failure = WriteFailedError(f"the write failed unexpectedly: {exc!r}")
                    failure.__cause__ = exc
                for p in group:
                    if not p.done.done():
                        p.done.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise

    def _lost(self) -> None:
        self._owned = False
        self.overlay = _Overlay(self._writer.ledger, self.partition)

    async def _own(self) -> None:
        """Register the id (fencing every other writer), then catch the view up."""
        await self._lane.restart()
        self._expected_end = await self._writer.catch_up(self.partition)
        self.overlay = _Overlay(self._writer.ledger, self.partition)
        self._owned = True
        self._fresh = True

    async def _commit(self, group: list[_Pending]) -> None:
        # What is answered without writing (a refusal, a no-op) is decided on the view as
        # it is; if another process took the partition unnoticed, that view may be behind.
        # So such an answer is confirmed on a view caught up to the partition's end.
        confirmed = self._fresh
        self._fresh = False
        while True:
            tentative = _Tentative(self.overlay)
            now = datetime.now(UTC)
            planned: list[tuple[_Pending, ChangeEvent, int]] = []  # (pending, event, records)
            records: list[OutRecord] = []
            answered: list[tuple[_Pending, Outcome | int]] = []  # no-ops, duplicates
            refused: list[tuple[_Pending, EvstateError]] = []
            for p in group:
                try:
                    decided = self._writer.decide(p.intent, tentative, now, len(planned))
                except EvstateError as error:
                    refused.append((p, error))
                    continue
                if isinstance(decided, Outcome | int):
                    answered.append((p, decided))
                    continue
                event, out = decided
                planned.append((p, event, len(out)))
                records.extend(out)
            unwritten = refused or any(
                isinstance(a, Outcome) and not a.duplicate for _, a in answered
            )
            if confirmed or not unwritten:
                break
            confirmed = True
            # Nobody else wrote if the partition ends where this sequencer left it: the
            # ledger was complete, and the answers stand. Else catch up and decide again.
            end = await self._writer.end_offset(self.partition)
            if self._expected_end is not None and end <= self._expected_end:
                break
            self._expected_end = await self._writer.catch_up(self.partition)
            self.overlay = _Overlay(self._writer.ledger, self.partition)
        positions: list[tuple[int, int]] = []
        if records:
            lane = self._lane
            self._expected_end = None  # unknown until this commit is known to have ended
            self.committing = True
            try:
                positions = await lane.commit(records)
            finally:
                self.committing = False
            state_topic = self._writer.settings.state_topic
            last = max(
                o for r, (_, o) in zip(records, positions, strict=True) if r.topic == state_topic
            )
            self._expected_end = last + 2  # the commit marker follows the last record
        outcomes: list[Outcome] = []
        i = 0
        for p, event, count in planned:
            position = Position(*positions[i])
            i += count
            outcome = self._merge(event, position, tentative)
            outcomes.append(outcome)
            if not p.done.done():
                p.done.set_result(outcome)
        # Refusals and answers are given once the batch is committed: they were decided on
        # the batch's earlier events, and a caller who retries must see those applied.
        for p, refusal in refused:
            if not p.done.done():
                p.done.set_exception(refusal)
        for p, answer in answered:
            if p.done.done():
                continue
            if isinstance(answer, int):  # a retry of an event earlier in this batch
                first = outcomes[answer]
                answer = Outcome(first.position, first.version, None, first.lease, True)
            p.done.set_result(answer)
        applied = self._writer.applied(self.partition)
        if applied is not None:
            self.overlay.forget_applied(applied)

    def _merge(self, event: ChangeEvent, position: Position, tentative: _Tentative) -> Outcome:
        """Record a committed event in the overlay; its outcome."""
        offset = position.offset
        path = "/".join(event.scope)
        if event.idempotency_key is not None:
            self.overlay.written[event.idempotency_key] = (position, offset)
        if event.op in LOCK_OPS:
            lease: Lease | None = None
            if event.op in ("LOCK", "RENEW"):
                token = offset if event.op == "LOCK" else event.lock_token
                assert event.state is not None
                assert token is not None
                lease = Lease.from_json(event.state, token=token)
            self.overlay.leases[path] = (lease, offset)
            return Outcome(position, 0, event, lease)
        rk = keys.record_key(Scope(*event.scope), event.key).encode("utf-8")
        version = event.version if event.op == "SET" else 0
        self.overlay.versions[rk] = (version, offset)
        return Outcome(position, event.version, event)


class Writer:
    """Turns intents into decided, acknowledged records; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        partitions: int,
        max_bytes: int,
        ledger: Ledger,
        catch_up: Callable[[int], Awaitable[int]],
        end_offset: Callable[[int], Awaitable[int]],
        applied: Callable[[int], int | None],
    ) -> None:
        """Args:
        settings: the client's settings.
        partitions: partitions of the state (and history) topic.
        max_bytes: the topics' ``max.message.bytes``.
        ledger: the view's side of the write rules.
        catch_up: waits until the view holds everything committed to a partition; the
            partition's end it caught up to.
        end_offset: a partition's end (high watermark), asked of the broker now.
        applied: the view's position in a partition (its next offset), if known.
        """
        self.settings = settings
        self.max_bytes = max_bytes
        self.ledger = ledger
        self.catch_up = catch_up
        self.end_offset = end_offset
        self.applied = applied
        self._partitions = partitions
        self._sequencers: dict[int, _Sequencer] = {}
        self._closing = False

    async def start(self) -> None:
        """Nothing to connect up front: a partition's ids are registered at its first write."""

    def committing(self, partition: int) -> bool:
        """Whether this writer has a commit in flight in ``partition``."""
        sequencer = self._sequencers.get(partition)
        return sequencer is not None and sequencer.committing

    @property
    def closing(self) -> bool:
        """Whether :meth:`stop` was called: sequencers finish what is queued and end."""
        return self._closing

    async def stop(self) -> None:
        """Let queued writes finish, then disconnect. Idempotent."""
        self._closing = True
        sequencers = list(self._sequencers.values())
        for s in sequencers:
            s.wake()  # an idle one is waiting for work: let it see the close
        tasks = [s.task for s in sequencers if s.task is not None]
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for s in sequencers:
            await s.stop()
        self._sequencers.clear()

    def records(self, scope: Scope, event: ChangeEvent) -> list[OutRecord]:
        """The records of ``event``: state topic first, then history (if on).

        Raises:
            EventTooLargeError: a record would be over the topics' limit; nothing is sent.
            UnserializableError, SerdeError: the event does not encode.
        """
        if event.op in LOCK_OPS:
            key = keys.lock_record_key(scope.path)
        else:
            key = keys.record_key(scope, event.key).encode("utf-8")
        partition = keys.partition_for(scope, self._partitions)
        encoded = events.encode(event)  # once: the history record is the same bytes
        value, headers = events.state_record(event, encoded)
        out = [OutRecord(self.settings.state_topic, partition, key, value, headers)]
        if self.settings.history:
            full, full_headers = encoded
            out.append(OutRecord(self.settings.history_topic, partition, key, full, full_headers))
        limit = self.max_bytes - RECORD_OVERHEAD
        for record in out:
            size = (
                len(record.key)
                + sum(len(k) + len(v) for k, v in record.headers)
                + len(record.value or b"")
            )
            if size > limit:
                raise EventTooLargeError(
                    f"the event for {key.decode()!r} is {size} bytes, over the limit of "
                    f"{limit} of {record.topic} (max.message.bytes); nothing was written: "
                    "store less in the state",
                    size=size,
                    limit=limit,
                )
        return out

    async def write(self, intent: Intent) -> Outcome:
        """Decide ``intent`` in log order and write it; wait until Kafka acknowledged it.

        Raises:
            LockHeldError, FencedError, NoSuchLeaseError, ConflictError: refused by the
                rules; nothing was written.
            EventTooLargeError: before anything is sent.
            WriteFailedError, BrokerUnavailableError: not acknowledged; nothing of the
                event is visible, or (on a timeout) it may be: retry with the same
                idempotency key.
        """
        partition = keys.partition_for(intent.scope, self._partitions)
        sequencer = self._sequencers.get(partition)
        if sequencer is None:
            sequencer = self._sequencers[partition] = _Sequencer(self, partition)
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        sequencer.queue.append(_Pending(intent, done))
        sequencer.kick()
        with metrics.timed_write(self.settings.state_topic):
            return await done

    # -- deciding ----------------------------------------------------------------------

    def decide(
        self, intent: Intent, ledger: _Tentative, now: datetime, index: int
    ) -> tuple[ChangeEvent, list[OutRecord]] | Outcome | int:
        """Decide one intent against the ledger as of just before it.

        Returns:
            The event to write and its records (the ledger updated as if it were), or the
            answer without
            writing: an :class:`Outcome` (a no-op, or a duplicate of a committed write),
            or the batch index of the earlier event this one duplicates.

        Raises:
            The rules' refusals (LockHeldError, FencedError, ...), ConflictError.
        """
        idem = intent.idempotency_key
        if idem is not None:
            earlier = ledger.written.get(idem)
            if earlier is not None:
                return earlier
            committed = ledger.overlay.idempotent(idem)
            if committed is not None:
                return Outcome(committed, 0, None, None, True)
        path = intent.scope.path
        stage = keys.stage_of(path)
        leases = ledger.leases_in(stage)
        if intent.op in LOCK_OPS:
            event = self._decide_lock(intent, path, leases, now)
            out = self.records(intent.scope, event)
            token = event.lock_token if event.lock_token is not None else -1
            ledger.leases[path] = (
                Lease.from_json(event.state, token=token) if event.state is not None else None
            )
        else:
            verb = "set" if intent.op == "SET" else "delete"
            rules.check_write(path, intent.lock_token, leases, now, verb)
            rk = keys.record_key(intent.scope, intent.key).encode("utf-8")
            actual = ledger.version(rk)
            rules.check_version(path, intent.key, intent.expected_version, actual)
            if intent.op == "DELETE" and actual == 0:
                return Outcome(None, 0, None)  # nothing to delete
            event = self._event(intent, version=actual + 1, now=now)
            out = self.records(intent.scope, event)
            ledger.versions[rk] = actual + 1 if intent.op == "SET" else 0
        if idem is not None:
            ledger.written[idem] = index
        return event, out

    def _decide_lock(
        self, intent: Intent, path: str, leases: list[Lease], now: datetime
    ) -> ChangeEvent:
        if intent.op == "LOCK":
            rules.check_lock(path, leases, now)
            assert intent.ttl is not None
            lease = Lease(
                scope=path,
                token=-1,  # the LOCK event's offset, known once written
                holder=intent.actor,
                info=intent.info or {},
                acquired_at=now,
                expires_at=now + timedelta(seconds=intent.ttl),
            )
            return self._event(intent, state=lease.to_json(with_token=False), now=now)
        assert intent.lock_token is not None
        verb = {"RENEW": "renew", "UNLOCK": "unlock", "BREAK": "break"}[intent.op]
        held = rules.check_release(path, intent.lock_token, leases, verb)
        if intent.op != "RENEW":
            return self._event(intent, now=now)
        assert intent.ttl is not None
        renewed = Lease(
            scope=path,
            token=held.token,
            holder=held.holder,
            info=held.info,
            acquired_at=held.acquired_at,
            expires_at=now + timedelta(seconds=intent.ttl),
        )
        return self._event(intent, state=renewed.to_json(with_token=False), now=now)

    @staticmethod
    def _event(
        intent: Intent, *, now: datetime, version: int = 0, state: Tree | None = None
    ) -> ChangeEvent:
        return ChangeEvent(
            event_id=new_event_id(),
            op=intent.op,
            scope=intent.scope.chain,
            key=intent.key,
            state=state if state is not None else intent.state,
            version=version,
            expected_version=intent.expected_version,
            timestamp=now.replace(microsecond=now.microsecond // 1000 * 1000),
            actor=intent.actor,
            reason=intent.reason,
            correlation_id=intent.correlation_id,
            lock_token=intent.lock_token,
            idempotency_key=intent.idempotency_key,
            on_behalf_of=intent.on_behalf_of,
        )
