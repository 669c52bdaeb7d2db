"""Writing: an idempotent producer, and a transactional one for atomic multi-topic batches.

Contract of both: a write returns only once Kafka acknowledged it, within
``request_timeout``; otherwise it raises :class:`WriteFailedError` (retriable),
:class:`EventTooLargeError` or :class:`BrokerUnavailableError` (see ``_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as kerr
import aiokafka.producer.sender as ksender
from aiokafka import AIOKafkaProducer, TopicPartition

from evstate.config import Settings
from evstate.errors import WriterFencedError
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


# Seconds an abort of a transaction opened ahead may take before the producer is dropped.
_CLOSE_WAIT = 1.0


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
    waits longer than ``request_timeout`` plus a little. After a failure the producer is
    dropped, and commits raise :class:`WriterFencedError` until the owner registers the
    id again (:meth:`restart`), which fences whatever the old producer left open: only
    the owner knows it must catch up on the partition before deciding again.

    **Opened ahead.** Given the partitions its commits write (``ahead``), the producer
    begins the next transaction as soon as the previous one is committed and asks the
    coordinator to add those partitions then, in the background: a commit finds them
    added and costs a produce and an end-transaction, not three round trips, and the
    wait for the previous commit's markers (CONCURRENT_TRANSACTIONS) falls between
    writes instead of inside one. The open transaction holds no record, so it holds back
    no reader (a partition's last stable offset moves only with records). It must not
    outlive the broker's transaction timeout: :meth:`close_ahead` aborts it (an idle
    writer calls it), and a commit that finds it older than half the timeout aborts it
    and begins anew. If adding the partitions failed (another process registered the id
    meanwhile, say), the commit raises :class:`WriterFencedError`, sending nothing.
    """

    def __init__(
        self,
        settings: Settings,
        transactional_id: str,
        *,
        max_request_size: int,
        ahead: Sequence[tuple[str, int]] = (),
    ):
        """Args:
        settings: connection settings.
        transactional_id: the id to register (fencing its previous user).
        max_request_size: the largest record the producer may send.
        ahead: ``(topic, partition)`` every commit writes, added to the next transaction
            as soon as the previous one ends; empty: each commit adds its own.
        """
        self._settings = settings
        self._tid = transactional_id
        self._max_request_size = max_request_size
        self._ahead = [TopicPartition(topic, partition) for topic, partition in ahead]
        self._producer: AIOKafkaProducer | None = None
        self._opened_at: float | None = None  # monotonic; a transaction opened ahead

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

    @property
    def opened_ahead(self) -> bool:
        """Whether a transaction is open, waiting for the next commit."""
        return self._opened_at is not None

    async def start(self) -> None:
        """Connect and register the transactional id (fencing a predecessor's).

        Raises:
            WriteFailedError: the transaction log or the partitions written have too few
                in-sync replicas (registering writes to the log), and it says so.
            BrokerUnavailableError: nothing answered within ``connect_timeout``.
        """
        _quick_first_add()
        producer = self._make()
        places = [(tp.topic, tp.partition) for tp in self._ahead]
        where = ", ".join(f"{t}[{p}]" for t, p in places) or self._tid
        async with write_errors(self._settings, where, places, 0):
            await start_within(self._settings, producer)
        self._producer = producer
        await self._open_ahead(producer)

    async def restart(self) -> None:
        """Register the transactional id again, fencing whoever registered it since."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        """Disconnect; a transaction opened ahead is aborted first. Idempotent."""
        await self.close_ahead()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(kerr.KafkaError, OSError):
                await asyncio.wait_for(producer.stop(), self._settings.request_timeout)
            _settle(producer)

    @property
    def registered(self) -> bool:
        """Whether the id is registered by this producer (it may have been fenced since,
        unnoticed); False after a failure, until :meth:`start` or :meth:`restart`."""
        return self._producer is not None

    async def close_ahead(self) -> None:
        """Abort the transaction opened ahead, if any (it holds nothing). Never raises.

        If the abort fails (fenced meanwhile, or the broker is away), the producer is
        dropped: :attr:`registered` turns False, and whoever registers the id next
        aborts what it left open.
        """
        producer = self._producer
        if producer is None or self._opened_at is None:
            return
        self._opened_at = None
        if producer._txn_manager.is_in_transaction():
            try:
                # It takes a round trip; far longer means trouble, and the next write
                # must not wait on it: give up, and let registering again abort it.
                async with asyncio.timeout(min(_CLOSE_WAIT, self._settings.request_timeout)):
                    await producer.abort_transaction()
                return
            except (kerr.KafkaError, TimeoutError, OSError):
                pass
        self._producer = None
        await abandon(producer)
        _settle(producer)

    async def _open_ahead(self, producer: AIOKafkaProducer) -> None:
        """Begin the next transaction and have its partitions added in the background."""
        if not self._ahead:
            return
        await producer.begin_transaction()
        manager = producer._txn_manager
        for tp in self._ahead:
            manager.maybe_add_partition_to_txn(tp)
        self._opened_at = time.monotonic()

    async def _take_ahead(self, producer: AIOKafkaProducer) -> None:
        """Make the transaction opened ahead this commit's, or begin one.

        Raises:
            WriterFencedError: adding its partitions failed; nothing was sent.
        """
        opened, self._opened_at = self._opened_at, None
        if opened is None:
            await producer.begin_transaction()
            return
        manager = producer._txn_manager
        if not manager.is_in_transaction():
            waiter = manager.wait_for_transaction_end()
            cause = waiter.exception() if waiter.done() and not waiter.cancelled() else None
            raise WriterFencedError(
                f"the transaction {self._tid} opened ahead failed ({cause!r}), most likely "
                "because another process registered the id; nothing was sent"
            ) from cause
        if time.monotonic() - opened > self._settings.transaction_timeout / 2:
            # The broker would soon abort it and fence this producer: end it first.
            await producer.abort_transaction()
            await producer.begin_transaction()

    async def commit(self, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Write ``records`` in one transaction, within ``request_timeout`` in all.

        Raises:
            WriteFailedError, EventTooLargeError, BrokerUnavailableError.
            WriterFencedError: another process registered the id; nothing was written.
        """
        where = ", ".join(sorted({f"{r.topic}[{r.partition}]" for r in records}))
        written = [(r.topic, r.partition) for r in records]
        size = max((len(r.value or b"") for r in records), default=0)
        async with write_errors(self._settings, where, written, size):
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    producer = self._producer
                    if producer is None:
                        # Never register here: whoever registers must first catch up on
                        # what was written while the id was not theirs (restart()).
                        raise WriterFencedError(
                            f"the transactional id {self._tid} is not registered (a failure "
                            "dropped the producer); nothing was sent"
                        )
                    await self._take_ahead(producer)
                    positions = await self._transact(producer, records)
            except BaseException:
                # Its transaction state is unknown: drop it. The owner registers the id
                # again (restart), which fences it and aborts what it left open.
                producer, self._producer = self._producer, None
                self._opened_at = None
                if producer is not None:
                    await abandon(producer)
                    _settle(producer)
                raise
        # The next transaction, opened now: its partitions are added while the caller
        # decides what goes in it.
        with contextlib.suppress(kerr.KafkaError, kerr.IllegalOperation, AssertionError):
            await self._open_ahead(producer)
        return positions

    @staticmethod
    async def _transact(
        producer: AIOKafkaProducer, records: Sequence[OutRecord]
    ) -> list[tuple[int, int]]:
        # Not aiokafka's transaction() context manager: on failure it awaits the abort,
        # shielded from cancellation, which with the broker gone never ends (a write was
        # seen hanging 88 s past its timeout). A failed producer is dropped instead, and
        # the next one's registration fences it and aborts what it left open. The
        # transaction is begun by the caller (or was opened ahead).
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
