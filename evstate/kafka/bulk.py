"""Copying records: many at once, each keeping its key, value, headers and timestamp.

Used by ``evstate migrate`` to move records from one topic to another without decoding
them. Not for events as they are written (:mod:`~evstate.kafka.produce` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiokafka.errors as kerr
from aiokafka import AIOKafkaProducer

from evstate.config import Settings
from evstate.kafka._connect import client_options, start_within
from evstate.kafka._errors import write_errors
from evstate.kafka.consume import Record
from evstate.kafka.produce import BATCH_BYTES, DEFAULT_MAX_MESSAGE_BYTES


class BulkProducer:
    """An idempotent ``acks=all`` producer that copies records as they are.

    Contract: :meth:`copy` returns once Kafka acknowledged every record; the records of
    one partition are appended in the order given (idempotence keeps the order across
    retries), each with its own timestamp, key, value and headers, byte for byte.
    Failures raise :class:`WriteFailedError`, :class:`EventTooLargeError` or
    :class:`BrokerUnavailableError`, as every writer's do.
    """

    def __init__(self, settings: Settings, *, max_request_size: int = DEFAULT_MAX_MESSAGE_BYTES):
        """Args:
        settings: connection settings.
        max_request_size: the largest record to copy (the target topic's limit).
        """
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
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

    async def copy(self, topic: str, records: Sequence[tuple[int, Record]]) -> None:
        """Append each ``(partition, record)`` to ``topic`` and wait for all of them.

        Raises:
            WriteFailedError: not acknowledged within ``request_timeout``.
            EventTooLargeError: a record is over the target topic's limit.
        """
        if not records:
            return
        written = sorted({(topic, p) for p, _ in records})
        where = ", ".join(f"{t}[{p}]" for t, p in written)
        size = max(len(r.value or b"") for _, r in records)
        async with (
            write_errors(self._settings, where, written, size),
            asyncio.timeout(self._settings.request_timeout),
        ):
            sent = [
                await self._producer.send(
                    topic,
                    r.value,
                    key=r.key,
                    partition=p,
                    timestamp_ms=r.timestamp_ms,
                    headers=list(r.headers),
                )
                for p, r in records
            ]
            await asyncio.gather(*sent)
