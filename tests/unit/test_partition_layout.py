"""The layout marker and the decisions around it (no broker): judging a probe, where a
record goes when migrating, what ``evstate migrate`` does, and readers skipping the
marker. (``test_layout.py`` is about the package's module layout, not this.)"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from evstate import events, keys, layout
from evstate.applier import ApplierStats, to_changes
from evstate.errors import InvalidScopeError, LayoutError, TopicMismatchError
from evstate.kafka import Record
from evstate.model import ChangeEvent, Scope
from evstate.relayout import BACKUP_SUFFIX, Step, backup_name, decide


@dataclass(frozen=True)
class R:
    key: bytes | None
    value: bytes | None


MARKER = R(layout.MARKER_KEY, layout.marker_value())
EVENT = R(b"app/prod/db:k", b"avro bytes")


def test_the_marker_key_is_no_record_key() -> None:
    # Scope names and keys forbid control characters, so no record key starts with NUL.
    assert layout.MARKER_KEY.startswith(b"\x00")
    with pytest.raises(InvalidScopeError):
        keys.record_key(Scope("\x00evstate.layout"), "k")
    assert layout.is_marker(layout.MARKER_KEY)
    assert not layout.is_marker(b"app:k")
    assert not layout.is_marker(None)


def test_marker_value_and_headers() -> None:
    assert json.loads(layout.marker_value()) == {"partitioning": "stage", "version": 2}
    assert layout.parse_marker(layout.marker_value()) == ("stage", 2)
    assert layout.marker_headers() == [(layout.MARKER_HEADER, layout.marker_value())]
    for bad in (
        None,
        b"",
        b"not json",
        b"[1]",
        b'{"partitioning": 1, "version": 2}',
        b'{"partitioning": "stage", "version": true}',
        b'{"partitioning": "stage"}',
    ):
        assert layout.parse_marker(bad) is None


def test_judge_marked_empty_and_legacy() -> None:
    assert layout.judge("p.state", {0: 5, 1: 9}, [MARKER, EVENT]) is layout.Verdict.MARKED
    assert layout.judge("p.state", {0: 0, 1: 0}, []) is layout.Verdict.EMPTY
    assert layout.judge("p.state", {}, []) is layout.Verdict.EMPTY
    with pytest.raises(LayoutError) as raised:
        layout.judge("p.state", {0: 0, 1: 3}, [])
    assert raised.value.found == "legacy"
    assert raised.value.topic == "p.state"
    assert "evstate migrate --topic-prefix p" in str(raised.value)
    assert "old partition rule" in str(raised.value)
    with pytest.raises(LayoutError):  # records in partition 0, none of them a marker
        layout.judge("p.state", {0: 2}, [EVENT, EVENT])


def test_judge_accepts_a_second_marker_after_the_first_was_compacted() -> None:
    # Two processes that found the topic empty at once both wrote a marker; compaction
    # kept the later one, a few records in.
    assert layout.judge("p.state", {0: 9}, [EVENT, EVENT, MARKER]) is layout.Verdict.MARKED


def test_judge_refuses_a_marker_it_does_not_know() -> None:
    newer = R(layout.MARKER_KEY, b'{"partitioning":"stage","version":3}')
    other = R(layout.MARKER_KEY, b'{"partitioning":"scope","version":2}')
    for marker in (newer, other, R(layout.MARKER_KEY, b"garbage")):
        with pytest.raises(LayoutError) as raised:
            layout.judge("p.state", {0: 1}, [marker])
        assert raised.value.found == "unknown"


def test_layout_error_is_a_topic_mismatch_and_not_retriable() -> None:
    error = layout.layout_error("x.y.state")
    assert isinstance(error, TopicMismatchError)
    assert not error.retriable
    assert "--topic-prefix x.y" in str(error)


@pytest.mark.parametrize(
    "path", ["app", "app/prod", "app/prod/db", "app/prod/db/replica", "app/dev/cache", "é/ü/x"]
)
def test_partition_of_record_is_the_stage_rule(path: str) -> None:
    key = f"{path}:k/1".encode()
    for partitions in (1, 3, 12):
        found = layout.partition_of_record(key, 7 % partitions, partitions)
        assert found == keys.partition_for(path, partitions)
        assert found == keys.partition_for(keys.stage_of(path), partitions)


def test_partition_of_record_keeps_poison_where_it_was() -> None:
    for key in (None, b"no-colon", b":k", b"\xff\xfe:k"):
        assert layout.partition_of_record(key, 5, 12) == 5


def test_nested_scopes_move_under_the_new_rule() -> None:
    # The reason for all this: the old rule put nested scopes elsewhere.
    moved = [
        path
        for path in ("app/prod/db", "app/prod/db/replica", "app/prod/net", "app/dev/cache")
        if keys.legacy_partition_for(path, 12) != keys.partition_for(path, 12)
    ]
    assert moved
    for path in ("app", "app/prod", "solo"):
        assert keys.legacy_partition_for(path, 12) == keys.partition_for(path, 12)


def test_to_changes_skips_the_marker_without_calling_it_poison() -> None:
    event = ChangeEvent.new(op="SET", scope=("app",), key="k", state={"a": 1}, version=1, actor="t")
    value, headers = events.state_record(event)
    stats = ApplierStats(topic="t")
    records = [
        Record(0, 0, layout.MARKER_KEY, layout.marker_value(), layout.marker_headers(), 0),
        Record(0, 1, b"app:k", value, headers, 0),
    ]
    changes = to_changes(records, stats, report=False)
    assert [key for key, _ in changes] == [b"app:k"]
    assert stats.poison == []
    assert stats.records_applied == 1
    assert stats.markers == 1


# -- evstate migrate's decisions -------------------------------------------------------


def test_backup_names() -> None:
    assert backup_name("p.state") == "p.state" + BACKUP_SUFFIX == "p.state.pre-stage"
    longest = "x" * 231 + ".history"
    assert backup_name(longest) == longest + BACKUP_SUFFIX
    assert len(backup_name(longest)) == 249
    # Kafka allows prefixes too long for the suffix: shortened, the same way every time.
    for prefix in ("x" * 232, "x" * 241, "y" * 241):
        name = backup_name(prefix + ".history")
        assert len(name) <= 249
        assert name.endswith(BACKUP_SUFFIX)
        assert name == backup_name(prefix + ".history")
    assert backup_name("x" * 241 + ".state") != backup_name("x" * 241 + ".history")


@pytest.mark.parametrize(
    ("found", "backup", "step", "says"),
    [
        ("legacy", None, Step.BACKUP, "old partition rule"),
        ("legacy", "partial", Step.BACKUP, "backing up again"),
        ("legacy", "copied", Step.REWRITE, "rewriting the topics from the backups"),
        ("marked", "copied", Step.REWRITE, "stopped before it finished"),
        ("empty", "copied", Step.REWRITE, "stopped before it finished"),
        ("missing", "copied", Step.REWRITE, "stopped before it finished"),
        ("marked", None, Step.NOTHING, "already uses the stage layout"),
        ("empty", None, Step.NOTHING, "is empty"),
        ("missing", None, Step.NOTHING, "does not exist"),
        ("marked", "done", Step.NOTHING, "migrated already"),
        ("empty", "done", Step.NOTHING, "migrated already"),
        ("legacy", "done", Step.REFUSE, "old layout again"),
        ("marked", "partial", Step.REFUSE, "delete them by hand"),
        ("missing", "partial", Step.REFUSE, "delete them by hand"),
    ],
)
def test_decide(found: str, backup: str | None, step: Step, says: str) -> None:
    got, reason = decide("p.state", found, backup, "p.state.pre-stage and p.history.pre-stage")
    assert got is step
    assert says in reason
