"""The change log read back: every event of a scope, state as of any point, diffs.

Events come from the history topic (append-only, every event kept), or from the state
topic when history is off (there compaction keeps only each key's latest event).

Points in time are a ``datetime`` (by the events' own timestamps) or a :class:`Position`
in the topic read — the ``position`` that :func:`read_events` puts on each event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from evstate import events, keys
from evstate.config import Settings
from evstate.errors import MalformedEventError, ValidationError
from evstate.kafka import Record, Tail
from evstate.model import ChangeEvent, Position, Scope, Tree

Point = datetime | Position
"""A point in a scope's history."""

CLOCK_SLACK = timedelta(seconds=5)
"""Producers stamp records a little after the event itself, and clocks of different
writers differ: readers look this far past a time bound, then filter by event time."""


@dataclass(slots=True)
class Diff:
    """What changed in a scope between two points, as serialized trees."""

    added: dict[str, Tree] = field(default_factory=dict)
    removed: dict[str, Tree] = field(default_factory=dict)
    changed: dict[str, tuple[Tree, Tree]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _event_bytes(record: Record) -> bytes:
    """The encoded event of a record (a state-topic tombstone's is in its header)."""
    if record.value is not None:
        return record.value
    carried = [v for k, v in record.headers if k == events.DELETE_HEADER]
    if not carried:
        position = Position(record.partition, record.offset)
        raise MalformedEventError(f"tombstone at {position} carries no DELETE event")
    return carried[-1]


def record_event(record: Record) -> ChangeEvent:
    """The event a record holds (a state-topic tombstone's is in its header).

    Raises:
        MalformedEventError: the record holds no readable event.
    """
    position = Position(record.partition, record.offset)
    return events.decode(_event_bytes(record), record.headers, position)


def _check_point(point: Point | None, partition: int, name: str) -> None:
    if isinstance(point, Position) and point.partition != partition:
        raise ValidationError(
            f"{name}={point} is in partition {point.partition}, but this scope's events "
            f"are in partition {partition}"
        )
    if isinstance(point, datetime) and point.tzinfo is None:
        raise ValidationError(f"{name} must be a timezone-aware datetime, got {point!r}")


def _ms(when: datetime) -> int:
    return max(0, int(when.timestamp() * 1000))


async def _scope_records(
    settings: Settings,
    partitions: int,
    scope: Scope,
    *,
    key: str | None,
    since: Point | None,
    until: Point | None,
    progress: Callable[[int, int], None] | None,
) -> AsyncIterator[Record]:
    """The records of ``scope`` (or one ``key``) within the bounds' offsets, undecoded.

    A datetime bound is widened by ``CLOCK_SLACK`` here (record timestamps); the caller
    filters by the events' own timestamps.
    """
    topic = settings.history_topic if settings.history else settings.state_topic
    partition = keys.partition_for(scope, partitions)
    _check_point(since, partition, "since")
    _check_point(until, partition, "until")
    exact = keys.record_key(scope, key).encode() if key is not None else None
    prefix = keys.scope_prefix(scope).encode()
    tail = Tail(settings, topic, partitions, only=[partition])
    await tail.start({})
    try:
        # The high watermark, not the last stable offset: a write acknowledged just now
        # may not have its commit marker yet, and it must be read back.
        end = (await tail.high_watermarks())[partition]
        start = (await tail.positions())[partition]
        if isinstance(since, Position):
            start = max(start, since.offset)
        elif isinstance(since, datetime):
            found = await tail.offset_for_time(partition, _ms(since - CLOCK_SLACK))
            start = end if found is None else max(start, found)
        if isinstance(until, Position):
            end = min(end, until.offset + 1)
        elif isinstance(until, datetime):
            found = await tail.offset_for_time(partition, _ms(until + CLOCK_SLACK))
            end = end if found is None else min(end, found)
        tail.seek(partition, start)
        total = max(0, end - start)
        while (pos := (await tail.positions())[partition]) < end:
            if progress is not None:
                progress(min(pos - start, total), total)
            for record in (await tail.fetch(0.5)).get(partition, []):
                if record.offset >= end or record.key is None:
                    continue
                # The prefix matches this scope's ids only: nested scopes continue with '/'.
                if record.key == exact if exact else record.key.startswith(prefix):
                    yield record
        if progress is not None:
            progress(total, total)
    finally:
        await tail.stop()


async def read_events(
    settings: Settings,
    partitions: int,
    scope: Scope,
    *,
    key: str | None = None,
    since: Point | None = None,
    until: Point | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[ChangeEvent]:
    """Every event of ``scope`` (or one ``key`` in it), oldest first, within the bounds.

    Reads the scope's partition up to its end as of the call. ``since`` and ``until`` are
    inclusive. ``progress(done, total)`` counts offsets read.

    Raises:
        ValidationError: a Position bound in another partition, or a naive datetime.
        MalformedEventError: a record of this scope is not a readable event.
    """
    records = _scope_records(
        settings, partitions, scope, key=key, since=since, until=until, progress=progress
    )
    async for record in records:
        event = record_event(record)
        if isinstance(since, datetime) and event.timestamp < since:
            continue
        if isinstance(until, datetime) and event.timestamp > until:
            continue
        yield event


async def replay_trees(
    settings: Settings,
    partitions: int,
    scope: Scope,
    at: Point,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Tree]:
    """Every state of ``scope`` as of ``at``, replayed from the events up to it.

    A key's state is its last event up to ``at``, so only that event is decoded in full:
    the others are passed over as bytes. With a datetime, a record stamped more than
    ``CLOCK_SLACK`` before ``at`` is surely in; for one stamped later, the event's own
    timestamp is read from its ``evstate.time`` header (or, in a record written before
    that header existed, from its Avro record; never from the state's JSON).

    Raises:
        ValidationError: ``at`` is a Position in another partition, or a naive datetime.
        MalformedEventError: a key's last record up to ``at`` is not a readable event.
    """
    when = at if isinstance(at, datetime) else None
    surely_in = 0 if when is None else _ms(when - CLOCK_SLACK)
    last: dict[bytes, Record] = {}
    records = _scope_records(
        settings, partitions, scope, key=None, since=None, until=at, progress=progress
    )
    async for record in records:
        assert record.key is not None  # _scope_records yields keyed records only
        if when is not None and record.timestamp_ms > surely_in and happened_after(record, when):
            continue
        last[record.key] = record
    trees: dict[str, Tree] = {}
    for item in last.values():
        event = record_event(item)
        if event.op == "SET" and event.state is not None:
            trees[event.key] = event.state
    return trees


def happened_after(record: Record, when: datetime) -> bool:
    """Whether the event in ``record`` happened after ``when`` (by its own timestamp).

    Read from the ``evstate.time`` header when the record has one; a record written
    before that header existed is decoded (its Avro record, not its state's JSON).
    """
    after = events.stamped_after(record.headers, when)
    if after is not None:
        return after
    position = Position(record.partition, record.offset)
    return events.summarize(_event_bytes(record), record.headers, position).timestamp > when


def diff_trees(before: dict[str, Tree], after: dict[str, Tree]) -> Diff:
    """The keys added, removed and changed from ``before`` to ``after``."""
    result = Diff()
    for key, tree in after.items():
        if key not in before:
            result.added[key] = tree
        elif before[key] != tree:
            result.changed[key] = (before[key], tree)
    for key, tree in before.items():
        if key not in after:
            result.removed[key] = tree
    return result
