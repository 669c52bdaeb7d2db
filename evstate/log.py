"""The Kafka adapter: the only module that imports aiokafka.

Small wrappers, each an async resource with ``start``/``stop``:

* :class:`Producer` — idempotent, ``acks=all``; :meth:`Producer.send` returns where the
  record landed.
* :class:`Admin` — creates topics with explicit settings and checks existing ones.
* :class:`TransactionalProducer` — writes a batch of records to several topics atomically.
* :class:`GroupTail` — a ``read_committed`` consumer in a consumer group (watchers).
* :class:`Tail` — a ``read_committed`` consumer assigned every partition of one topic,
  positioned by the caller (the view's stored offsets), no consumer group.

Error translation lives here too: no aiokafka exception leaves this module; each is
re-raised as an :mod:`evstate.errors` class ``from`` the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiokafka.errors as kerr
import aiokafka.producer.sender as aiokafka_sender
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.offset import OffsetRequest

from evstate.config import Settings
from evstate.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    EventTooLargeError,
    KafkaError,
    TopicMismatchError,
    WriteFailedError,
)
from evstate.kafka_logs import quiet_retries

log = logging.getLogger(__name__)

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
class Record:
    """One record read from a partition."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to write."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None
    headers: Headers


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic evstate needs, and the settings it must have."""

    name: str
    partitions: int
    replication_factor: int | None  # None: min(3, brokers)
    configs: Mapping[str, str]


def client_options(settings: Settings) -> dict[str, Any]:
    """The connection options every aiokafka object gets (SASL/TLS passed through)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": int(settings.request_timeout * 1000),
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_plain_username
        options["sasl_plain_password"] = settings.sasl_plain_password
    return options


def _unavailable(settings: Settings, exc: BaseException | None = None) -> BrokerUnavailableError:
    detail = f" ({exc})" if exc is not None and str(exc) else ""
    return BrokerUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} within "
        f"{settings.connect_timeout:g}s{detail}; is the broker running "
        "(`evstate broker start`) and is EVSTATE_BOOTSTRAP_SERVERS right?",
        bootstrap_servers=settings.bootstrap_servers,
    )


# What a broker answers to credentials it refuses, or to a mechanism it does not offer.
_SASL_ERRORS = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.AuthenticationMethodNotSupported,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalSaslStateError,
)


async def _raise_if_sasl_refused(settings: Settings, timeout: float) -> None:
    """Raise AuthenticationError if a failed bootstrap was the broker refusing SASL.

    aiokafka's bootstrap logs the broker's SASL error and raises a bare "Unable to
    bootstrap", so one connection to each bootstrap server asks again, directly.
    """
    if not settings.sasl_mechanism:
        return
    options = client_options(settings)
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id=options["client_id"],
                    request_timeout_ms=options["request_timeout_ms"],
                    ssl_context=options.get("ssl_context"),
                    security_protocol=settings.security_protocol,
                    sasl_mechanism=settings.sasl_mechanism,
                    sasl_plain_username=settings.sasl_plain_username,
                    sasl_plain_password=settings.sasl_plain_password,
                ),
                timeout,
            )
        except _SASL_ERRORS as exc:
            raise AuthenticationError(
                f"authentication failed: Kafka at {host}:{port} refused user "
                f"{settings.sasl_plain_username!r} with {settings.sasl_mechanism} "
                f"({exc}); check sasl_plain_username and sasl_plain_password, and that "
                "the broker has this user for this mechanism",
                bootstrap_servers=settings.bootstrap_servers,
                username=settings.sasl_plain_username,
                mechanism=settings.sasl_mechanism,
            ) from exc
        except (TimeoutError, kerr.KafkaError, OSError):
            continue
        conn.close()


async def _getmany(
    consumer: AIOKafkaConsumer, topic: str, timeout: float, max_records: int | None
) -> dict[TopicPartition, list[Any]]:
    """One ``getmany``, with aiokafka's errors translated."""
    try:
        batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
    except kerr.OffsetOutOfRangeError as exc:
        raise KafkaError(
            f"stored offsets of {topic} are out of range (topic recreated?); run `evstate rebuild`"
        ) from exc
    except kerr.KafkaError as exc:
        raise KafkaError(f"reading {topic} failed: {exc!r}") from exc
    return batches


