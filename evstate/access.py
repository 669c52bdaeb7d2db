"""The access log of ``evstate serve``: one record per request in the topic
``{prefix}.access``, and reading it back (``evstate access-log``).

An entry is compact JSON (:class:`AccessRecord`): when, who (the principal; ``null`` for
a request refused 401), the method, scope and key, the status, the duration and the
client's address. A Kafka record holds a batch of entries, one per line (JSON lines, at
most :data:`RECORD_BYTES`): one record per batch instead of one per request is what keeps
the log's cost per request small. The topic is append-only (``cleanup.policy=delete``)
with the history topic's retention (``history_retention_ms``, forever by default); one
server writes one partition (chosen at random when it starts), so its entries stay in
order.

:class:`AccessLog` appends without making a request wait: entries are queued and sent in
batches, every ``flush_interval`` or ``max_batch`` entries, by one background task. While
Kafka is down they wait in memory, at most ``max_pending``; beyond that the oldest are
dropped, counted (``dropped``) and logged. Closing sends what is queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from evstate.config import Settings
from evstate.errors import EvstateError, KafkaError, MalformedEventError, ValidationError
from evstate.kafka import Admin, OutRecord, Producer, Tail, TopicSpec

__all__ = ["AccessLog", "AccessRecord", "access_topic_spec", "query", "read_access"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 0.2
"""Seconds between batches sent to the access topic."""
MAX_BATCH: Final = 5000
MAX_PENDING: Final = 100_000
RECORD_BYTES: Final = 256 * 1024
"""Largest Kafka record of entries (well below Kafka's default 1 MiB message limit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    """One request through ``evstate serve``.

    Attributes:
        time: when it arrived, epoch ms.
        principal: who (``None``: no known token, answered 401).
        method: the protocol method (``get``, ``set``...), or ``HEAD /``, ``GET /metrics``,
            ``POST /`` for a request that did not name a valid method.
        scope: the chain's path, when the request named a valid one.
        key: the key (or the lease token) the call was about, if any.
        status: the HTTP status answered.
        duration_ms: how long the answer took.
        remote: the client's address.
        on_behalf_of, correlation_id: as the client stated them.
    """

    time: int
    principal: str | None
    method: str
    scope: str | None
    key: str | None
    status: int
    duration_ms: float
    remote: str | None
    on_behalf_of: str | None = None
    correlation_id: str | None = None

    def to_json(self) -> bytes:
        """The entry's line in a record (no newline: JSON escapes every one inside)."""
        return _compact(
            {
                "time": self.time,
                "principal": self.principal,
                "method": self.method,
                "scope": self.scope,
                "key": self.key,
                "status": self.status,
                "duration_ms": self.duration_ms,
                "remote": self.remote,
                "on_behalf_of": self.on_behalf_of,
                "correlation_id": self.correlation_id,
            }
        ).encode()

    @classmethod
    def from_json(cls, value: bytes) -> AccessRecord:
        """Read one entry's line.

        Raises:
            MalformedEventError: not an access record.
        """
        try:
            data = json.loads(value)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise MalformedEventError(f"not an access-log record: {exc}") from None

    @property
    def when(self) -> datetime:
        """``time`` as a tz-aware datetime (UTC)."""
        return datetime.fromtimestamp(self.time / 1000, UTC)


def access_topic_spec(settings: Settings) -> TopicSpec:
    """The access topic: append-only, the history topic's retention and partitions."""
    return TopicSpec(
        name=settings.access_topic,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        configs={
            "retention.ms": str(settings.history_retention_ms),
            "cleanup.policy": "delete",
        },
    )


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def pack(entries: list[AccessRecord], limit: int = RECORD_BYTES) -> list[bytes]:
    """Entries as record values: JSON lines, each value at most ``limit`` bytes (one
    entry alone may exceed it)."""
    values: list[bytes] = []
    lines: list[bytes] = []
    size = 0
    for entry in entries:
        line = entry.to_json()
        if lines and size + len(line) + 1 > limit:
            values.append(b"\n".join(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        values.append(b"\n".join(lines))
    return values


def unpack(value: bytes) -> list[AccessRecord]:
    """The entries of one record value.

    Raises:
        MalformedEventError: a line that is not an entry.
    """
    return [AccessRecord.from_json(line) for line in value.split(b"\n") if line]


class NoAccessLogError(KafkaError):
    """The access topic does not exist: no server wrote an access log with these topics."""


class AccessLog:
    """Appends :class:`AccessRecord` s to the access topic in batches (see the module).

    Contract: :meth:`append` never blocks and never raises (after close it drops);
    :meth:`close` sends what is queued (waiting at most ``request_timeout``) and is
    idempotent. Use it as ``async with AccessLog(settings) as log:`` or start/close.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.settings = settings
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.dropped = 0
        self.sent = 0
        self._pending: collections.deque[AccessRecord] = collections.deque()
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._partition = secrets.randbelow(settings.partitions)

    async def __aenter__(self) -> AccessLog:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the background sender (it connects, and creates the topic, by itself)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="evstate-access-log")

    def append(self, record: AccessRecord) -> None:
        """Queue ``record`` (the oldest queued is dropped beyond ``max_pending``)."""
        if self._closed:
            return
        self._pending.append(record)
        if len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                log.error(
                    "evstate serve: the access log cannot keep up with Kafka; %d records "
                    "dropped so far",
                    self.dropped,
                )
        if len(self._pending) >= self.max_batch:
            self._wake.set()

    async def _connect(self) -> Producer:
        admin = Admin(self.settings)
        await admin.start()
        try:
            await admin.ensure_topic(access_topic_spec(self.settings))
        finally:
            await admin.stop()
        producer = Producer(self.settings)
        await producer.start()
        return producer

    async def _send(self, batch: list[AccessRecord]) -> None:
        if self._producer is None:
            self._producer = await self._connect()
        topic = self.settings.access_topic
        await self._producer.send_many(
            [OutRecord(topic, self._partition, b"", value, ()) for value in pack(batch)]
        )
        self.sent += len(batch)

    async def _flush(self) -> None:
        while self._pending:
            batch = [
                self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))
            ]
            try:
                await self._send(batch)
            except EvstateError:
                self._pending.extendleft(reversed(batch))  # sent again, maybe twice
                raise

    async def _run(self) -> None:
        delay = 0.25
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self._flush()
                delay = 0.25
            except EvstateError as exc:
                log.warning(
                    "evstate serve: access log not written (%s); %d records wait, retrying in %gs",
                    exc,
                    len(self._pending),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Send what is queued (for at most ``request_timeout``), then disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                await self._flush()
        except (EvstateError, TimeoutError) as exc:
            log.error(
                "evstate serve: %d access-log records not written at close: %s",
                len(self._pending),
                exc,
            )
        if self._producer is not None:
            await self._producer.stop()


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def read_access(
    settings: Settings,
    *,
    since: datetime | None = None,
    principal: str | None = None,
    scope: str | None = None,
) -> AsyncIterator[AccessRecord]:
    """The access log's records, up to its end now, filtered; in time order per principal.

    Args:
        settings: where Kafka is, and the topic prefix.
        since: only records from then on.
        principal: only this principal's.
        scope: only requests on this scope or nested in it (a path, ``app/dev``).

    Raises:
        KafkaError: the access topic does not exist (nothing was served with it).
        BrokerUnavailableError: Kafka did not answer.
    """
    admin = Admin(settings)
    await admin.start()
    try:
        partitions = await admin.partitions(settings.access_topic)
    finally:
        await admin.stop()
    if partitions is None:
        raise NoAccessLogError(
            f"no access log: topic {settings.access_topic} does not exist (evstate serve "
            "writes it when started with --auth or --access-log)"
        )
    wanted = range(partitions)
    tail = Tail(settings, settings.access_topic, partitions)
    await tail.start({})
    try:
        ends = await tail.high_watermarks()
        if since is not None:
            for p in wanted:
                found = await tail.offset_for_time(p, _ms(since))
                tail.seek(p, ends[p] if found is None else found)
        while True:
            positions = await tail.positions()
            if all(positions[p] >= ends[p] for p in wanted):
                return
            for records in (await tail.fetch(0.5)).values():
                for record in records:
                    if record.value is None or record.offset >= ends[record.partition]:
                        continue
                    for entry in unpack(record.value):
                        if _matches(entry, since, principal, scope):
                            yield entry
    finally:
        await tail.stop()


def _matches(
    entry: AccessRecord, since: datetime | None, principal: str | None, scope: str | None
) -> bool:
    if since is not None and entry.time < _ms(since):
        return False
    if principal is not None and entry.principal != principal:
        return False
    if scope is not None:
        path = entry.scope or ""
        return path == scope or path.startswith(scope + "/")
    return True


QUERY_LIMIT: Final = 1000
"""Entries ``query`` answers by default (the newest); at most ``10 * QUERY_LIMIT``."""


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def query(
    settings: Settings, scope: str, options: dict[str, object]
) -> list[dict[str, object]]:
    """The newest entries on ``scope`` (and nested scopes), as ``evstate serve``'s
    ``accessLog`` method answers them (JSON objects, oldest first).

    Args:
        options: ``since`` (epoch ms), ``principal`` (a name), ``limit`` (1 to 10,000;
            default :data:`QUERY_LIMIT`).

    Raises:
        ValidationError: a bad option.
        NoAccessLogError: no access log was written.
    """
    since, principal = options.get("since"), options.get("principal")
    limit = options.get("limit", QUERY_LIMIT)
    if since is not None and not (_whole(since) and isinstance(since, int)):
        raise ValidationError(f"option since must be epoch milliseconds, got {since!r}")
    if principal is not None and not isinstance(principal, str):
        raise ValidationError("option principal must be a principal's name")
    if not (isinstance(limit, int) and _whole(limit) and 1 <= limit <= 10 * QUERY_LIMIT):
        raise ValidationError(f"option limit must be 1 to {10 * QUERY_LIMIT}, got {limit!r}")
    when = None if since is None else datetime.fromtimestamp(since / 1000, UTC)
    found = [r async for r in read_access(settings, since=when, principal=principal, scope=scope)]
    found.sort(key=lambda r: r.time)
    return [json.loads(r.to_json()) for r in found[-limit:]]
