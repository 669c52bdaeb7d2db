"""Access-log records (:mod:`evstate.access`): their JSON form and filters. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from evstate.access import AccessRecord, _matches
from evstate.errors import MalformedEventError

RECORD = AccessRecord(
    time=1_700_000_000_123,
    principal="ci-dev",
    method="set",
    scope="app/dev",
    key="k",
    status=200,
    duration_ms=1.25,
    remote="127.0.0.1",
    on_behalf_of="ålice",
)


def test_round_trip() -> None:
    assert AccessRecord.from_json(RECORD.to_json()) == RECORD
    assert RECORD.when == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


@pytest.mark.parametrize("value", [b"", b"[]", b'{"time": 1}', b"\xff"])
def test_garbage_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedEventError):
        AccessRecord.from_json(value)


def test_filters() -> None:
    assert _matches(RECORD, None, None, None)
    assert _matches(RECORD, None, "ci-dev", "app")
    assert _matches(RECORD, None, None, "app/dev")
    assert not _matches(RECORD, None, None, "app/de")
    assert not _matches(RECORD, None, "reader", None)
    assert not _matches(RECORD, datetime(2024, 1, 1, tzinfo=UTC), None, None)


def test_entries_pack_into_json_lines_under_a_limit() -> None:
    from evstate.access import pack, unpack

    entries = [AccessRecord(**{**_fields(RECORD), "key": f"k{i:03}"}) for i in range(100)]
    one = len(entries[0].to_json()) + 1
    values = pack(entries, limit=one * 30)
    assert [len(unpack(v)) for v in values] == [30, 30, 30, 10]
    assert [e for v in values for e in unpack(v)] == entries
    odd = AccessRecord(**{**_fields(RECORD), "key": "a\nb", "scope": "x\u2028y"})
    (value,) = pack([odd, RECORD])
    assert unpack(value) == [odd, RECORD]


def _fields(record: AccessRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