def _last_stable(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[int, int | None]:
    """What the last fetch responses said of each partition's end; no request is sent."""
    ends: dict[int, int | None] = {}
    for tp in tps:
        try:
            end = consumer.last_stable_offset(tp)
        except (kerr.KafkaError, AssertionError, AttributeError):  # not assigned (any more)
            end = None
        ends[tp.partition] = None if end is None or end < 0 else int(end)
    return ends


def _records(tp: TopicPartition, records: list[Any]) -> list[Record]:
    return [Record(tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp) for r in records]


async def _offset_for_time(
    consumer: AIOKafkaConsumer, settings: Settings, tp: TopicPartition, ms: int
) -> int | None:
    """The first offset of ``tp`` whose record time is >= ``ms``, if any."""
    try:
        found = await consumer.offsets_for_times({tp: ms})
    except kerr.KafkaError as exc:
        raise _unavailable(settings, exc) from exc
    hit = found.get(tp)
    return None if hit is None else int(hit.offset)


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer; a cancelled fetch inside it must not cancel the caller."""
    try:
        await consumer.stop()
    except kerr.KafkaError:
        pass
    except asyncio.CancelledError:
        # aiokafka re-raises the cancellation of a fetch task that was backing off after a
        # failed fetch; only a cancellation of our own task may propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


# Seconds a failed aiokafka object may take to shut down before it is left to the GC.
_ABANDON_WAIT = 1.0


async def _abandon(what: Any) -> None:
    """Stop an aiokafka object that failed, without letting a dead broker stall us."""
    close = what.stop if hasattr(what, "stop") else what.close
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), _ABANDON_WAIT)


async def _start(settings: Settings, what: Any) -> None:
    """Start an aiokafka object within ``connect_timeout``.

    Raises:
        AuthenticationError: the broker refused the SASL credentials.
        BrokerUnavailableError: nothing answered in time.
    """
    quiet_retries()
    deadline = asyncio.get_running_loop().time() + settings.connect_timeout
    try:
        await asyncio.wait_for(what.start(), settings.connect_timeout)
    except (TimeoutError, kerr.KafkaError, OSError) as exc:
        await _abandon(what)
        # A refused login looks like an unreachable broker after aiokafka's bootstrap.
        left = max(1.0, deadline - asyncio.get_running_loop().time())
        await _raise_if_sasl_refused(settings, left)
        raise _unavailable(settings, exc) from exc


class _ThreadFilter(logging.Filter):
    """Drops the records logged from one thread (see :func:`count_brokers`)."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self._thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self._thread


# aiokafka logs every refused connection at ERROR; a probe's refusals are its answer.
_PROBE_LOGGERS = ("aiokafka", "aiokafka.conn")


async def count_brokers(bootstrap_servers: str, *, timeout: float = 5.0) -> int:
    """Ask the cluster for its metadata and return how many brokers it lists.

    aiokafka's own connection errors from this thread are kept out of the log while it
    asks: a broker that is still starting refuses connections, and the answer is the
    exception raised here, not a line per attempt.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        timeout: seconds to wait for an answer.

    Raises:
        BrokerUnavailableError: nothing answered a metadata request in time.
    """
    quiet = _ThreadFilter(threading.get_ident())
    for name in _PROBE_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(1000, int(timeout * 1000)),
        client_id="evstate-probe",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return len(client.cluster.brokers())
    except (TimeoutError, kerr.KafkaError, OSError) as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {bootstrap_servers} within {timeout:g}s",
            bootstrap_servers=bootstrap_servers,
        ) from exc
    finally:
        await client.close()
        for name in _PROBE_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


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
        await _abandon(admin)
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
    if isinstance(exc, kerr.KafkaError) and not exc.retriable:
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
    if isinstance(exc, kerr.ProducerFenced):
        return WriteFailedError(
            f"this writer was fenced: another process uses transactional id "
            f"{settings.transactional_id!r}; give each writer its own view_dir or "
            "transactional_id"
        )
    if isinstance(exc, TimeoutError | kerr.KafkaTimeoutError | kerr.RequestTimedOutError):
        return WriteFailedError(
            f"Kafka at {settings.bootstrap_servers} did not acknowledge a write to {where} "
            f"within {settings.request_timeout:g}s; it may or may not have been applied: "
            "check before retrying if a duplicate matters"
        )
    return WriteFailedError(f"write to {where} failed: {exc!r}; retry it")


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
        await _start(self._settings, self._producer)

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
        try:
            # aiokafka's idempotent producer retries a batch forever: bound the wait.
            async with asyncio.timeout(self._settings.request_timeout):
                meta = await self._producer.send_and_wait(
                    topic, value=value, key=key, partition=partition, headers=list(headers)
                )
        except (kerr.KafkaError, TimeoutError) as exc:
            refused = await _refused_for_isr(self._settings, exc, where, [(topic, partition)])
            if refused is not None:
                raise refused from exc
            raise _write_error(self._settings, exc, where, len(value or b"")) from exc
        return meta.partition, meta.offset


