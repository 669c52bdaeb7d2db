"""Reading events back: every change of a scope (or one key), oldest first.

Until the history topic exists (a later change), events are read from the state topic,
which holds every event of a key until compaction keeps only the latest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from evstate import events, keys
from evstate.config import Settings
from evstate.errors import MalformedEventError
from evstate.log import Record, Tail
from evstate.model import ChangeEvent, Position, Scope


def record_event(record: Record) -> ChangeEvent:
    """The event a state-topic record holds (a tombstone's is in its header).

    Raises:
        MalformedEventError: the record holds no readable event.
    """
    position = Position(record.partition, record.offset)
    if record.value is not None:
        return events.decode(record.value, record.headers, position)
    carried = [v for k, v in record.headers if k == events.DELETE_HEADER]
    if not carried:
        raise MalformedEventError(f"tombstone at {position} carries no DELETE event")
    return events.decode(carried[-1], record.headers, position)


async def scope_events(
    settings: Settings, topic: str, partitions: int, scope: Scope, key: str | None = None
) -> AsyncIterator[ChangeEvent]:
    """Every event of ``scope`` (or of one key) in ``topic``, oldest first.

    Reads the scope's partition from its start to its end as of the call.
    """
    partition = keys.partition_for(scope, partitions)
    wanted = (
        keys.record_key(scope, key).encode() if key is not None else None,
        keys.scope_prefix(scope).encode(),
    )
    tail = Tail(settings, topic, partitions, only=[partition])
    await tail.start({})
    try:
        end = (await tail.end_offsets())[partition]
        while (await tail.positions())[partition] < end:
            for record in (await tail.fetch(0.5)).get(partition, []):
                if record.offset >= end or record.key is None:
                    continue
                if wanted[0] is not None and record.key != wanted[0]:
                    continue
                if not record.key.startswith(wanted[1]):
                    continue
                # The prefix also matches ids of this scope only: nested scopes use '/'.
                yield record_event(record)
    finally:
        await tail.stop()
