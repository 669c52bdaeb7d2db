"""The Avro codec: round trips, the fingerprint header, malformed bytes, old writer schemas."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from evstate import events
from evstate.errors import MalformedEventError, SerdeError, UnserializableError
from evstate.events import (
    CURRENT_FINGERPRINT,
    SCHEMA_HEADER,
    decode,
    encode,
    register_writer_schema,
    schema_fingerprint,
)
from evstate.model import ChangeEvent, Position, Scope

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "change_event.v2.avsc"
V1_PATH = SCHEMA_PATH.with_name("change_event.v1.avsc")
POS = Position(4, 1234)


def current_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def make_event(**changes: Any) -> ChangeEvent:
    values: dict[str, Any] = {
        "op": "SET",
        "scope": Scope("app", "dev"),
        "key": "vpc/1",
        "state": {
            "status": "created",
            "kind": "aws::Vpc",
            "id": "vpc/1",
            "fqn": "app/dev/vpc/1",
            "seq": 1,
            "data": {"when": {"@date": "2024-01-02T03:04:05.678Z"}},
            "props": {"name": "ünïcødé ☃", "n": 1.5, "list": [1, None, True]},
            "output": {"Scope": {"@scope": None}},
        },
        "version": 7,
        "actor": "me@host",
        "reason": "deploy",
        "correlation_id": "run-42",
        "expected_version": 6,
    }
    values.update(changes)
    return ChangeEvent.new(**values)


def with_position(event: ChangeEvent, position: Position | None) -> ChangeEvent:
    fields = {name: getattr(event, name) for name in event.__dataclass_fields__}
    fields["position"] = position
    return ChangeEvent(**fields)


class TestRoundTrip:
    def test_set(self) -> None:
        event = make_event()
        value, headers = encode(event)
        assert decode(value, headers, POS) == with_position(event, POS)

    def test_delete_without_state_and_optionals(self) -> None:
        event = make_event(
            op="DELETE", state=None, reason=None, correlation_id=None, expected_version=None
        )
        value, headers = encode(event)
        decoded = decode(value, headers)
        assert decoded == event
        assert decoded.state is None
        assert decoded.position is None

    @pytest.mark.parametrize("op", ["LOCK", "UNLOCK"])
    def test_lock_ops(self, op: str) -> None:
        event = make_event(op=op, state=None)
        assert decode(*encode(event)).op == op

    def test_timestamp_is_utc_ms(self) -> None:
        event = make_event()
        decoded = decode(*encode(event))
        assert decoded.timestamp == event.timestamp
        assert decoded.timestamp.utcoffset() is not None
        assert decoded.timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]

    def test_state_json_is_compact_and_keeps_unicode(self) -> None:
        value, _ = encode(make_event())
        assert '"name":"ünïcødé ☃"'.encode() in value
        assert b'", "' not in value

    def test_state_key_order_kept(self) -> None:
        state = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
        decoded = decode(*encode(make_event(state=state)))
        assert decoded.state is not None
        assert list(decoded.state) == ["z", "a", "m"]
        assert list(decoded.state["m"]) == ["y", "b"]

    def test_large_version(self) -> None:
        event = make_event(version=2**40, expected_version=2**40 - 1)
        assert decode(*encode(event)).version == 2**40

    def test_encode_is_deterministic(self) -> None:
        event = make_event()
        assert encode(event) == encode(event)


class TestHeader:
    def test_header_carries_fingerprint_and_the_event_time(self) -> None:
        at = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
        event = dataclasses.replace(make_event(), timestamp=at)
        _, headers = encode(event)
        assert headers[0] == (SCHEMA_HEADER, CURRENT_FINGERPRINT)
        assert SCHEMA_HEADER == "evstate.schema"
        assert len(CURRENT_FINGERPRINT) == 8
        assert [name for name, _ in headers] == [SCHEMA_HEADER, events.TIME_HEADER]
        assert events.header_time_ms(headers) == 1704164645678
        assert events.header_time_ms(headers) == int(event.timestamp.timestamp() * 1000)

    def test_records_without_a_time_header_have_no_header_time(self) -> None:
        assert events.header_time_ms([(SCHEMA_HEADER, CURRENT_FINGERPRINT)]) is None
        assert events.header_time_ms(None) is None
        # A header of the wrong size is not trusted either: the event is decoded instead.
        assert events.header_time_ms([(events.TIME_HEADER, b"\x00\x01")]) is None

    def test_fingerprint_is_rabin_of_canonical_form(self) -> None:
        parsed = fastavro.parse_schema(current_schema(), named_schemas={})
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        expected = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
        assert CURRENT_FINGERPRINT.hex() == expected
        assert schema_fingerprint(current_schema()) == CURRENT_FINGERPRINT

    def test_fingerprint_ignores_docs(self) -> None:
        schema = current_schema()
        schema["doc"] = "changed"
        assert schema_fingerprint(schema) == CURRENT_FINGERPRINT

    def test_other_headers_are_ignored(self) -> None:
        event = make_event()
        value, headers = encode(event)
        mixed = [("trace", b"abc"), *headers, ("other", b"")]
        assert decode(value, mixed) == event

    def test_bytearray_fingerprint_header(self) -> None:
        event = make_event()
        value, _ = encode(event)
        headers = [(SCHEMA_HEADER, bytearray(CURRENT_FINGERPRINT))]
        assert decode(value, headers) == event  # type: ignore[arg-type]


class TestMalformed:
    def test_no_headers(self) -> None:
        value, _ = encode(make_event())
        with pytest.raises(MalformedEventError, match="4:1234"):
            decode(value, None, POS)
        with pytest.raises(MalformedEventError, match=SCHEMA_HEADER):
            decode(value, [])

    def test_unknown_fingerprint(self) -> None:
        value, _ = encode(make_event())
        with pytest.raises(MalformedEventError, match="unknown schema 0000000000000000"):
            decode(value, [(SCHEMA_HEADER, bytes(8))], POS)

    def test_not_avro(self) -> None:
        with pytest.raises(MalformedEventError, match="at 4:1234"):
            decode(
                b"this is not avro at all, just text", [(SCHEMA_HEADER, CURRENT_FINGERPRINT)], POS
            )

    def test_empty_bytes(self) -> None:
        with pytest.raises(MalformedEventError):
            decode(b"", [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])

    def test_none_value(self) -> None:
        with pytest.raises(MalformedEventError, match="no value"):
            decode(None, [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])  # type: ignore[arg-type]

    def test_every_truncation(self) -> None:
        value, headers = encode(make_event())
        for cut in range(len(value)):
            with pytest.raises(MalformedEventError):
                decode(value[:cut], headers, POS)

    def test_trailing_garbage(self) -> None:
        value, headers = encode(make_event())
        with pytest.raises(MalformedEventError, match="3 trailing bytes"):
            decode(value + b"xyz", headers, POS)

    def _raw(self, **changes: Any) -> bytes:
        record: dict[str, Any] = {
            "event_id": "e",
            "op": "SET",
            "scope": ["app"],
            "key": "k",
            "state": "{}",
            "version": 1,
            "expected_version": None,
            "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
            "actor": "me",
            "reason": None,
            "correlation_id": None,
        }
        record.update(changes)
        out = io.BytesIO()
        parsed = fastavro.parse_schema(current_schema(), named_schemas={})
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    def test_bad_state_json(self) -> None:
        value = self._raw(state="{not json")
        with pytest.raises(MalformedEventError, match="not JSON"):
            decode(value, [(SCHEMA_HEADER, CURRENT_FINGERPRINT)], POS)

    def test_state_json_not_an_object(self) -> None:
        value = self._raw(state="[1, 2]")
        with pytest.raises(MalformedEventError, match="JSON object"):
            decode(value, [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])

    def test_empty_scope(self) -> None:
        value = self._raw(scope=[])
        with pytest.raises(MalformedEventError, match="scope"):
            decode(value, [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])

    def test_unknown_op_symbol(self) -> None:
        value = self._raw(op="UNKNOWN")
        with pytest.raises(MalformedEventError, match="upgrade"):
            decode(value, [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])

    def test_malformed_is_serde_error(self) -> None:
        with pytest.raises(SerdeError):
            decode(b"\x01", [(SCHEMA_HEADER, CURRENT_FINGERPRINT)])


class TestEncodeErrors:
    def test_state_not_json(self) -> None:
        with pytest.raises(UnserializableError):
            encode(make_event(state={"x": object()}))

    def test_state_nan(self) -> None:
        with pytest.raises(UnserializableError):
            encode(make_event(state={"x": float("nan")}))

    def test_field_of_wrong_type(self) -> None:
        with pytest.raises(SerdeError):
            encode(make_event(version="seven"))


class TestBackwardCompatibility:
    def _older_schema(self) -> dict[str, Any]:
        """A hand-made earlier v0: no correlation_id, no LOCK/UNLOCK ops, no docs."""
        schema = current_schema()
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "correlation_id"]
        for f in schema["fields"]:
            f.pop("doc", None)
            if f["name"] == "op":
                f["type"] = {"type": "enum", "name": "Op", "symbols": ["SET", "DELETE"]}
        return schema

    def _write(self, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
        return out.getvalue()

    def test_old_writer_schema_decodes_with_current_reader(self) -> None:
        old = self._older_schema()
        fp = register_writer_schema(old)
        assert fp != CURRENT_FINGERPRINT
        ts = datetime(2023, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
        value = self._write(
            old,
            {
                "event_id": "abc",
                "op": "DELETE",
                "scope": ["legacy", "app"],
                "key": "k",
                "state": None,
                "version": 3,
                "expected_version": 2,
                "timestamp": ts,
                "actor": "old@host",
                "reason": None,
            },
        )
        event = decode(value, [(SCHEMA_HEADER, fp)], POS)
        assert event == ChangeEvent(
            event_id="abc",
            op="DELETE",
            scope=("legacy", "app"),
            key="k",
            state=None,
            version=3,
            expected_version=2,
            timestamp=ts,
            actor="old@host",
            reason=None,
            correlation_id=None,  # the reader's default for a field the writer lacked
            position=POS,
        )

    def test_future_op_falls_back_to_unknown_and_is_refused(self) -> None:
        newer = current_schema()
        for f in newer["fields"]:
            if f["name"] == "op":
                f["type"]["symbols"] = [*f["type"]["symbols"], "RENAME"]
        fp = register_writer_schema(newer)
        record = {
            "event_id": "abc",
            "op": "RENAME",
            "scope": ["app"],
            "key": "k",
            "state": None,
            "version": 1,
            "expected_version": None,
            "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
            "actor": "new@host",
            "reason": None,
            "correlation_id": None,
        }
        with pytest.raises(MalformedEventError, match="upgrade evstate"):
            decode(self._write(newer, record), [(SCHEMA_HEADER, fp)])

    def test_registering_twice_is_idempotent(self) -> None:
        old = self._older_schema()
        assert register_writer_schema(copy.deepcopy(old)) == register_writer_schema(old)

    def test_bad_schema_refused(self) -> None:
        with pytest.raises(SerdeError):
            register_writer_schema({"type": "record", "name": "x", "fields": [{"name": "a"}]})


class TestShippedSchema:
    def test_every_field_documented(self) -> None:
        schema = current_schema()
        assert schema["name"] == "ChangeEvent"
        assert schema["namespace"] == "evstate"
        for field in schema["fields"]:
            assert field.get("doc"), field["name"]

    def test_optional_fields_default_null(self) -> None:
        fields = {f["name"]: f for f in current_schema()["fields"]}
        for name in ("expected_version", "reason", "correlation_id"):
            assert fields[name]["type"][0] == "null"
            assert fields[name]["default"] is None

    def test_op_enum_has_default(self) -> None:
        fields = {f["name"]: f for f in current_schema()["fields"]}
        op = fields["op"]["type"]
        assert op["name"] == "Op"
        assert op["default"] in op["symbols"]
        assert op["symbols"][:4] == ["SET", "DELETE", "LOCK", "UNLOCK"]

    def test_module_is_the_only_fastavro_importer_of_the_core(self) -> None:
        root = Path(events.__file__).resolve().parent
        for name in ("model.py", "keys.py", "serde.py", "config.py"):
            assert "fastavro" not in (root / name).read_text(encoding="utf-8"), name


def test_events_written_with_v1_still_decode() -> None:
    """An event from before locks (schema v1) decodes, its new fields defaulted."""
    v1 = json.loads(V1_PATH.read_text(encoding="utf-8"))
    fp = register_writer_schema(v1)
    event = make_event()
    out = io.BytesIO()
    record = {
        name: getattr(event, name)
        for name in (
            "event_id",
            "op",
            "key",
            "version",
            "expected_version",
            "timestamp",
            "actor",
            "reason",
            "correlation_id",
        )
    }
    record["scope"] = list(event.scope)
    record["state"] = json.dumps(event.state)
    fastavro.schemaless_writer(out, fastavro.parse_schema(v1, named_schemas={}), record)
    back = decode(out.getvalue(), [(SCHEMA_HEADER, fp)])
    assert back.lock_token is None
    assert back.idempotency_key is None
    assert back.state == event.state
    assert back.version == event.version


def test_lock_fields_round_trip() -> None:
    event = make_event(op="RENEW", key="", state=None, lock_token=42, idempotency_key="k-1")
    back = decode(*encode(event))
    assert (back.op, back.lock_token, back.idempotency_key) == ("RENEW", 42, "k-1")
