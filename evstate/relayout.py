"""``evstate migrate``: rewrite topics written with the old partition rule, in place.

Older evstate placed a scope's events by its full path; this one by its stage (the first
two names, :func:`evstate.keys.partition_for`), and refuses unmarked topics that hold
records (:mod:`evstate.layout`). Migrating rewrites the pair of topics under the same
names, records copied byte for byte (keys, Avro values, headers, timestamps):

1. **Back up.** ``{prefix}.state`` and ``{prefix}.history`` are copied, partition for
   partition, to ``{prefix}.state.pre-stage`` and ``{prefix}.history.pre-stage`` (same
   partition count, replication and topic configs), then a progress record
   (:data:`PROGRESS_KEY`, ``{"step": "copied"}``) goes to the state backup. The backups
   are kept afterwards: delete them once the migrated topics have proved themselves.
2. **Rewrite.** The originals are deleted and made again with the backups' settings
   (creation is retried while Kafka still removes the old topic), the layout marker is
   written first, then every history event goes to its stage's partition, and the
   state topic gets each key's latest record (tombstones and superseded records left
   out: they are what compaction drops anyway). Partitions are merged by record time,
   each partition in offset order, so every scope's events keep their order. Last, a
   progress record ``{"step": "done"}`` goes to the state backup.

Run it again after a crash: the backups say how far it got (none or unfinished: back up
again; ``copied``: rewrite again from the backups; ``done``: nothing to do). Every
process using the topics must be stopped first (a transaction still open is refused)
and stay stopped until it finishes; their views then hold offsets of topics that no
longer exist, and each one reads the topics again once, at its next start
(:mod:`evstate.layout_check`). Watchers' groups lose their committed offsets with the
old history topic and begin again at their ``start``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from evstate import layout
from evstate.config import Settings
from evstate.errors import KafkaError, LayoutError
from evstate.kafka import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Admin,
    BulkProducer,
    Record,
    Tail,
    TopicSpec,
)
from evstate.layout_check import HEAD_BYTES, write_marker

__all__ = [
    "BACKUP_SUFFIX",
    "PROGRESS_KEY",
    "Plan",
    "Progress",
    "Result",
    "Step",
    "Topic",
    "backup_name",
    "decide",
    "migrate",
    "plan",
]

BACKUP_SUFFIX: Final = ".pre-stage"
"""Appended to a topic's name to name its backup."""
PROGRESS_KEY: Final = b"\x00evstate.migration"
"""The key of the progress records in the state backup's partition 0 (no state's key)."""
_TOPIC_MAX: Final = 249  # Kafka's longest topic name
_CHUNK: Final = 1000  # records sent before waiting for their acknowledgements
_CREATE_WAIT: Final = 120.0  # seconds a deleted topic may take to go away

Progress = Callable[[str, int, int], None]
"""Called with (what, offsets read, offsets in all) while a topic is read."""


class Step(Enum):
    """What ``evstate migrate`` does (see the module docstring)."""

    NOTHING = "nothing"
    BACKUP = "backup"  # back up, then rewrite
    REWRITE = "rewrite"  # the backups are complete: rewrite from them
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic to make again: its name, settings and how many offsets its source holds."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    offsets: int

    def spec(self, name: str | None = None) -> TopicSpec:
        """This topic's settings under ``name`` (default: its own)."""
        return TopicSpec(name or self.name, self.partitions, self.replication_factor, self.configs)


@dataclass(slots=True)
class Plan:
    """What :func:`plan` found and what :func:`migrate` will do."""

    step: Step
    reason: str
    state: Topic | None = None
    history: Topic | None = None
    state_backup: str = ""
    history_backup: str = ""
    scopes: int = 0
    moving_scopes: int = 0

    def actions(self) -> list[str]:
        """The steps :func:`migrate` takes, in words."""
        if self.step not in (Step.BACKUP, Step.REWRITE) or self.state is None:
            return []
        pairs = [(t, b) for t, b in ((self.state, self.state_backup),) if t is not None]
        if self.history is not None:
            pairs.append((self.history, self.history_backup))
        done: list[str] = []
        if self.step is Step.BACKUP:
            done += [f"copy {t.name} ({t.offsets} offsets) to {b} (kept)" for t, b in pairs]
        names = " and ".join(t.name for t, _ in pairs)
        done.append(f"delete {names} and create them again with the same settings")
        done.append(f"write the layout marker to {self.state.name}")
        if self.history is not None:
            done.append(
                f"copy every event from {self.history_backup} to {self.history.name}, "
                "each to its stage's partition"
            )
        done.append(
            f"copy each key's latest record from {self.state_backup} to {self.state.name}, "
            "each to its stage's partition (tombstones dropped)"
        )
        return done