# After a commit, the broker answers CONCURRENT_TRANSACTIONS until the commit's markers
# are written (KAFKA-5477), and aiokafka then waits a fixed 20 ms before trying again. On
# a local or well-connected cluster the markers take a millisecond or two, and those
# 20 ms were most of a lone write's p90 (measured: p90 30-39 ms -> 9-11 ms with 2 ms).
# Process-wide: it shortens that one back-off for every aiokafka producer here.
if hasattr(aiokafka_sender, "BACKOFF_OVERRIDE"):
    aiokafka_sender.BACKOFF_OVERRIDE = 0.002


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
        producer = self._make()
        await _start(self._settings, producer)
        self._producer = producer

    async def stop(self) -> None:
        """Disconnect; an open transaction is aborted by the broker. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(kerr.KafkaError, OSError):
                await asyncio.wait_for(producer.stop(), self._settings.request_timeout)

    async def commit(self, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Write ``records`` in one transaction, within ``request_timeout`` in all.

        Raises:
            WriteFailedError, EventTooLargeError, BrokerUnavailableError.
        """
        where = ", ".join(sorted({f"{r.topic}[{r.partition}]" for r in records}))
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                if self._producer is None:
                    await self.start()
                assert self._producer is not None
                return await self._transact(self._producer, records)
        except (kerr.KafkaError, TimeoutError, BrokerUnavailableError) as exc:
            # Its transaction state is unknown: drop it; the next commit starts a fresh
            # producer, whose registration fences this one and aborts what it left open.
            producer, self._producer = self._producer, None
            if producer is not None:
                await _abandon(producer)
            refused = await _refused_for_isr(
                self._settings, exc, where, [(r.topic, r.partition) for r in records]
            )
            if refused is not None:
                raise refused from exc
            if isinstance(exc, BrokerUnavailableError):
                raise
            size = max((len(r.value or b"") for r in records), default=0)
            raise _write_error(self._settings, exc, where, size) from exc

    @staticmethod
    async def _transact(
        producer: AIOKafkaProducer, records: Sequence[OutRecord]
    ) -> list[tuple[int, int]]:
        # Not aiokafka's transaction() context manager: on failure it awaits the abort,
        # shielded from cancellation, which with the broker gone never ends (a write was
        # seen hanging 88 s past its timeout). A failed producer is dropped instead, and
        # the next one's registration fences it and aborts what it left open.
        await producer.begin_transaction()
        futures = [
            await producer.send(
                r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
            )
            for r in records
        ]
        metas = await asyncio.gather(*futures)
        await producer.commit_transaction()
        return [(m.partition, m.offset) for m in metas]


class _UnknownTopicError(KafkaError):
    """The broker asked does not know the topic (it may not have caught up yet)."""


