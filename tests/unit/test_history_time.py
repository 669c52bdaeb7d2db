"""Which events a time bound keeps: the header's time, or the decoded event's (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from evstate import Scope, events
from evstate.history import happened_after
from evstate.kafka.consume import Record
from evstate.model import ChangeEvent

WHEN = datetime(2026, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)
STATE = {
    "status": "created",
    "kind": "x",
    "id": "k",
    "fqn": "app/dev/k",
    "seq": 0,
    "data": {},
    "props": {},
    "output": {},
}


def _record(at: datetime, *, with_time_header: bool) -> Record:
    event = ChangeEvent.new(
        op="SET", scope=Scope("app", "dev"), key="k", state=STATE, version=1, actor="t"
    )
    value, headers = events.encode(dataclasses.replace(event, timestamp=at))
    if not with_time_header:  # as records written before the header existed
        headers = [h for h in headers if h[0] != events.TIME_HEADER]
    return Record(0, 7, b"app/dev:k", value, headers, timestamp_ms=0)


@pytest.mark.parametrize("with_time_header", [True, False])
@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (timedelta(seconds=-3), False),
        (timedelta(milliseconds=-1), False),
        (timedelta(0), False),
        (timedelta(milliseconds=1), True),
        (timedelta(seconds=3), True),
    ],
)
def test_an_event_is_after_a_bound_by_its_own_time_with_or_without_the_header(
    offset: timedelta, expected: bool, with_time_header: bool
) -> None:
    at = WHEN + offset  # event times have ms precision; WHEN is on a whole ms here
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)
    record = _record(at, with_time_header=with_time_header)
    assert happened_after(record, WHEN) is expected
    assert (at > WHEN) is expected


def test_a_bound_inside_a_millisecond_compares_as_the_decoded_event_does() -> None:
    # An event at 12:00:00.500 against a bound at 12:00:00.500400: not after it.
    event_at = WHEN
    bound = WHEN + timedelta(microseconds=400)
    for with_header in (True, False):
        assert happened_after(_record(event_at, with_time_header=with_header), bound) is False
    bound = WHEN - timedelta(microseconds=400)
    for with_header in (True, False):
        assert happened_after(_record(event_at, with_time_header=with_header), bound) is True


def test_with_the_header_the_event_is_not_decoded() -> None:
    # The header alone decides: a value that is not Avro at all is never read.
    record = _record(WHEN, with_time_header=True)
    unreadable = dataclasses.replace(record, value=b"not avro")
    assert happened_after(unreadable, WHEN - timedelta(seconds=1)) is True
    assert happened_after(unreadable, WHEN) is False