@dataclass(slots=True)
class Result:
    """What :func:`migrate` did."""

    backed_up: dict[str, int] = field(default_factory=dict)  # backup -> records copied
    history_events: int = 0
    state_records: int = 0
    state_dropped: int = 0  # superseded records and tombstones left out


def backup_name(topic: str) -> str:
    """The backup of ``topic``: ``{topic}.pre-stage``.

    A name too long for Kafka (249 chars) is shortened, the same way every time: the
    topic's name cut, then 8 hex digits of its SHA-256, then ``.pre-stage``.
    """
    name = topic + BACKUP_SUFFIX
    if len(name) <= _TOPIC_MAX:
        return name
    digest = hashlib.sha256(topic.encode()).hexdigest()[:8]
    return f"{topic[: _TOPIC_MAX - len(BACKUP_SUFFIX) - 9]}-{digest}{BACKUP_SUFFIX}"


def decide(topic: str, found: str, backup: str | None, backups: str) -> tuple[Step, str]:
    """What to do, from what the state topic and its backup hold.

    Args:
        topic: the state topic's name (for the reasons).
        found: the state topic: ``"missing"``, ``"empty"``, ``"marked"`` (this layout) or
            ``"legacy"`` (records, no marker).
        backup: the state backup's progress: None (no backup), ``"partial"`` (a backup
            without a finished copy), ``"copied"`` or ``"done"``.
        backups: the backups' names (for the reasons).

    Returns:
        The step and why, in words.
    """
    if backup == "copied":
        return Step.REWRITE, (
            f"an earlier run backed up {topic} to {backups} and stopped before it finished: "
            "rewriting the topics from the backups"
        )
    if backup == "done":
        if found == "legacy":
            return Step.REFUSE, (
                f"{topic} was migrated before ({backups} are its backups), but holds "
                "records of the old layout again: was an older evstate writing? Delete or "
                "rename the backups, then run evstate migrate again"
            )
        return Step.NOTHING, (
            f"{topic} was migrated already: nothing to migrate ({backups} are kept as "
            "backups: delete them when no longer needed)"
        )
    if found == "legacy":
        if backup == "partial":
            return Step.BACKUP, (
                f"{topic} uses the old partition rule; an earlier run left unfinished "
                f"backups ({backups}): backing up again"
            )
        return Step.BACKUP, f"{topic} uses the old partition rule"
    if backup == "partial":
        return Step.REFUSE, (
            f"{backups} exist without a finished copy, but {topic} is not in the old "
            "layout: look at them and delete them by hand"
        )
    reasons = {
        "missing": f"{topic} does not exist: nothing to migrate",
        "empty": f"{topic} is empty: nothing to migrate (evstate marks it on first use)",
        "marked": f"{topic} already uses the stage layout: nothing to migrate",
    }
    return Step.NOTHING, reasons[found]


async def _found(admin: Admin, topic: str) -> str:
    """What the state topic holds: missing, empty, marked or legacy (see :func:`decide`)."""
    peek = await admin.peek(topic, 0, max_bytes=HEAD_BYTES)
    if peek is None:
        return "missing"
    try:
        verdict = layout.judge(topic, peek.ends, peek.head)
    except LayoutError as exc:
        if exc.found == "legacy":
            return "legacy"
        raise
    return "marked" if verdict is layout.Verdict.MARKED else "empty"


async def _backup_progress(admin: Admin, state_backup: str, history_backup: str) -> str | None:
    """How far an earlier run got, from the state backup's last record."""
    peek = await admin.peek(state_backup, 0, max_bytes=1)
    if peek is None:
        return None if await admin.partitions(history_backup) is None else "partial"
    end = peek.ends.get(0, 0)
    last = await admin.read_from(state_backup, 0, end - 1, max_bytes=1) if end else []
    for record in reversed(last):
        if record.key == PROGRESS_KEY:
            try:
                step = json.loads(record.value or b"{}").get("step")
            except (ValueError, AttributeError):
                step = None
            if step in ("copied", "done"):
                return str(step)
    return "partial"


async def _topic(admin: Admin, name: str, source: str) -> Topic | None:
    """``name`` as it will be made again, from ``source``'s settings (None if missing)."""
    described = await admin.describe(source)
    if described is None:
        return None
    partitions, replicas, configs = described
    peek = await admin.peek(source, 0, max_bytes=1)
    offsets = sum(peek.ends.values()) if peek is not None else 0
    return Topic(name, partitions, replicas, configs, offsets)


