"""Reading: ``read_committed`` consumers of one topic.

* :class:`Tail` — every partition (or some), positioned by the caller (the view's stored
  offsets), no consumer group; knows each partition's ends.
* :class:`GroupTail` — a member of a consumer group (watchers), or a reader of its own.

Both share their consumer's setup, seeking, fetching and positions (:class:`_Reader`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.client import ConnectionGroup
from aiokafka.protocol.offset import OffsetRequest

from evstate.config import Settings
from evstate.errors import KafkaError
from evstate.kafka._connect import client_options, start_within, stop_consumer
from evstate.kafka._errors import reading, translated
from evstate.kafka.produce import Headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a partition."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int


def _records(tp: TopicPartition, records: list[Any]) -> list[Record]:
    return [Record(tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp) for r in records]


class _Reader:
    """What both readers share: one ``read_committed`` consumer of one topic."""

    def __init__(self, settings: Settings, topic: str, group: str | None) -> None:
        self._settings = settings
        self._topic = topic
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

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self._topic, partition)

    async def stop(self) -> None:
        """Disconnect (and leave the group); idempotent. Commits nothing by itself."""
        await stop_consumer(self._consumer)

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on."""
        self._consumer.seek(self._tp(partition), offset)

    async def offset_for_time(self, partition: int, ms: int) -> int | None:
        """The first offset of ``partition`` whose record time is >= ``ms``, if any."""
        tp = self._tp(partition)
        with translated(self._settings):
            found = await self._consumer.offsets_for_times({tp: ms})
        hit = found.get(tp)
        return None if hit is None else int(hit.offset)

    async def _fetch(self, timeout: float, max_records: int | None) -> dict[TopicPartition, Any]:
        with reading(self._topic):
            batches: dict[TopicPartition, Any] = await self._consumer.getmany(
                timeout_ms=int(timeout * 1000), max_records=max_records
            )
        return batches

    async def _positions(self, tps: Collection[TopicPartition]) -> dict[int, int]:
        return {tp.partition: int(await self._consumer.position(tp)) for tp in tps}

    def _last_stable(self, tps: Collection[TopicPartition]) -> dict[int, int | None]:
        ends: dict[int, int | None] = {}
        for tp in tps:
            try:
                end = self._consumer.last_stable_offset(tp)
            except (kerr.KafkaError, AssertionError, AttributeError):  # not assigned (any more)
                end = None
            ends[tp.partition] = None if end is None or end < 0 else int(end)
        return ends


