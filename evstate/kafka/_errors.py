"""The one table that turns aiokafka's errors into evstate's (no aiokafka error leaves
this package).

* :func:`translated` — a metadata, admin or offsets call: any Kafka error means the broker
  could not answer (:class:`BrokerUnavailableError`, retriable).
* :func:`reading` — a fetch or a group's offsets: :class:`KafkaError` naming what was read.
* :func:`write_errors` — a produce or a transaction: too large, too few in-sync replicas
  (asked of the cluster, since aiokafka only retries those), fenced, not acknowledged in
  time, or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence

import aiokafka.errors as kerr
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from evstate.config import Settings
from evstate.errors import (
    BrokerUnavailableError,
    EventTooLargeError,
    KafkaError,
    WriteFailedError,
    WriterFencedError,
)
from evstate.kafka._connect import abandon, client_options, unavailable


@contextlib.contextmanager
def translated(settings: Settings) -> Iterator[None]:
    """A Kafka error inside becomes :class:`BrokerUnavailableError` (the broker did not
    answer the question)."""
    try:
        yield
    except kerr.KafkaError as exc:
        raise unavailable(settings, exc) from exc


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """A Kafka error inside becomes :class:`KafkaError` naming ``what`` was being read."""
    try:
        yield
    except kerr.OffsetOutOfRangeError as exc:
        raise KafkaError(
            f"stored offsets of {what} are out of range (topic recreated?); run `evstate rebuild`"
        ) from exc
    except kerr.KafkaError as exc:
        raise KafkaError(f"reading {what} failed: {exc!r}") from exc


@contextlib.asynccontextmanager
async def write_errors(
    settings: Settings, where: str, written: Sequence[tuple[str, int]], size: int
) -> AsyncIterator[None]:
    """A write that Kafka did not acknowledge raises the evstate error that says why.

    Args:
        settings: connection settings (named in the messages).
        where: the partitions written, for the messages (``topic[p], ...``).
        written: ``(topic, partition)`` of each record, to diagnose in-sync replicas.
        size: the largest record's value in bytes.
    """
    try:
        yield
    except (kerr.KafkaError, kerr.IllegalOperation, TimeoutError, BrokerUnavailableError) as exc:
        refused = await _refused_for_isr(settings, exc, where, written)
        if refused is not None:
            raise refused from exc
        if isinstance(exc, BrokerUnavailableError):
            raise
        raise _write_error(settings, exc, where, size) from exc


# The transaction coordinator's log: a transaction needs it in sync as much as its topics.
_TXN_LOG = "__transaction_state"
# Seconds the in-sync check after a failed write may take (it runs on the error path only).
_DIAGNOSE_WAIT = 2.0


async def _in_sync_shortfall(settings: Settings, written: Sequence[tuple[str, int]]) -> str | None:
    """Which written partitions (or transaction log partitions) lack in-sync replicas.

    Args:
        settings: connection settings.
        written: ``(topic, partition)`` of each record of the failed write.

    Returns:
        e.g. ``"cluster.state[3] has 1 in sync (broker 1) of 3 replicas, needs 2"``, or
        None when they all meet ``min.insync.replicas`` or the cluster did not answer
        within ``_DIAGNOSE_WAIT`` seconds.
    """
    topics = sorted({topic for topic, _ in written})
    names = [*topics, _TXN_LOG]
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        async with asyncio.timeout(_DIAGNOSE_WAIT):
            await admin.start()
            described = await admin.describe_topics(names)
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
            )
    except (TimeoutError, kerr.KafkaError, OSError):
        return None
    finally:
        await abandon(admin)
    need = {
        resource[3]: int(entry[1])
        for response in responses
        for resource in response.resources
        for entry in resource[4]
        if entry[0] == "min.insync.replicas"
    }
    wanted = set(written)
    short: list[str] = []
    txn_short = 0
    for topic in described:
        name, minimum = topic["topic"], need.get(topic["topic"], 1)
        for p in sorted(topic["partitions"], key=lambda p: p["partition"]):
            if len(p["isr"]) >= minimum:
                continue
            if name == _TXN_LOG:
                txn_short += 1
            elif (name, p["partition"]) in wanted:
                brokers = ", ".join(map(str, sorted(p["isr"]))) or "none"
                short.append(
                    f"{name}[{p['partition']}] has {len(p['isr'])} in sync (broker {brokers})"
                    f" of {len(p['replicas'])} replicas, needs {minimum}"
                )
    if txn_short:
        short.append(
            f"{txn_short} partitions of the transaction log ({_TXN_LOG}) are below "
            f"min.insync.replicas={need.get(_TXN_LOG, 1)}"
        )
    return "; ".join(short) or None


async def _refused_for_isr(
    settings: Settings, exc: BaseException, where: str, written: Sequence[tuple[str, int]]
) -> WriteFailedError | None:
    """The error for a write that timed out because too few replicas are in sync, if so.

    aiokafka retries NOT_ENOUGH_REPLICAS until the timeout, and the transaction
    coordinator reports its own (for its log) as COORDINATOR_NOT_AVAILABLE, so the
    cause never arrives as an error: after a timeout or retriable error, ask the cluster.
    """
    if isinstance(exc, kerr.IllegalOperation) or (
        isinstance(exc, kerr.KafkaError) and not exc.retriable
    ):
        return None
    short = await _in_sync_shortfall(settings, written)
    if short is None:
        return None
    return WriteFailedError(
        f"write to {where} refused: too few in-sync replicas ({short}); "
        "min.insync.replicas is not met, so Kafka accepts no write there: "
        "bring brokers back, then retry"
    )


def _write_error(
    settings: Settings, exc: BaseException, where: str, size: int
) -> KafkaError | EventTooLargeError:
    """The evstate error for a write that Kafka did not acknowledge."""
    if isinstance(exc, kerr.MessageSizeTooLargeError | kerr.RecordTooLargeError):
        return EventTooLargeError(
            f"the broker refused a {size}-byte event for {where} as too large "
            "(max.message.bytes); store less in the state",
            size=size,
            limit=0,
        )
    if isinstance(exc, kerr.NotEnoughReplicasError | kerr.NotEnoughReplicasAfterAppendError):
        return WriteFailedError(
            f"write to {where} refused: too few in-sync replicas (min.insync.replicas not "
            "met); bring brokers back and retry"
        )
    # A producer the broker fenced while idle finds out at its next transaction: aiokafka
    # has put it in a fatal state, and sending says "not in transaction".
    if isinstance(exc, kerr.ProducerFenced | kerr.InvalidProducerEpoch | kerr.IllegalOperation):
        return WriterFencedError(
            f"the write to {where} was fenced: another process registered the same "
            "transactional id since; nothing of it was written"
        )
    if isinstance(exc, TimeoutError | kerr.KafkaTimeoutError | kerr.RequestTimedOutError):
        return WriteFailedError(
            f"Kafka at {settings.bootstrap_servers} did not acknowledge a write to {where} "
            f"within {settings.request_timeout:g}s; it may or may not have been applied: "
            "check before retrying if a duplicate matters"
        )
    return WriteFailedError(f"write to {where} failed: {exc!r}; retry it")