async def plan(settings: Settings, *, count_scopes: bool = True) -> Plan:
    """Look at the topics and their backups; change nothing.

    Args:
        settings: the topics (``topic_prefix``) and how to reach Kafka.
        count_scopes: read the state topic through to count the scopes that change
            partition (for the report).

    Raises:
        LayoutError: the state topic carries a marker this evstate does not know.
        BrokerUnavailableError: Kafka did not answer.
    """
    state_topic, history_topic = settings.state_topic, settings.history_topic
    state_backup, history_backup = backup_name(state_topic), backup_name(history_topic)
    admin = Admin(settings)
    await admin.start()
    try:
        found = await _found(admin, state_topic)
        progress = await _backup_progress(admin, state_backup, history_backup)
        step, reason = decide(state_topic, found, progress, f"{state_backup} and {history_backup}")
        result = Plan(step, reason, state_backup=state_backup, history_backup=history_backup)
        if step is Step.BACKUP:
            result.state = await _topic(admin, state_topic, state_topic)
            result.history = await _topic(admin, history_topic, history_topic)
        elif step is Step.REWRITE:
            result.state = await _topic(admin, state_topic, state_backup)
            result.history = await _topic(admin, history_topic, history_backup)
    finally:
        await admin.stop()
    if result.state is None and step in (Step.BACKUP, Step.REWRITE):
        return Plan(
            Step.REFUSE,
            f"{state_backup} is gone: cannot rewrite {state_topic}",
            state_backup=state_backup,
            history_backup=history_backup,
        )
    if count_scopes and result.state is not None:
        source = state_topic if step is Step.BACKUP else state_backup
        result.scopes, result.moving_scopes = await _count_moves(
            settings, source, result.state.partitions
        )
    return result


async def _count_moves(settings: Settings, topic: str, partitions: int) -> tuple[int, int]:
    """How many scopes the state topic holds, and how many change partition."""
    where: dict[bytes, bool] = {}
    async for record in _records(settings, topic, partitions):
        path = (record.key or b"").partition(b":")[0]
        if path and not path.startswith(b"\x00"):
            moved = layout.partition_of_record(record.key, record.partition, partitions)
            where[path] = where.get(path, False) or moved != record.partition
    return len(where), sum(where.values())


async def _records(
    settings: Settings,
    topic: str,
    partitions: int,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[Record]:
    """Every committed record of ``topic``: partitions merged by record time, each
    partition in offset order (so a scope's events, all in one partition, keep theirs).

    Raises:
        KafkaError: a transaction is open in the topic (a writer is still running).
    """
    tail = Tail(settings, topic, partitions)
    await tail.start({})
    try:
        ends = await tail.end_offsets()
        open_ends = await tail.high_watermarks()
        busy = sorted(p for p, end in open_ends.items() if end > ends.get(p, 0))
        if busy:
            raise KafkaError(
                f"a transaction is open in {topic} (partitions {busy}): a writer is still "
                "running, or died less than its transaction_timeout ago; stop every "
                "process writing to the topics, wait, then run evstate migrate again"
            )
        total = sum(ends.values())
        buffers: dict[int, deque[Record]] = {p: deque() for p in ends}
        positions = await tail.positions()
        reading = {p for p in ends if positions[p] < ends[p]}
        while True:
            starving = [p for p in sorted(reading) if not buffers[p]]
            if starving:
                tail.only_fetch(starving)
                for p, records in (await tail.fetch(0.5)).items():
                    buffers[p].extend(r for r in records if r.offset < ends[p])
                positions = await tail.positions()
                reading = {p for p in reading if positions[p] < ends[p]}
                if progress is not None:
                    progress(sum(min(positions[p], ends[p]) for p in ends), total)
                continue
            heads = [(buffer[0].timestamp_ms, p) for p, buffer in buffers.items() if buffer]
            if not heads:
                break
            yield buffers[min(heads)[1]].popleft()
        if progress is not None:
            progress(total, total)
    finally:
        await tail.stop()


def _limit(topic: Topic) -> int:
    return max(
        DEFAULT_MAX_MESSAGE_BYTES,
        int(topic.configs.get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES)),
    )


