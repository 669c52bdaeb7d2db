"""Getting events acknowledged: the records of an event, their size check, group commit.

With history on (the default), an event becomes two records — one in the compacted state
topic, one in the append-only history topic — written in one Kafka transaction, so
neither topic ever holds an event the other lacks. Writers that call at the same time
share a transaction (group commit): while one transaction is in flight, new events queue,
and the next transaction takes them all. A lone write pays one transaction; 64 concurrent
writers pay a few.

With history off, an event is one record sent by the idempotent producer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

from evstate import events, keys, metrics
from evstate.config import Settings
from evstate.errors import EventTooLargeError
from evstate.log import RECORD_OVERHEAD, OutRecord, Producer, TransactionalProducer
from evstate.model import ChangeEvent, Position, Scope

# Events per transaction at most; more wait for the next one.
MAX_GROUP = 500


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
        self._txn: TransactionalProducer | None = None
        self._queue: list[tuple[list[OutRecord], asyncio.Future[Position]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect the producer the settings call for."""
        if self._settings.history:
            self._txn = TransactionalProducer(
                self._settings, transactional_id(self._settings), max_request_size=self._max_bytes
            )
            await self._txn.start()
        else:
            self._producer = Producer(self._settings, max_request_size=self._max_bytes)
            await self._producer.start()

    async def stop(self) -> None:
        """Let queued writes finish, then disconnect. Idempotent."""
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._txn is not None:
            await self._txn.stop()
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
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="evstate-commit")
        return await done

    async def _commit_queued(self) -> None:
        while self._queue:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            flat = [r for records, _ in group for r in records]
            assert self._txn is not None
            try:
                positions = await self._txn.commit(flat)
            except Exception as exc:  # every waiter gets the failure, typed by log.py
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            i = 0
            for records, done in group:
                if not done.done():  # the caller may have been cancelled
                    done.set_result(Position(*positions[i]))
                i += len(records)