class Admin:
    """Topic creation and inspection."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin = AIOKafkaAdminClient(**client_options(settings))

    async def start(self) -> None:
        """Connect; BrokerUnavailableError within ``connect_timeout`` if nothing answers."""
        await _start(self._settings, self._admin)

    async def stop(self) -> None:
        """Disconnect; idempotent."""
        with contextlib.suppress(kerr.KafkaError):
            await self._admin.close()

    async def broker_count(self) -> int:
        """How many brokers the cluster has."""
        try:
            cluster = await self._admin.describe_cluster()
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        return len(cluster["brokers"])

    async def partitions(self, topic: str) -> int | None:
        """The partition count of ``topic``, or None if it does not exist."""
        try:
            topics = await self._admin.describe_topics([topic])
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        for t in topics:
            if t["topic"] == topic and t["error_code"] == 0:
                return len(t["partitions"])
        return None

    async def topic_configs(self, topic: str) -> dict[str, str]:
        """Every config of ``topic`` (defaults included)."""
        try:
            responses = await self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        configs: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                error_code, error_message = resource[0], resource[1]
                if error_code == kerr.UnknownTopicOrPartitionError.errno:
                    raise _UnknownTopicError(f"the broker asked does not know topic {topic}")
                if error_code:
                    raise KafkaError(f"describing {topic} failed: {error_message}")
                for entry in resource[4]:
                    configs[entry[0]] = entry[1]
        return configs

    async def ensure_topic(self, spec: TopicSpec) -> int:
        """Create ``spec`` if missing; check an existing topic's policy and partitions.

        Returns:
            The topic's ``max.message.bytes``.

        Raises:
            TopicMismatchError: the topic exists with another cleanup policy or partition
                count; nothing is changed.
            KafkaError: the broker refused to create it.
        """
        existing = await self.partitions(spec.name)
        if existing is None:
            await self._create(spec)
        configs, existing = await self._settled(spec.name)
        want_policy = spec.configs.get("cleanup.policy")
        have_policy = configs.get("cleanup.policy")
        if want_policy is not None and have_policy != want_policy:
            raise TopicMismatchError(
                f"topic {spec.name} exists with cleanup.policy={have_policy}, evstate needs "
                f"{want_policy}; use another topic_prefix or fix the topic "
                f"(kafka-configs --alter --entity-name {spec.name} --add-config "
                f"cleanup.policy={want_policy})"
            )
        if existing != spec.partitions:
            raise TopicMismatchError(
                f"topic {spec.name} exists with {existing} partitions, evstate is configured "
                f"for {spec.partitions}; set partitions={existing} (scopes are placed by "
                "partition count, so it must match) or use another topic_prefix"
            )
        return int(configs.get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES))

    async def _settled(self, topic: str) -> tuple[dict[str, str], int | None]:
        """The configs and partition count of a topic that exists.

        Right after a topic is created (here or by another client), a broker that has
        not applied the new metadata yet answers "unknown topic" for a moment (up to a
        second or two on a three-node cluster): ask again, for up to ``request_timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout
        while True:
            try:
                configs = await self.topic_configs(topic)
                count = await self.partitions(topic)
            except _UnknownTopicError:
                if loop.time() >= deadline:
                    raise
            else:
                if count is not None or loop.time() >= deadline:
                    return configs, count
            await asyncio.sleep(0.1)

    async def _create(self, spec: TopicSpec) -> None:
        rf = spec.replication_factor or min(3, await self.broker_count())
        configs = dict(spec.configs)
        if rf >= 3 and "min.insync.replicas" not in configs:
            configs["min.insync.replicas"] = "2"
        try:
            response = await self._admin.create_topics(
                [NewTopic(spec.name, spec.partitions, rf, topic_configs=configs)]
            )
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        for name, code, message in response.topic_errors:
            if code and code != kerr.TopicAlreadyExistsError.errno:
                raise KafkaError(f"creating topic {name} failed (error {code}): {message}")
        await self._await_leaders(spec)

    async def _await_leaders(self, spec: TopicSpec) -> None:
        """Return once every partition of a new topic has a leader that serves it.

        The metadata names a partition's leader a moment before that broker serves the
        partition: until then it answers NOT_LEADER_OR_FOLLOWER, which aiokafka retries
        and logs at ERROR (``Failed fetch offsets ...``). So each leader is asked for its
        partitions' end offsets, the request a fresh reader sends first, until all answer.

        Raises:
            BrokerUnavailableError: not every partition was served within
                ``request_timeout`` (retriable: the cluster may still be electing).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout
        waiting: list[int] = list(range(spec.partitions))
        while True:
            try:
                waiting = await self._unserved(spec)
            except (kerr.KafkaError, OSError) as exc:
                log.debug("asking the leaders of %s: %s", spec.name, exc)
            if not waiting:
                return
            if loop.time() >= deadline:
                raise BrokerUnavailableError(
                    f"topic {spec.name} was created, but partitions {waiting} have no leader "
                    f"serving them after {self._settings.request_timeout:g}s; are all "
                    "brokers up? (see each node's server.log)",
                    bootstrap_servers=self._settings.bootstrap_servers,
                )
            await asyncio.sleep(0.05)

    async def _unserved(self, spec: TopicSpec) -> list[int]:
        """The partitions of ``spec`` whose leader is unknown or does not serve them yet."""
        topics = await self._admin.describe_topics([spec.name])
        leaders = {
            p["partition"]: p["leader"]
            for t in topics
            if t["error_code"] == 0
            for p in t["partitions"]
            if p["leader"] >= 0
        }
        unserved = [p for p in range(spec.partitions) if p not in leaders]
        by_leader: dict[int, list[int]] = {}
        for partition, leader in leaders.items():
            by_leader.setdefault(leader, []).append(partition)
        client = self._admin._client  # aiokafka's admin has no ListOffsets of its own
        for leader, partitions in by_leader.items():
            # Latest offset (-1), read_committed (1): what a reader's first request asks.
            request = OffsetRequest(-1, 1, [(spec.name, [(p, -1) for p in partitions])])
            response = await client.send(leader, request)
            unserved += [
                partition
                for _, answers in response.topics
                for partition, error_code, *_ in answers
                if error_code != 0
            ]
        return sorted(unserved)


class Tail:
    """A ``read_committed`` reader of every partition of one topic, from given offsets.

    Contract: :meth:`fetch` returns records in offset order per partition; :meth:`positions`
    says where each partition's next fetch starts, past transaction markers and aborted
    batches, so a caller can store it even when a fetch returned no record.
    """

    def __init__(
        self, settings: Settings, topic: str, partitions: int, *, only: Sequence[int] = ()
    ) -> None:
        """Args:
        settings: connection settings.
        topic: the topic to read.
        partitions: how many partitions it has.
        only: read just these partitions (default: all).
        """
        self._settings = settings
        self._topic = topic
        self._tps = [TopicPartition(topic, p) for p in (only or range(partitions))]
        self._consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            # 1 MiB a partition: 4 MiB made 12 partitions buffer ~48 MiB (peak RSS at 100k
            # keys 377 -> 215 MB with 1 MiB, catch-up no slower; measured by bench_peers).
            max_partition_fetch_bytes=1024 * 1024,
        )

    async def start(self, offsets: Mapping[int, int]) -> None:
        """Connect, assign every partition, and seek each to ``offsets`` (or the start)."""
        await _start(self._settings, self._consumer)
        self._consumer.assign(self._tps)
        for tp in self._tps:
            if tp.partition in offsets:
                self._consumer.seek(tp, offsets[tp.partition])
            else:
                await self._consumer.seek_to_beginning(tp)

    async def stop(self) -> None:
        """Disconnect; idempotent."""
        await _stop_consumer(self._consumer)

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on."""
        self._consumer.seek(TopicPartition(self._topic, partition), offset)

    async def offset_for_time(self, partition: int, ms: int) -> int | None:
        """The first offset of ``partition`` whose record time is >= ``ms``, if any."""
        tp = TopicPartition(self._topic, partition)
        return await _offset_for_time(self._consumer, self._settings, tp, ms)

    async def fetch(
        self, timeout: float, max_records: int | None = None
    ) -> dict[int, list[Record]]:
        """Records that arrived, waiting up to ``timeout`` seconds for the first.

        Raises:
            KafkaError: the fetch failed for a reason retrying will not fix.
        """
        batches = await _getmany(self._consumer, self._topic, timeout, max_records)
        return {tp.partition: _records(tp, records) for tp, records in batches.items()}

    async def positions(self) -> dict[int, int]:
        """The next offset each partition will be read from."""
        return {tp.partition: await self._consumer.position(tp) for tp in self._tps}

    def last_stable(self) -> dict[int, int | None]:
        """Each partition's last stable offset as of its last fetch (None until fetched)."""
        return _last_stable(self._consumer, self._tps)

    async def end_offsets(self) -> dict[int, int]:
        """Each partition's last stable offset (read_committed end), asked of the broker."""
        try:
            ends = await self._consumer.end_offsets(self._tps)
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        return {tp.partition: off for tp, off in ends.items()}


