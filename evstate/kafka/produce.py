"""Writing: an idempotent producer, and a transactional one for atomic multi-topic batches.

Contract of both: a write returns only once Kafka acknowledged it, within
``request_timeout``; otherwise it raises :class:`WriteFailedError` (retriable),
:class:`EventTooLargeError` or :class:`BrokerUnavailableError` (see ``_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as kerr
import aiokafka.producer.sender as ksender
from aiokafka import AIOKafkaProducer

from evstate.config import Settings
from evstate.kafka._connect import abandon, client_options, start_within
from evstate.kafka._errors import write_errors

Headers = Sequence[tuple[str, bytes]]

# Kafka's default max.message.bytes; the producer is allowed the same.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Room for the record batch header, key, headers and varints around a value.
RECORD_OVERHEAD = 512
# Records of one partition sent in one batch at most (aiokafka's default is 16 KiB, about
# nine states): concurrent writers then share a request instead of queueing behind one.
# Never above the topic's max.message.bytes, which limits a whole batch.
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to write."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None
    headers: Headers


class Producer:
    """An idempotent ``acks=all`` producer.

    Contract: :meth:`send` returns only once every in-sync replica has the record; it
    raises :class:`WriteFailedError` (retriable) when the broker did not acknowledge in
    ``request_timeout``, :class:`EventTooLargeError` when the broker refused the size.
    """

    def __init__(self, settings: Settings, *, max_request_size: int = DEFAULT_MAX_MESSAGE_BYTES):
        """Args:
        settings: connection settings.
        max_request_size: the largest record the producer may send.
        """
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_batch_size=min(BATCH_BYTES, max_request_size),
            max_request_size=max_request_size,
        )

    async def start(self) -> None:
        """Connect; BrokerUnavailableError within ``connect_timeout`` if nothing answers."""
        await start_within(self._settings, self._producer)

    async def stop(self) -> None:
        """Flush and disconnect; idempotent."""
        with contextlib.suppress(kerr.KafkaError):
            await self._producer.stop()

    async def send(
        self, topic: str, partition: int, key: bytes, value: bytes | None, headers: Headers
    ) -> tuple[int, int]:
        """Write one record and wait for its acknowledgement.

        Returns:
            ``(partition, offset)`` of the record.

        Raises:
            EventTooLargeError, WriteFailedError, BrokerUnavailableError.
        """
        where = f"{topic}[{partition}]"
        async with (
            write_errors(self._settings, where, [(topic, partition)], len(value or b"")),
            # aiokafka's idempotent producer retries a batch forever: bound the wait.
            asyncio.timeout(self._settings.request_timeout),
        ):
            meta = await self._producer.send_and_wait(
                topic, value=value, key=key, partition=partition, headers=list(headers)
            )
        return meta.partition, meta.offset

    async def send_many(self, records: Sequence[OutRecord]) -> None:
        """Write records together (aiokafka batches them per partition) and wait until
        every one is acknowledged.

        Raises:
            EventTooLargeError, WriteFailedError, BrokerUnavailableError: as :meth:`send`;
                some of the records may have been written.
        """
        if not records:
            return
        where = ", ".join(sorted({f"{r.topic}[{r.partition}]" for r in records}))
        places = sorted({(r.topic, r.partition) for r in records})
        biggest = max(len(r.value or b"") for r in records)
        futures: list[asyncio.Future[Any]] = []
        try:
            async with (
                write_errors(self._settings, where, places, biggest),
                asyncio.timeout(self._settings.request_timeout),
            ):
                for r in records:
                    futures.append(
                        await self._producer.send(
                            r.topic,
                            value=r.value,
                            key=r.key,
                            partition=r.partition,
                            headers=list(r.headers),
                        )
                    )
                await asyncio.gather(*futures)
        finally:
            for future in futures:
                future.add_done_callback(_seen)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(producer: AIOKafkaProducer) -> None:
    """Mark a dead producer's failed transaction future as seen.

    When the broker fences a producer, aiokafka fails its transaction future, which
    nobody awaits once the producer is dropped; asyncio would log it as "Future exception
    was never retrieved", with a traceback, for a fencing evstate expects and handles.
    """
    manager = getattr(producer, "_txn_manager", None)
    waiters = [getattr(manager, "_transaction_waiter", None)]
    # aiokafka 0.14 also fails each open batch's drain waiter, which only a flush awaits.
    accumulator = getattr(producer, "_message_accumulator", None)
    for batches in getattr(accumulator, "_batches", {}).values():
        waiters.extend(getattr(batch, "_drain_waiter", None) for batch in batches)
    for batch in getattr(accumulator, "_pending_batches", ()):
        waiters.append(getattr(batch, "_drain_waiter", None))
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
            waiter.exception()


# A transaction begun right after the previous one's commit finds its first partition
# refused with CONCURRENT_TRANSACTIONS until the commit markers are written (KAFKA-5477);
# aiokafka then retries after a fixed 20 ms, which on loopback is five times a whole
# transaction. The markers take about a millisecond, so the first add is retried after 1.
FIRST_ADD_RETRY = 0.001


def _quick_first_add() -> None:
    """Make aiokafka retry a refused first add-partitions after ``FIRST_ADD_RETRY``.

    aiokafka reads this back-off from a module constant (``BACKOFF_OVERRIDE``) on every
    refusal; it has no setting for it. The attribute's presence is asserted by a unit
    test, so an aiokafka that drops it fails the build, not the latency.
    """
    ksender.BACKOFF_OVERRIDE = FIRST_ADD_RETRY


class TransactionalProducer:
    """Writes batches of records atomically: all of them become visible, or none.

    Contract: :meth:`commit` returns ``(partition, offset)`` per record once the
    transaction is committed; on any failure the transaction is aborted (or left to the
    broker's transaction timeout), nothing of it is visible to ``read_committed`` readers,
    and :class:`WriteFailedError` (or :class:`EventTooLargeError`) is raised. It never
    waits longer than ``request_timeout`` plus a little. After a failure the next commit
    starts from a fresh producer, which fences whatever the old one left open.
    """

    def __init__(self, settings: Settings, transactional_id: str, *, max_request_size: int):
        self._settings = settings
        self._tid = transactional_id
        self._max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None

    def _make(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_options(self._settings),
            transactional_id=self._tid,
            transaction_timeout_ms=int(self._settings.transaction_timeout * 1000),
            linger_ms=0,
            # CONCURRENT_TRANSACTIONS is answered while the previous commit's markers are
            # written; the default 100 ms back-off would dominate every small transaction.
            retry_backoff_ms=5,
            max_batch_size=min(BATCH_BYTES, self._max_request_size),
            max_request_size=self._max_request_size,
        )

    async def start(self) -> None:
        """Connect and register the transactional id (fencing a predecessor's)."""
        _quick_first_add()
        producer = self._make()
        await start_within(self._settings, producer)
        self._producer = producer

    async def restart(self) -> None:
        """Register the transactional id again, fencing whoever registered it since."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        """Disconnect; an open transaction is aborted by the broker. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(kerr.KafkaError, OSError):
                await asyncio.wait_for(producer.stop(), self._settings.request_timeout)
            _settle(producer)

    async def commit(self, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Write ``records`` in one transaction, within ``request_timeout`` in all.

        Raises:
            WriteFailedError, EventTooLargeError, BrokerUnavailableError.
        """
        where = ", ".join(sorted({f"{r.topic}[{r.partition}]" for r in records}))
        written = [(r.topic, r.partition) for r in records]
        size = max((len(r.value or b"") for r in records), default=0)
        async with write_errors(self._settings, where, written, size):
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    if self._producer is None:
                        await self.start()
                    assert self._producer is not None
                    return await self._transact(self._producer, records)
            except BaseException:
                # Its transaction state is unknown: drop it; the next commit starts a fresh
                # producer, whose registration fences this one and aborts what it left open.
                producer, self._producer = self._producer, None
                if producer is not None:
                    await abandon(producer)
                    _settle(producer)
                raise

    @staticmethod
    async def _transact(
        producer: AIOKafkaProducer, records: Sequence[OutRecord]
    ) -> list[tuple[int, int]]:
        # Not aiokafka's transaction() context manager: on failure it awaits the abort,
        # shielded from cancellation, which with the broker gone never ends (a write was
        # seen hanging 88 s past its timeout). A failed producer is dropped instead, and
        # the next one's registration fences it and aborts what it left open.
        await producer.begin_transaction()
        futures: list[asyncio.Future[Any]] = []
        try:
            for r in records:
                futures.append(
                    await producer.send(
                        r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
                    )
                )
            metas = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:  # failed with the transaction; nobody else awaits them
                future.add_done_callback(_seen)
            raise
        await producer.commit_transaction()
        return [(m.partition, m.offset) for m in metas]
