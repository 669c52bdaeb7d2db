"""The view's share of each state-topic record (``applier.to_changes``), and poison."""

from __future__ import annotations

import json

from evstate import events, keys
from evstate.applier import ApplierStats, to_changes
from evstate.kafka import Record
from evstate.model import ChangeEvent, Position
from evstate.view import decode_value


def _set_record(offset: int, state: dict[str, object]) -> Record:
    event = ChangeEvent.new(op="SET", scope=("app",), key="k", state=state, version=7, actor="t")
    value, headers = events.state_record(event)
    return Record(2, offset, b"app:k", value, headers, 0)


def test_set_tombstone_and_poison() -> None:
    stats = ApplierStats(topic="t")
    good = _set_record(4, {"a": 1})
    records = [
        good,
        Record(2, 5, b"app:k", b"not avro", good.headers, 0),
        Record(2, 6, b"app:k", None, [], 0),
        Record(2, 7, b"no-colon", good.value, good.headers, 0),
        Record(2, 8, b"app:k", good.value, [], 0),
    ]
    changes = to_changes(records, stats, report=False)
    assert len(changes) == 2
    (key, raw), tombstone = changes
    assert key == b"app:k"
    assert raw is not None
    assert decode_value(raw)[0] == 7
    assert json.loads(decode_value(raw)[1]) == {"a": 1}
    assert tombstone == (b"app:k", None)
    assert [p.position for p in stats.poison] == [Position(2, 5), Position(2, 7), Position(2, 8)]
    # Each reason names the record's position, though it is made only for poison.
    assert "at 2:5" in stats.poison[0].reason
    assert "'scope:id'" in stats.poison[1].reason
    assert "at 2:8" in stats.poison[2].reason
    assert "evstate.schema" in stats.poison[2].reason
    assert stats.records_applied == 2


def test_idempotency_keys_are_indexed_whatever_headers_carry_them() -> None:
    def record(offset: int, op: str, idem: str | None, legacy: bool = False) -> Record:
        state = {"a": 1} if op == "SET" else None
        event = ChangeEvent.new(
            op=op,
            scope=("app",),
            key="k",
            state=state,
            version=1,
            actor="t",
            idempotency_key=idem,
        )
        value, headers = events.state_record(event)
        if legacy:  # written before events carried their time
            headers = [h for h in headers if h[0] != events.TIME_HEADER]
        return Record(2, offset, b"app:k", value, headers, 1000 + offset)

    records = [
        record(1, "SET", None),
        record(2, "SET", "deploy-1"),
        record(3, "DELETE", None),
        record(4, "DELETE", "deploy-2"),
        record(5, "SET", "deploy-3", legacy=True),
        record(6, "SET", None, legacy=True),
    ]
    indexed = {
        key
        for key, _ in to_changes(records, ApplierStats(topic="t"), report=False)
        if key.startswith(keys.IDEMPOTENCY_PREFIX)
    }
    assert indexed == {keys.idempotency_key(2, f"deploy-{n}") for n in (1, 2, 3)}
