"""Topics: creating them with explicit settings, checking existing ones, peeking into them
(:meth:`Admin.peek`: ends and first records over the admin's own connections), and
deleting and recreating them (``evstate migrate``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.memory_records import MemoryRecords

from evstate.config import Settings
from evstate.errors import BrokerUnavailableError, KafkaError, TopicMismatchError
from evstate.kafka._connect import client_options, start_within
from evstate.kafka._errors import translated
from evstate.kafka.consume import Record
from evstate.kafka.produce import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic evstate needs, and the settings it must have."""

    name: str
    partitions: int
    replication_factor: int | None  # None: min(3, brokers)
    configs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Peek:
    """What :meth:`Admin.peek` saw of a topic: ends first, then the first records."""

    ends: dict[int, int]
    """Each partition's high watermark (open transactions included)."""
    head: list[Record]
    """The first records of the partition peeked at, in offset order (none if empty)."""


# ListOffsets timestamps: the partition's end, and its first offset kept.
_LATEST = -1
_EARLIEST = -2
# DescribeConfigs: a config set on the topic itself (not a broker or built-in default).
_DYNAMIC_TOPIC_CONFIG = 1


class _UnknownTopicError(KafkaError):
    """The broker asked does not know the topic (it may not have caught up yet)."""


class Admin:
    """Topic creation and inspection."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin = AIOKafkaAdminClient(**client_options(settings))

    async def start(self) -> None:
        """Connect; BrokerUnavailableError within ``connect_timeout`` if nothing answers."""
        await start_within(self._settings, self._admin)

    async def stop(self) -> None:
        """Disconnect; idempotent."""
        with contextlib.suppress(kerr.KafkaError):
            await self._admin.close()

    async def broker_count(self) -> int:
        """How many brokers the cluster has."""
        with translated(self._settings):
            cluster = await self._admin.describe_cluster()
        return len(cluster["brokers"])

    async def partitions(self, topic: str) -> int | None:
        """The partition count of ``topic``, or None if it does not exist."""
        with translated(self._settings):
            topics = await self._admin.describe_topics([topic])
        for t in topics:
            if t["topic"] == topic and t["error_code"] == 0:
                return len(t["partitions"])
        return None

    async def topic_configs(self, topic: str) -> dict[str, str]:
        """Every config of ``topic`` (defaults included)."""
        with translated(self._settings):
            responses = await self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
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
        with translated(self._settings):
            response = await self._admin.create_topics(
                [NewTopic(spec.name, spec.partitions, rf, topic_configs=configs)]
            )
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

    # -- peeking into a topic (the layout check) ------------------------------------

    async def _leaders(self, topic: str) -> dict[int, int]:
        """Each partition's leader; raises _UnknownTopicError if the topic is missing."""
        with translated(self._settings):
            topics = await self._admin.describe_topics([topic])
        leaders = {
            p["partition"]: p["leader"]
            for t in topics
            if t["topic"] == topic and t["error_code"] == 0
            for p in t["partitions"]
        }
        if not leaders:
            raise _UnknownTopicError(f"the broker asked does not know topic {topic}")
        leaderless = sorted(p for p, leader in leaders.items() if leader < 0)
        if leaderless:
            with translated(self._settings):
                raise kerr.LeaderNotAvailableError(f"partitions {leaderless} of {topic}")
        return leaders

    async def _offsets(
        self, topic: str, leaders: Mapping[int, int], partitions: Sequence[int], at: int
    ) -> dict[int, int]:
        """ListOffsets (read_uncommitted) of ``partitions`` at ``at`` (latest or earliest)."""
        by_leader: dict[int, list[int]] = {}
        for partition in partitions:
            by_leader.setdefault(leaders[partition], []).append(partition)
        found: dict[int, int] = {}
        client = self._admin._client  # aiokafka's admin has no ListOffsets of its own
        with translated(self._settings):
            for leader, asked in by_leader.items():
                request = OffsetRequest(-1, 0, [(topic, [(p, at) for p in asked])])
                response = await client.send(leader, request)
                for _, answers in response.topics:
                    for partition, error_code, *rest in answers:
                        if error_code:
                            raise kerr.for_code(error_code)(f"ListOffsets of {topic}[{partition}]")
                        found[partition] = int(rest[-1])
        return found

    async def peek(self, topic: str, partition: int = 0, *, max_bytes: int) -> Peek | None:
        """Every partition's end, *then* the first records of ``partition``.

        Sent over the admin's own connections (no consumer to start): a ListOffsets to each
        leader, then one Fetch (read_uncommitted, no wait) of up to ``max_bytes`` (at
        least one batch) from the partition's first offset. In that order, so a record
        counted in an end was written before the records read are looked at. Transaction
        markers are left out; records of open or aborted transactions are not.

        Returns:
            What it saw; None when the topic does not exist.

        Raises:
            BrokerUnavailableError: the cluster did not answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout
        while True:
            try:
                leaders = await self._leaders(topic)
                ends = await self._offsets(topic, leaders, sorted(leaders), _LATEST)
                if not ends.get(partition):
                    return Peek(ends, [])
                return Peek(ends, await self._read(topic, leaders, partition, 0, max_bytes))
            except _UnknownTopicError:
                return None
            except BrokerUnavailableError as exc:
                # A new topic's leaders are elected, or moved: ask again, for a while.
                cause = exc.__cause__
                if not isinstance(cause, kerr.KafkaError) or not cause.retriable:
                    raise
                if loop.time() >= deadline:
                    raise
                log.debug("peeking into %s: %s", topic, cause)
            await asyncio.sleep(0.05)

    async def read_from(
        self, topic: str, partition: int, offset: int, *, max_bytes: int
    ) -> list[Record]:
        """The records of ``partition`` from ``offset`` on, as one Fetch answers (see
        :meth:`peek`); from the first offset kept if ``offset`` is below it.

        Raises:
            KafkaError: the topic does not exist.
            BrokerUnavailableError: the cluster did not answer.
        """
        return await self._read(topic, await self._leaders(topic), partition, offset, max_bytes)

    async def _read(
        self,
        topic: str,
        leaders: Mapping[int, int],
        partition: int,
        offset: int,
        max_bytes: int,
    ) -> list[Record]:
        client = self._admin._client  # aiokafka's admin does not fetch
        with translated(self._settings):
            for _ in range(3):  # the first offset kept may move (retention) while we ask
                # max_wait 0, min_bytes 1, read_uncommitted (0).
                request = FetchRequest(
                    0, 1, max_bytes, 0, [(topic, [(partition, offset, max_bytes)])]
                )
                response = await client.send(leaders[partition], request)
                answers = [a for _, found in response.topics for a in found if a[0] == partition]
                if not answers:
                    raise kerr.UnknownTopicOrPartitionError(f"no answer for {topic}[{partition}]")
                _, error_code, _, *rest = answers[0]
                if error_code == kerr.OffsetOutOfRangeError.errno:
                    first = await self._offsets(topic, leaders, [partition], _EARLIEST)
                    if offset >= first[partition]:  # past the end: nothing there yet
                        return []
                    offset = first[partition]
                    continue
                if error_code:
                    raise kerr.for_code(error_code)(f"Fetch of {topic}[{partition}]")
                return _unpack(partition, offset, rest[-1])
        raise kerr.OffsetOutOfRangeError(f"{topic}[{partition}] kept moving its start")

    # -- deleting and recreating (evstate migrate) ------------------------------------

    async def describe(self, topic: str) -> tuple[int, int, dict[str, str]] | None:
        """``(partitions, replication factor, configs set on the topic)``; None if missing.

        Only the topic's own configs (not broker or built-in defaults), so a topic made
        again from them behaves as this one, and follows later changes of the defaults.
        """
        with translated(self._settings):
            topics = await self._admin.describe_topics([topic])
        found = [t for t in topics if t["topic"] == topic and t["error_code"] == 0]
        if not found or not found[0]["partitions"]:
            return None
        partitions = found[0]["partitions"]
        replicas = max(len(p["replicas"]) for p in partitions)
        with translated(self._settings):
            responses = await self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        own: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                if resource[0]:
                    raise KafkaError(f"describing {topic} failed: {resource[1]}")
                own.update((entry[0], entry[1]) for entry in resource[4] if _set_on_topic(entry))
        return len(partitions), replicas, own

    async def delete(self, topic: str) -> None:
        """Delete ``topic`` and wait until the cluster no longer lists it.

        A topic that is already gone is fine. Kafka deletes asynchronously: the topic may
        still be "marked for deletion" when this returns (see :meth:`create_again`).

        Raises:
            KafkaError: the broker refused, or still listed it after ``request_timeout``.
        """
        with translated(self._settings):
            response = await self._admin.delete_topics([topic])
        for name, code, *_ in response.topic_error_codes:
            if code and code != kerr.UnknownTopicOrPartitionError.errno:
                raise KafkaError(f"deleting topic {name} failed (error {code})")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.request_timeout
        while await self.partitions(topic) is not None:
            if loop.time() >= deadline:
                raise KafkaError(
                    f"topic {topic} is still listed {self._settings.request_timeout:g}s "
                    "after it was deleted; run the command again"
                )
            await asyncio.sleep(0.1)

    async def create_again(self, spec: TopicSpec, *, timeout: float) -> None:
        """Create ``spec`` with exactly its configs, retrying while a deleted topic of that
        name is still being removed ("already exists" / "marked for deletion").

        Raises:
            KafkaError: the broker refused, or the old topic was not gone within ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        rf = spec.replication_factor or min(3, await self.broker_count())
        new = NewTopic(spec.name, spec.partitions, rf, topic_configs=dict(spec.configs))
        while True:
            with translated(self._settings):
                response = await self._admin.create_topics([new])
            codes = [(code, message) for _, code, message in _topic_errors(response)]
            code, message = codes[0] if codes else (0, None)
            if not code:
                break
            if code != kerr.TopicAlreadyExistsError.errno:
                raise KafkaError(f"creating topic {spec.name} failed (error {code}): {message}")
            if loop.time() >= deadline:
                raise KafkaError(
                    f"topic {spec.name} still exists {timeout:g}s after it was deleted "
                    f"({message}); run the command again"
                )
            await asyncio.sleep(0.2)
        await self._await_leaders(spec)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """``(topic, error code, message)`` of a CreateTopics response (v0 has no message)."""
    return [(e[0], e[1], e[2] if len(e) > 2 else None) for e in response.topic_errors]


def _set_on_topic(entry: Any) -> bool:
    """Whether a DescribeConfigs entry was set on the topic itself."""
    source = entry[3]  # v0: is_default (bool); v1+: config_source
    if isinstance(source, bool):
        return not source
    return bool(source == _DYNAMIC_TOPIC_CONFIG)


def _unpack(partition: int, offset: int, data: bytes | None) -> list[Record]:
    """The data records of a Fetch answer from ``offset`` on (transaction markers left out)."""
    if not data:
        return []
    found: list[Record] = []
    records = MemoryRecords(data)
    while records.has_next():
        batch = records.next_batch()
        if batch is None:
            break
        if batch.is_control_batch:
            continue
        for r in batch:
            if r.offset >= offset:  # a compressed batch may start before it
                found.append(
                    Record(partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp)
                )
    return found
