"""Topics: creating them with explicit settings, and checking existing ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiokafka.errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.offset import OffsetRequest

from evstate.config import Settings
from evstate.errors import BrokerUnavailableError, KafkaError, TopicMismatchError
from evstate.kafka._connect import client_options, start_within
from evstate.kafka._errors import translated
from evstate.kafka.produce import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic evstate needs, and the settings it must have."""

    name: str
    partitions: int
    replication_factor: int | None  # None: min(3, brokers)
    configs: Mapping[str, str]


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