async def _copy(
    settings: Settings,
    source: str,
    target: Topic,
    where: Callable[[Record], int | None],
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Copy the records of ``source`` that ``where`` places (None: left out) to ``target``.

    Returns:
        ``(records copied, records read)``.
    """
    producer = BulkProducer(settings, max_request_size=_limit(target))
    await producer.start()
    copied = read = 0
    chunk: list[tuple[int, Record]] = []
    try:
        async for record in _records(settings, source, target.partitions, progress):
            if record.key is not None and record.key.startswith(b"\x00"):
                continue  # evstate's own records (marker, progress) are never copied
            read += 1
            partition = where(record)
            if partition is None:
                continue
            chunk.append((partition, record))
            if len(chunk) >= _CHUNK:
                await producer.copy(target.name, chunk)
                copied, chunk = copied + len(chunk), []
        await producer.copy(target.name, chunk)
        return copied + len(chunk), read
    finally:
        await producer.stop()


async def _note(settings: Settings, state_backup: Topic, step: str, result: Result) -> None:
    """Append a progress record to the state backup's partition 0."""
    value = json.dumps({"step": step, "backed_up": result.backed_up}).encode()
    note = Record(0, 0, PROGRESS_KEY, value, (), int(time.time() * 1000))
    producer = BulkProducer(settings)
    await producer.start()
    try:
        await producer.copy(state_backup.name, [(0, note)])
    finally:
        await producer.stop()


def _report(progress: Progress | None, what: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(what, done, total)


async def migrate(settings: Settings, planned: Plan, progress: Progress | None = None) -> Result:
    """Carry out ``planned`` (from :func:`plan`): see the module docstring.

    Every process using the topics must be stopped, and stay stopped until this returns.

    Returns:
        How many records went where.

    Raises:
        KafkaError: a transaction is open (a writer still runs), or Kafka refused to
            delete or create a topic.
        WriteFailedError, BrokerUnavailableError: Kafka did not acknowledge or answer.
    """
    result = Result()
    state, history = planned.state, planned.history
    if planned.step not in (Step.BACKUP, Step.REWRITE) or state is None:
        return result
    pairs = [(state, planned.state_backup)]
    if history is not None:
        pairs.append((history, planned.history_backup))
    admin = Admin(settings)
    await admin.start()
    try:
        if planned.step is Step.BACKUP:
            for topic, backup in pairs:
                await admin.delete(backup)  # an unfinished backup of an earlier run
                await admin.create_again(topic.spec(backup), timeout=_CREATE_WAIT)
                copy = _report(progress, f"backing up {topic.name}")
                target = dataclasses.replace(topic, name=backup)
                copied, _ = await _copy(settings, topic.name, target, _same, copy)
                result.backed_up[backup] = copied
            await _note(
                settings, dataclasses.replace(state, name=planned.state_backup), "copied", result
            )
        for topic, _ in pairs:
            await admin.delete(topic.name)
        for topic, _ in pairs:
            await admin.create_again(topic.spec(), timeout=_CREATE_WAIT)
    finally:
        await admin.stop()
    await write_marker(settings, state.name)
    if history is not None:
        copy = _report(progress, f"rewriting {history.name}")
        result.history_events, _ = await _copy(
            settings, planned.history_backup, history, _by_stage(history.partitions), copy
        )
    latest = await _latest(settings, planned.state_backup, state.partitions, progress)
    copy = _report(progress, f"rewriting {state.name}")
    result.state_records, read = await _copy(
        settings, planned.state_backup, state, _live(latest, state.partitions), copy
    )
    result.state_dropped = read - result.state_records
    await _note(settings, dataclasses.replace(state, name=planned.state_backup), "done", result)
    return result


def _same(record: Record) -> int | None:
    """A backup keeps every record where it was."""
    return record.partition


def _by_stage(partitions: int) -> Callable[[Record], int | None]:
    """Every event to its stage's partition."""

    def where(record: Record) -> int | None:
        return layout.partition_of_record(record.key, record.partition, partitions)

    return where


async def _latest(
    settings: Settings, topic: str, partitions: int, progress: Progress | None
) -> dict[bytes, tuple[int, int] | None]:
    """Each key's latest record in ``topic`` (None: a tombstone); evstate's own keys left out."""
    latest: dict[bytes, tuple[int, int] | None] = {}
    reading = _report(progress, f"reading the keys of {topic}")
    async for record in _records(settings, topic, partitions, reading):
        if record.key is None or record.key.startswith(b"\x00"):
            continue
        latest[record.key] = (record.partition, record.offset) if record.value is not None else None
    return latest


def _live(
    latest: dict[bytes, tuple[int, int] | None], partitions: int
) -> Callable[[Record], int | None]:
    """Each key's latest record, if not a tombstone, to its stage's partition."""

    def where(record: Record) -> int | None:
        if record.key is None or latest.get(record.key) != (record.partition, record.offset):
            return None
        return layout.partition_of_record(record.key, record.partition, partitions)

    return where
