"""Points in a scope's history as the CLI reads them (``--at``, ``--from``, ``--since``...)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evstate.cli.history import parse_point, props_changes
from evstate.errors import ValidationError
from evstate.model import Position

NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)


def point(text: str, partition: int = 3) -> object:
    return parse_point(text, partition=partition, now=NOW)


def test_now_is_the_given_now() -> None:
    assert point("now") == NOW
    assert point(" NOW ") == NOW


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("-30s", timedelta(seconds=30)),
        ("-10m", timedelta(minutes=10)),
        ("-2h", timedelta(hours=2)),
        ("-1d", timedelta(days=1)),
        ("-1w", timedelta(weeks=1)),
        ("-1.5h", timedelta(minutes=90)),
    ],
)
def test_relative_times_count_back_from_now(text: str, delta: timedelta) -> None:
    assert point(text) == NOW - delta


def test_naive_iso_time_means_utc() -> None:
    assert point("2025-01-02T03:04:05.678") == datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert point("2025-01-02") == datetime(2025, 1, 2, tzinfo=UTC)


def test_aware_iso_time_is_converted_to_utc() -> None:
    assert point("2025-01-02T05:00:00+02:00") == datetime(2025, 1, 2, 3, tzinfo=UTC)
    assert point("2025-01-02T03:00:00Z") == datetime(2025, 1, 2, 3, tzinfo=UTC)
    parsed = point("2025-01-02T05:00:00+02:00")
    assert isinstance(parsed, datetime)
    assert parsed.tzinfo is UTC


def test_plain_offset_is_in_the_scope_partition() -> None:
    assert point("42", partition=7) == Position(7, 42)
    assert point("0", partition=0) == Position(0, 0)


def test_partition_offset_is_taken_as_written() -> None:
    assert point("2:17", partition=7) == Position(2, 17)


def test_default_now_is_the_current_time() -> None:
    before = datetime.now(UTC)
    parsed = parse_point("now", partition=0)
    assert isinstance(parsed, datetime)
    assert before <= parsed <= datetime.now(UTC)


@pytest.mark.parametrize(
    "text", ["", "yesterday", "-10", "-10x", "10m", "-5", "1:2:3", "2025-13-01", "p:1", "+1h"]
)
def test_anything_else_is_a_clear_validation_error(text: str) -> None:
    with pytest.raises(ValidationError, match="invalid point") as info:
        point(text)
    assert "ISO-8601" in str(info.value)
    assert "partition:offset" in str(info.value)


def test_props_changes_names_what_differs() -> None:
    before = {"status": "created", "props": {"memory": 256, "old": 1, "same": "x"}}
    after = {"status": "updated", "props": {"memory": 512, "name": "n", "same": "x"}}
    assert props_changes(before, after) == ["memory: 256 → 512", "+name", "-old"]
    assert props_changes(None, after) == ["created"]
    assert props_changes(before, None) == ["deleted"]


def test_props_changes_masks_secrets_and_names_other_fields() -> None:
    marker = {"@secret": {"version": "v1", "ciphertext": "abc", "iv": "i", "salt": "s", "tag": "t"}}
    other = {"@secret": {"version": "v1", "ciphertext": "xyz", "iv": "i", "salt": "s", "tag": "t"}}
    changes = props_changes({"props": {"pw": marker}}, {"props": {"pw": other}})
    assert changes == ["pw: ******** → ********"]
    same = {"props": {"a": 1}, "status": "creating", "output": {}}
    assert props_changes(same, {**same, "status": "created", "output": {"u": 1}}) == [
        "(output, status)"
    ]
    assert props_changes(same, same) == []


@pytest.mark.parametrize(
    "text", ["0001-01-01", "1969-12-31T23:59:59", "9999-12-31T23:59:59", "-99999999999d"]
)
def test_points_outside_kafkas_times_are_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="out of range"):
        point(text)


def test_an_offset_beyond_int64_is_refused() -> None:
    with pytest.raises(ValidationError, match="offset"):
        point(str(2**63))
