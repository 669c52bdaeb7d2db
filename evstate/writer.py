"""Getting events acknowledged: the records of an event, their size check, group commit.

With history on (the default), an event becomes two records — one in the compacted state
topic, one in the append-only history topic — written in one Kafka transaction, so
neither topic ever holds an event the other lacks. Writers that call at the same time
share a transaction (group commit): while the transactions are in flight, new events
queue, and the next transaction takes them all. A lone write pays one transaction; 64
concurrent writers pay a few.

Two transactional producers take turns, the one idle longest first. After a commit the
broker answers CONCURRENT_TRANSACTIONS to the same transactional id until the commit's
markers are written (KAFKA-5477), and aiokafka then backs off 20 ms: a lone writer's
next transaction goes to the other producer, whose markers were written long ago. Both
transactional ids are stable per host and view dir, so a restarted writer fences both.

With history off, an event is one record sent by the idempotent producer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import deque

from evstate import events, keys, metrics
from evstate.config import Settings
from evstate.errors import EventTooLargeError
from evstate.kafka import RECORD_OVERHEAD, OutRecord, Producer, TransactionalProducer
from evstate.model import ChangeEvent, Position, Scope

# Events per transaction at most; more wait for the next one.
MAX_GROUP = 500
# Transactional producers taking turns (see the module docstring).
LANES = 2


def transactional_id(settings: Settings) -> str:
    """The writer's transactional id: the setting, or one stable per host and view dir.

    Stable across restarts, so a restarted writer fences its dead predecessor and the
    broker aborts the predecessor's open transaction at once instead of after
    ``transaction_timeout``; distinct per view dir, which one process owns at a time.
    """
    if settings.transactional_id:
        return settings.transactional_id
    where = f"{socket.gethostname()}:{os.path.realpath(settings.view_dir)}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return f"evstate-{settings.topic_prefix}-{digest}"


class Writer:
    """Turns events into acknowledged records; see the module docstring."""

    def __init__(self, settings: Settings, *, partitions: int, max_bytes: int) -> None:
        """Args:
        settings: the client's settings.
        partitions: partitions of the state (and history) topic.
        max_bytes: the topics' ``max.message.bytes``.
        """
        self._settings = settings
        self._partitions = partitions
        self._max_bytes = max_bytes
        # Only the producer the settings call for is made: an unstarted one would linger.
        self._producer: Producer | None = None
        self._txns: list[TransactionalProducer] = []
        self._idle: deque[TransactionalProducer] = deque()  # longest idle first
        self._queue: list[tuple[list[OutRecord], asyncio.Future[Position]]] = []
        self._committing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect the producer(s) the settings call for."""
        if self._settings.history:
            base = transactional_id(self._settings)
            self._txns = [
                TransactionalProducer(
                    self._settings,
                    base if lane == 0 else f"{base}-{lane}",
                    max_request_size=self._max_bytes,
                )
                for lane in range(LANES)
            ]
            await asyncio.gather(*(txn.start() for txn in self._txns))
            self._idle.extend(self._txns)
        else:
            self._producer = Producer(self._settings, max_request_size=self._max_bytes)
            await self._producer.start()

    async def stop(self) -> None:
        """Let queued writes finish, then disconnect. Idempotent."""
        while self._committing:
            await asyncio.gather(*self._committing, return_exceptions=True)
        for txn in self._txns:
            await txn.stop()
        if self._producer is not None:
            await self._producer.stop()

    def records(self, scope: Scope, event: ChangeEvent) -> list[OutRecord]:
        """The records of ``event``: state topic first, then history (if on).

        Raises:
            EventTooLargeError: a record would be over the topics' limit; nothing is sent.
            UnserializableError, SerdeError: the event does not encode.
        """
        key = keys.record_key(scope, event.key).encode("utf-8")
        partition = keys.partition_for(scope, self._partitions)
        encoded = events.encode(event)  # once: the history record is the same bytes
        value, headers = events.state_record(event, encoded)
        out = [OutRecord(self._settings.state_topic, partition, key, value, headers)]
        if self._settings.history:
            full, full_headers = encoded
            out.append(OutRecord(self._settings.history_topic, partition, key, full, full_headers))
        limit = self._max_bytes - RECORD_OVERHEAD
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

    async def write(self, scope: Scope, event: ChangeEvent) -> Position:
        """Write ``event`` and wait until Kafka acknowledged it (committed, with history).

        Returns:
            The event's position in the state topic.

        Raises:
            EventTooLargeError: before anything is sent.
            WriteFailedError, BrokerUnavailableError: not acknowledged; with history on,
                nothing of the event is visible.

        Each write is counted (``evstate_writes_total`` by outcome) and timed.
        """
        with metrics.timed_write(self._settings.state_topic):
            return await self._write(scope, event)

    async def _write(self, scope: Scope, event: ChangeEvent) -> Position:
        records = self.records(scope, event)
        if self._producer is not None:
            state = records[0]
            p, offset = await self._producer.send(
                state.topic, state.partition, state.key, state.value, state.headers
            )
            return Position(p, offset)
        done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        self._dispatch()
        return await done

    def _dispatch(self) -> None:
        """Hand queued events to idle producers, one transaction each."""
        while self._queue and self._idle:
            txn = self._idle.popleft()
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            task = asyncio.create_task(self._commit(txn, group), name="evstate-commit")
            self._committing.add(task)
            task.add_done_callback(self._committing.discard)

    async def _commit(
        self,
        txn: TransactionalProducer,
        group: list[tuple[list[OutRecord], asyncio.Future[Position]]],
    ) -> None:
        try:
            flat = [r for records, _ in group for r in records]
            try:
                positions = await txn.commit(flat)
            except Exception as exc:  # every waiter gets the failure, typed by evstate.kafka
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                return
            i = 0
            for records, done in group:
                if not done.done():  # the caller may have been cancelled
                    done.set_result(Position(*positions[i]))
                i += len(records)
        finally:
            self._idle.append(txn)
            self._dispatch()