class Assignments(Protocol):
    """Told which partitions a :class:`GroupTail` gains and loses.

    Both are awaited before the tail fetches again, so an implementation may seek, read
    offsets and commit from inside them. An exception raised here is raised again by the
    tail's next :meth:`GroupTail.fetch`.
    """

    async def assigned(self, partitions: set[int]) -> None:
        """These partitions are now read by this tail (may include ones it had before)."""

    async def revoked(self, partitions: set[int]) -> None:
        """These partitions are about to go to other members: commit what was handled."""


class _Relay(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's rebalance listener, passing partition numbers on to :class:`Assignments`."""

    def __init__(self, tail: GroupTail) -> None:
        self._tail = tail

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._tail._relay("revoked", {tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._tail._relay("assigned", {tp.partition for tp in assigned})


class GroupTail:
    """A ``read_committed`` reader of one topic, as a member of a consumer group or alone.

    With a ``group``, the group's members share the topic's partitions; each member is
    told what it gains and loses through ``assignments``, commits what it handled with
    :meth:`commit`, and a partition with a committed offset is resumed from there. Without
    a group, it reads the given partitions (default all) and commits nothing.

    Contract: :meth:`start` returns once this member has its first assignment and
    ``assignments.assigned`` has run for it. :meth:`fetch` returns records in offset order
    per partition, only of partitions assigned now. :meth:`commit` returns False (and
    commits nothing) when the group rebalanced under it: the partitions' new owners resume
    from the last committed offsets, so no record is lost, some are read again. Offsets
    that fall out of the topic's retention restart from the oldest record kept.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group: str | None,
        *,
        partitions: int,
        only: Sequence[int] = (),
        assignments: Assignments | None = None,
    ) -> None:
        """Args:
        settings: connection settings.
        topic: the topic to read.
        group: the consumer group's id, or None for a reader of its own.
        partitions: how many partitions the topic has.
        only: without a group, read just these partitions (default: all).
        assignments: told of partitions gained and lost.
        """
        self._settings = settings
        self._topic = topic
        self._group = group
        self._tps = [TopicPartition(topic, p) for p in (only or range(partitions))]
        self._assignments = assignments
        self._joined = asyncio.Event()
        self._failure: BaseException | None = None
        self._consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            # 1 MiB a partition: 4 MiB made 12 partitions buffer ~48 MiB (peak RSS at 100k
            # keys 377 -> 215 MB with 1 MiB, catch-up no slower; measured by bench_peers).
            max_partition_fetch_bytes=1024 * 1024,
        )

    async def _relay(self, what: str, partitions: set[int]) -> None:
        try:
            if self._assignments is not None:
                handler = getattr(self._assignments, what)
                await handler(partitions)
        except Exception as exc:  # aiokafka would only log it: keep it for fetch to raise
            self._failure = exc
        finally:
            if what == "assigned":
                self._joined.set()

    async def start(self) -> None:
        """Connect, then join the group (or assign the partitions) and wait for it.

        Raises:
            BrokerUnavailableError: Kafka did not answer within ``connect_timeout``.
            KafkaError: the group did not assign partitions within ``request_timeout``.
        """
        await _start(self._settings, self._consumer)
        if self._group is None:
            self._consumer.assign(self._tps)
            await self._relay("assigned", {tp.partition for tp in self._tps})
        else:
            self._consumer.subscribe([self._topic], listener=_Relay(self))
            try:
                await asyncio.wait_for(self._joined.wait(), self._settings.request_timeout)
            except TimeoutError as exc:
                await self.stop()
                raise KafkaError(
                    f"consumer group {self._group!r} assigned no partitions of {self._topic} "
                    f"within {self._settings.request_timeout:g}s; is the group coordinator up?"
                ) from exc
        self._raise_failure()

    async def stop(self) -> None:
        """Leave the group and disconnect; idempotent. Commits nothing by itself."""
        await _stop_consumer(self._consumer)

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def assigned(self) -> set[int]:
        """The partitions this tail reads now."""
        return {tp.partition for tp in self._consumer.assignment()}

    async def committed(self, partition: int) -> int | None:
        """The group's committed offset of ``partition``; None if none (or no group)."""
        if self._group is None:
            return None
        try:
            found = await self._consumer.committed(TopicPartition(self._topic, partition))
        except kerr.KafkaError as exc:
            raise KafkaError(f"reading {self._group!r}'s offsets failed: {exc!r}") from exc
        return None if found is None else int(found)

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on."""
        self._consumer.seek(TopicPartition(self._topic, partition), offset)

    async def bounds(self, partition: int) -> tuple[int, int]:
        """The first offset ``partition`` keeps and its last stable offset (the end)."""
        tp = TopicPartition(self._topic, partition)
        try:
            first = await self._consumer.beginning_offsets([tp])
            end = await self._consumer.end_offsets([tp])
        except kerr.KafkaError as exc:
            raise _unavailable(self._settings, exc) from exc
        return int(first[tp]), int(end[tp])

    async def offset_for_time(self, partition: int, ms: int) -> int | None:
        """The first offset of ``partition`` whose record time is >= ``ms``, if any."""
        tp = TopicPartition(self._topic, partition)
        return await _offset_for_time(self._consumer, self._settings, tp, ms)

    async def fetch(
        self, timeout: float, max_records: int | None = None
    ) -> dict[int, list[Record]]:
        """Records that arrived, waiting up to ``timeout`` seconds for the first.

        Raises:
            KafkaError: the fetch failed for a reason retrying will not fix.
            EvstateError: ``assignments`` raised it while the group rebalanced.
        """
        self._raise_failure()
        batches = await _getmany(self._consumer, self._topic, timeout, max_records)
        self._raise_failure()
        mine = self._consumer.assignment()
        return {
            tp.partition: _records(tp, records)
            for tp, records in batches.items()
            if tp in mine  # a rebalance may have taken the partition since the fetch
        }

    async def positions(self) -> dict[int, int]:
        """The next offset each assigned partition will be read from."""
        return {
            tp.partition: int(await self._consumer.position(tp))
            for tp in self._consumer.assignment()
        }

    def last_stable(self) -> dict[int, int | None]:
        """Each assigned partition's last stable offset as of its last fetch (None until)."""
        return _last_stable(self._consumer, sorted(self._consumer.assignment()))

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit, for each partition, the offset of the next record to handle.

        Partitions no longer assigned are left out. A no-op without a group.

        Returns:
            False when the group rebalanced first (see the class contract), else True.

        Raises:
            KafkaError: the broker refused the commit for another reason.
        """
        if self._group is None:
            return True
        mine = self._consumer.assignment()
        wanted = {TopicPartition(self._topic, p): o for p, o in offsets.items()}
        wanted = {tp: o for tp, o in wanted.items() if tp in mine}
        if not wanted:
            return True
        try:
            await self._consumer.commit(wanted)
        except (kerr.CommitFailedError, kerr.IllegalStateError) as exc:
            log.info("commit of group %r skipped, the group rebalanced: %s", self._group, exc)
            return False
        except kerr.KafkaError as exc:
            raise KafkaError(f"committing {self._group!r}'s offsets failed: {exc!r}") from exc
        return True