class Tail(_Reader):
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
        super().__init__(settings, topic, None)
        self._tps = [self._tp(p) for p in (only or range(partitions))]

    async def start(self, offsets: Mapping[int, int]) -> None:
        """Connect, assign every partition, and seek each to ``offsets`` (or the start)."""
        await start_within(self._settings, self._consumer)
        self._consumer.assign(self._tps)
        for tp in self._tps:
            if tp.partition in offsets:
                self._consumer.seek(tp, offsets[tp.partition])
            else:
                await self._consumer.seek_to_beginning(tp)

    async def fetch(
        self, timeout: float, max_records: int | None = None
    ) -> dict[int, list[Record]]:
        """Records that arrived, waiting up to ``timeout`` seconds for the first.

        Raises:
            KafkaError: the fetch failed for a reason retrying will not fix.
        """
        batches = await self._fetch(timeout, max_records)
        return {tp.partition: _records(tp, records) for tp, records in batches.items()}

    async def positions(self) -> dict[int, int]:
        """The next offset each partition will be read from."""
        return await self._positions(self._tps)

    def last_stable(self) -> dict[int, int | None]:
        """Each partition's last stable offset as its latest fetch answer gave it (no
        request is sent); None before the first answer for that partition."""
        return self._last_stable(self._tps)

    def only_fetch(self, partitions: Collection[int]) -> None:
        """Fetch just ``partitions`` until called again; an empty collection fetches all.

        Records already fetched for the others are kept for later.
        """
        wanted = set(partitions)
        paused = [tp for tp in self._tps if wanted and tp.partition not in wanted]
        current = self._consumer.paused()
        if set(paused) == current:
            return
        self._consumer.resume(*current)
        if paused:
            self._consumer.pause(*paused)

    async def end_offsets(self) -> dict[int, int]:
        """Each partition's last stable offset (read_committed end), asked of the broker."""
        with translated(self._settings):
            ends = await self._consumer.end_offsets(self._tps)
        return {tp.partition: off for tp, off in ends.items()}

    async def high_watermarks(self) -> dict[int, int]:
        """Each partition's end, open transactions included, asked of the broker now.

        Every write acknowledged before this call lies below it: a commit is acknowledged
        before its markers are written, so the last stable offset may not include it yet.
        Once a ``read_committed`` position reaches this mark, every transaction in it was
        decided and the committed ones were read. Asked over the consumer's own
        connections (a ``read_uncommitted`` ListOffsets to each leader), so no second
        client has to start.
        """
        client = self._consumer._client  # aiokafka's consumer has no uncommitted ends
        with translated(self._settings):
            by_leader: dict[int, list[int]] = {}
            for tp in self._tps:
                leader = client.cluster.leader_for_partition(tp)
                if leader is None or leader < 0:
                    await client.force_metadata_update()
                    leader = client.cluster.leader_for_partition(tp)
                if leader is None or leader < 0:
                    raise kerr.LeaderNotAvailableError(f"no leader for {tp}")
                by_leader.setdefault(leader, []).append(tp.partition)
            ends: dict[int, int] = {}
            for leader, partitions in by_leader.items():
                # Latest offset (-1), read_uncommitted (0).
                request = OffsetRequest(-1, 0, [(self._topic, [(p, -1) for p in partitions])])
                # Not on the fetch connection: a broker answers a connection's requests in
                # order, so this would wait behind the long-polling fetch (up to 100 ms).
                response = await client.send(leader, request, group=ConnectionGroup.COORDINATION)
                for _, answers in response.topics:
                    for partition, error_code, *rest in answers:
                        if error_code:
                            raise kerr.for_code(error_code)(f"ListOffsets of {partition}")
                        ends[partition] = int(rest[-1])
        return ends


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


class GroupTail(_Reader):
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
        super().__init__(settings, topic, group)
        self._group = group
        self._tps = [self._tp(p) for p in (only or range(partitions))]
        self._assignments = assignments
        self._joined = asyncio.Event()
        self._failure: BaseException | None = None

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
        await start_within(self._settings, self._consumer)
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
        with reading(f"{self._group!r}'s offsets"):
            found = await self._consumer.committed(self._tp(partition))
        return None if found is None else int(found)

    async def bounds(self, partition: int) -> tuple[int, int]:
        """The first offset ``partition`` keeps and its last stable offset (the end)."""
        tp = self._tp(partition)
        with translated(self._settings):
            first = await self._consumer.beginning_offsets([tp])
            end = await self._consumer.end_offsets([tp])
        return int(first[tp]), int(end[tp])

    async def fetch(
        self, timeout: float, max_records: int | None = None
    ) -> dict[int, list[Record]]:
        """Records that arrived, waiting up to ``timeout`` seconds for the first.

        Raises:
            KafkaError: the fetch failed for a reason retrying will not fix.
            EvstateError: ``assignments`` raised it while the group rebalanced.
        """
        self._raise_failure()
        batches = await self._fetch(timeout, max_records)
        self._raise_failure()
        mine = self._consumer.assignment()
        return {
            tp.partition: _records(tp, records)
            for tp, records in batches.items()
            if tp in mine  # a rebalance may have taken the partition since the fetch
        }

    async def positions(self) -> dict[int, int]:
        """The next offset each assigned partition will be read from."""
        return await self._positions(self._consumer.assignment())

    def last_stable(self) -> dict[int, int | None]:
        """Each assigned partition's last stable offset as of its last fetch (None until)."""
        return self._last_stable(sorted(self._consumer.assignment()))

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
        wanted = {self._tp(p): o for p, o in offsets.items()}
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
