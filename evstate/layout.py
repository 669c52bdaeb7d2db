"""The layout marker: which partition rule a state topic was written with.

evstate places every event of a scope in the partition of the scope's *stage* (the first
two names of its path, :func:`evstate.keys.partition_for`). Older evstate hashed the
full path (:func:`evstate.keys.legacy_partition_for`), so their topics hold the events
of nested scopes (three names or more) elsewhere, where a reader no longer looks.

So the first record evstate writes into a new state topic, in partition 0, is a *marker*:
key :data:`MARKER_KEY` (a NUL byte cannot start a record key, since scope names forbid
control characters), value :func:`marker_value`, header :data:`MARKER_HEADER`. Nothing
ever writes that key again (nothing is there to overwrite), so compaction keeps it. It is
not an event: every reader of the state topic skips it (:func:`is_marker`). The history
topic gets none: both topics are written in one transaction, and ``evstate migrate``
rewrites both, so the state topic speaks for the pair.

Whether a topic may be used is a pure decision on what a probe saw
(:func:`judge`): the topic's ends and the first records of partition 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Final, Protocol

from evstate import keys
from evstate.errors import LayoutError

__all__ = [
    "MARKER_HEADER",
    "MARKER_KEY",
    "PARTITIONING",
    "VERSION",
    "Head",
    "Verdict",
    "is_marker",
    "judge",
    "layout_error",
    "marker_headers",
    "marker_value",
    "parse_marker",
    "partition_of_record",
]

MARKER_KEY: Final = b"\x00evstate.layout"
"""The marker's record key: no record key of a state can start with a NUL byte."""
MARKER_HEADER: Final = "evstate.layout"
"""The header every marker carries (its value is the marker's JSON, as the record's)."""
PARTITIONING: Final = "stage"
"""The rule this evstate writes with: a scope's events go to its stage's partition."""
VERSION: Final = 2
"""The layout's version: 1 was the full-path rule (topics without a marker), 2 the stage."""


def marker_value() -> bytes:
    """The marker's value: ``{"partitioning":"stage","version":2}`` as compact JSON."""
    return json.dumps(
        {"partitioning": PARTITIONING, "version": VERSION}, separators=(",", ":")
    ).encode()


def marker_headers() -> list[tuple[str, bytes]]:
    """The headers of a marker record."""
    return [(MARKER_HEADER, marker_value())]


def is_marker(key: bytes | None) -> bool:
    """True when a record with ``key`` is the layout marker (not an event: skip it)."""
    return key == MARKER_KEY


def parse_marker(value: bytes | None) -> tuple[str, int] | None:
    """``(partitioning, version)`` of a marker's value; None when it is not one evstate wrote."""
    try:
        found = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    partitioning, version = found.get("partitioning"), found.get("version")
    if not isinstance(partitioning, str) or isinstance(version, bool):
        return None
    if not isinstance(version, int):
        return None
    return partitioning, version


class Verdict(Enum):
    """What a state topic's probe says."""

    MARKED = "marked"
    """It carries this evstate's marker: use it."""
    EMPTY = "empty"
    """Nothing was ever written: write the marker, then use it."""


class Head(Protocol):
    """A record of partition 0 seen by a probe (what the decision reads of it)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


def judge(topic: str, ends: Mapping[int, int], head: Iterable[Head]) -> Verdict:
    """Decide whether a state topic may be used, from what a probe saw.

    Args:
        topic: The state topic (for the message).
        ends: Each partition's end offset (high watermark), asked *before* ``head`` was
            read: a writer writes its marker before any event, so an event counted in
            ``ends`` has its marker visible to the later read of ``head``.
        head: The first records of partition 0, in offset order. The marker is the first
            record of a topic evstate created; a second process that found the same
            topic empty at the same moment may write one more a few records later (and
            compaction then keeps only that one), so any marker among them counts.

    Returns:
        :attr:`Verdict.MARKED` or :attr:`Verdict.EMPTY`.

    Raises:
        LayoutError: the topic holds records but no marker (written with the old rule),
            or a marker of another partition rule or a newer layout.
    """
    for record in head:
        if not is_marker(record.key):
            continue
        found = parse_marker(record.value)
        if found == (PARTITIONING, VERSION):
            return Verdict.MARKED
        raise LayoutError(
            f"topic {topic} carries a layout marker this evstate does not know "
            f"({(record.value or b'').decode('utf-8', 'replace')!r}); it was written by "
            "another (newer?) evstate: use that version",
            topic=topic,
            found="unknown",
        )
    if not any(end > 0 for end in ends.values()):
        return Verdict.EMPTY
    raise layout_error(topic)


def layout_error(topic: str) -> LayoutError:
    """The error for a state topic written with the old partition rule."""
    prefix = topic.removesuffix(".state")
    return LayoutError(
        f"topic {topic} was written with the old partition rule (a scope by its full path; "
        "evstate now places a scope by its stage, the first two names of its path), so "
        "events of nested scopes are in other partitions than evstate reads: stop every "
        f"process writing to it, then run `evstate migrate --topic-prefix {prefix}` to "
        "rewrite the topics in place",
        topic=topic,
        found="legacy",
    )


def partition_of_record(key: bytes | None, partition: int, partitions: int) -> int:
    """Where a record found in ``partition`` belongs under the stage rule (for migrating).

    A ``scope:id`` record goes to its scope's stage's partition
    (:func:`evstate.keys.partition_for`); a record whose key is not one (no key, no
    ``:``, not UTF-8: poison, which every reader skips) stays in the partition it was in.
    """
    if key is None:
        return partition
    path, sep, _ = key.partition(b":")
    if not sep or not path:
        return partition
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return partition
    return keys.partition_for(text, partitions)
