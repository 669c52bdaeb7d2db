"""The Avro codec for :class:`~evstate.model.ChangeEvent`; the only module importing fastavro.

An event is written as schemaless binary Avro with the current schema, and the writer
schema's 8-byte CRC-64-AVRO (Rabin) fingerprint travels in the ``evstate.schema`` record
header (little-endian, as Avro's single-object encoding writes it). A reader looks the
fingerprint up among every ``change_event.*.avsc`` it knows and resolves the writer schema
to its current one, so events written by older versions stay readable.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from evstate.errors import MalformedEventError, SerdeError, UnserializableError, ValidationError
from evstate.model import ChangeEvent, Position

__all__ = [
    "CURRENT_FINGERPRINT",
    "DELETE_HEADER",
    "IDEMPOTENCY_HEADER",
    "SCHEMA_HEADER",
    "TIME_HEADER",
    "EventSummary",
    "decode",
    "encode",
    "header_time_ms",
    "register_writer_schema",
    "schema_fingerprint",
    "stamped_after",
    "state_record",
    "summarize",
]

SCHEMA_HEADER = "evstate.schema"

_SCHEMA_FILE = re.compile(r"change_event\.v(\d+)\.avsc")
# The reader-only fallback symbol; see the op field's doc in the schema.
_UNKNOWN_OP = "UNKNOWN"


def _schemas_dir() -> Path:
    here = Path(__file__).resolve().parent
    # A wheel ships schemas/ as evstate/schemas; a source tree keeps it beside evstate/.
    for candidate in (here / "schemas", here.parent / "schemas"):
        if any(candidate.glob("change_event.*.avsc")):
            return candidate
    raise SerdeError(f"no change_event.*.avsc found next to {here}; reinstall evstate")


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """Return the 8-byte CRC-64-AVRO fingerprint of a schema's parsing canonical form.

    Args:
        schema: An Avro schema, parsed by fastavro or as loaded from JSON.

    Returns:
        The fingerprint bytes, little-endian.

    Raises:
        SerdeError: ``schema`` is not a valid Avro schema.
    """
    try:
        parsed = fastavro.parse_schema(schema)
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SerdeError(f"invalid Avro schema: {exc}") from exc
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


# fingerprint → parsed writer schema. Loaded once at import; tests add older schemas.
_writer_schemas: dict[bytes, dict[str, Any]] = {}


def register_writer_schema(schema: dict[str, Any]) -> bytes:
    """Make events written with ``schema`` decodable, and return its fingerprint.

    Used at import for every shipped schema, and by tests to check that events written
    with an older or different schema still decode with the current one.

    Args:
        schema: An Avro record schema for change events.

    Returns:
        The schema's fingerprint, as it would appear in the ``evstate.schema`` header.

    Raises:
        SerdeError: ``schema`` is not a valid Avro schema.
    """
    fp = schema_fingerprint(schema)
    # A fresh named-types dict per schema: versions share the name evstate.ChangeEvent.
    parsed = cast(dict[str, Any], fastavro.parse_schema(schema, named_schemas={}))
    _writer_schemas.setdefault(fp, parsed)
    return fp


def _load_shipped() -> tuple[bytes, dict[str, Any]]:
    latest: tuple[int, bytes] | None = None
    for path in _schemas_dir().glob("change_event.*.avsc"):
        match = _SCHEMA_FILE.fullmatch(path.name)
        if match is None:
            continue
        fp = register_writer_schema(json.loads(path.read_text(encoding="utf-8")))
        version = int(match.group(1))
        if latest is None or version > latest[0]:
            latest = (version, fp)
    if latest is None:
        raise SerdeError("no change_event.v<N>.avsc schema found; reinstall evstate")
    return latest[1], _writer_schemas[latest[1]]


CURRENT_FINGERPRINT, _CURRENT_SCHEMA = _load_shipped()
_HEADERS: list[tuple[str, bytes]] = [(SCHEMA_HEADER, CURRENT_FINGERPRINT)]

TIME_HEADER = "evstate.time"
"""Header with the event's own timestamp, ms since the epoch as 8 bytes big-endian: a time
bound is checked against it without decoding the event (records written before it
existed have none, and are decoded)."""
_TIME = struct.Struct(">q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)


def stamped_after(headers: Sequence[tuple[str, bytes]] | None, when: datetime) -> bool | None:
    """Whether the event's ``evstate.time`` header is later than ``when``; None without one.

    The header has ms precision; ``when`` may have µs.
    """
    stamped = header_time_ms(headers)
    if stamped is None:
        return None
    return stamped * 1000 > (when - _EPOCH) // _US


def header_time_ms(headers: Sequence[tuple[str, bytes]] | None) -> int | None:
    """The event's timestamp from its ``evstate.time`` header (ms), or None without one."""
    for name, value in headers or ():
        if name == TIME_HEADER and len(value) == _TIME.size:
            return int(_TIME.unpack(value)[0])
    return None


# Compact JSON, as Alchemy writes it. One encoder for every event: json.dumps with options
# builds a new one per call, which costs more than encoding a small state.
_STATE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(event: ChangeEvent) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode an event as schemaless binary Avro with the current schema.

    Args:
        event: The event; ``position`` is not encoded.

    Returns:
        ``(value, headers)``, headers being ``[("evstate.schema", fingerprint)]``.

    Raises:
        UnserializableError: ``event.state`` is not a JSON-safe tree.
        SerdeError: A field does not fit the schema (e.g. wrong type).
    """
    state_text: str | None = None
    if event.state is not None:
        try:
            state_text = _STATE_JSON.encode(event.state)
        except (TypeError, ValueError, RecursionError) as exc:
            raise UnserializableError(
                f"event state for key {event.key!r} is not a JSON tree: {exc}", path="state"
            ) from exc
    record = {
        "event_id": event.event_id,
        "op": event.op,
        "scope": list(event.scope),
        "key": event.key,
        "state": state_text,
        "version": event.version,
        "expected_version": event.expected_version,
        "timestamp": event.timestamp,
        "actor": event.actor,
        "reason": event.reason,
        "correlation_id": event.correlation_id,
        "lock_token": event.lock_token,
        "idempotency_key": event.idempotency_key,
        "on_behalf_of": event.on_behalf_of,
    }
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, _CURRENT_SCHEMA, record)
    except Exception as exc:  # fastavro's errors for a bad datum are not one type
        raise SerdeError(f"event for key {event.key!r} does not fit the schema: {exc}") from exc
    return out.getvalue(), [*_HEADERS, (TIME_HEADER, _TIME.pack(_ms_since_epoch(event)))]


def _ms_since_epoch(event: ChangeEvent) -> int:
    # The Avro field is timestamp-millis: the header holds the same number.
    return (event.timestamp - _EPOCH) // _MS


def _where(position: Position | None) -> str:
    return f" at {position}" if position is not None else ""


def _fingerprint(headers: Sequence[tuple[str, bytes]] | None, position: Position | None) -> bytes:
    found: bytes | None = None
    for name, value in headers or ():
        if name == SCHEMA_HEADER:
            found = value
    if found is None:
        raise MalformedEventError(
            f"event{_where(position)} has no {SCHEMA_HEADER!r} header; not written by evstate?"
        )
    return bytes(found)


def _read_record(
    value: bytes, headers: Sequence[tuple[str, bytes]] | None, position: Position | None
) -> dict[str, Any]:
    """The Avro record of an event, resolved to the current schema (no JSON parsing)."""
    fp = _fingerprint(headers, position)
    writer = _writer_schemas.get(fp)
    if writer is None:
        raise MalformedEventError(
            f"event{_where(position)} was written with unknown schema {fp.hex()}; "
            "upgrade evstate to read it"
        )
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedEventError(f"event{_where(position)} has no value bytes")
    data = io.BytesIO(value)
    try:
        # Same schema: skip resolution, the fast path every current event takes.
        reader = None if writer is _CURRENT_SCHEMA else _CURRENT_SCHEMA
        record = fastavro.schemaless_reader(data, writer, reader)
    except Exception as exc:  # truncated/garbage bytes surface as many fastavro types
        raise MalformedEventError(
            f"event{_where(position)} is not a readable Avro event: {exc!r}"
        ) from exc
    if data.tell() != len(value):
        raise MalformedEventError(
            f"event{_where(position)} has {len(value) - data.tell()} trailing bytes"
        )
    if not isinstance(record, dict):  # the record schema guarantees a dict; keeps mypy honest
        raise MalformedEventError(f"event{_where(position)} did not decode to a record")
    return record


def decode(
    value: bytes,
    headers: Sequence[tuple[str, bytes]] | None,
    position: Position | None = None,
) -> ChangeEvent:
    """Decode an event read from Kafka.

    Args:
        value: The record value.
        headers: The record headers; must hold ``evstate.schema``.
        position: Where the record was read; set on the event and named in errors.

    Returns:
        The event, with ``position`` set.

    Raises:
        MalformedEventError: The schema header is missing or unknown, the bytes are not
            (exactly) one Avro event, the op is unknown to this version, or the state is
            not a JSON object. The message names the position when given.
    """
    return _to_event(_read_record(value, headers, position), position)


def _to_event(record: dict[str, Any], position: Position | None) -> ChangeEvent:
    if record["op"] == _UNKNOWN_OP:
        raise MalformedEventError(
            f"event{_where(position)} has an op this evstate does not know; upgrade evstate"
        )
    state_text = record["state"]
    state: dict[str, Any] | None = None
    if state_text is not None:
        try:
            state = json.loads(state_text)
        except ValueError as exc:
            raise MalformedEventError(
                f"event{_where(position)} has a state that is not JSON: {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise MalformedEventError(
                f"event{_where(position)} has a state that is not a JSON object"
            )
    timestamp: datetime = record["timestamp"]
    try:
        return ChangeEvent(
            event_id=record["event_id"],
            op=record["op"],
            scope=tuple(record["scope"]),
            key=record["key"],
            state=state,
            version=record["version"],
            expected_version=record["expected_version"],
            timestamp=timestamp,
            actor=record["actor"],
            reason=record["reason"],
            correlation_id=record["correlation_id"],
            position=position,
            lock_token=record["lock_token"],
            idempotency_key=record["idempotency_key"],
            on_behalf_of=record["on_behalf_of"],
        )
    except ValidationError as exc:
        raise MalformedEventError(f"event{_where(position)} is invalid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class EventSummary:
    """What the view needs of an event: no JSON parsing, no :class:`ChangeEvent`."""

    op: str
    key: str
    version: int
    state_text: str | None
    timestamp: datetime
    actor: str = ""
    lock_token: int | None = None


def summarize(
    value: bytes,
    headers: Sequence[tuple[str, bytes]] | None,
    position: Position | None = None,
) -> EventSummary:
    """Decode just enough of an event to apply it to the view (the rebuild hot path).

    Raises:
        MalformedEventError: as :func:`decode`, except that the state's JSON is not checked.
    """
    record = _read_record(value, headers, position)
    if record["op"] == _UNKNOWN_OP:
        raise MalformedEventError(
            f"event{_where(position)} has an op this evstate does not know; upgrade evstate"
        )
    return EventSummary(
        record["op"],
        record["key"],
        record["version"],
        record["state"],
        record["timestamp"],
        record["actor"],
        record["lock_token"],
    )


DELETE_HEADER = "evstate.delete"
"""Header of a state-topic tombstone that carries the DELETE event itself."""
IDEMPOTENCY_HEADER = "evstate.idem"
"""Header with the event's idempotency key (UTF-8), on state-topic records that have one."""


def state_record(
    event: ChangeEvent, encoded: tuple[bytes, list[tuple[str, bytes]]] | None = None
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value and headers of ``event``'s record in the compacted state topic.

    A SET (or LOCK, RENEW) is the encoded event. A DELETE (or UNLOCK, BREAK) is a
    tombstone (null value), so compaction can drop the key for good, with the encoded
    event in the ``evstate.delete`` header, so the record still says who deleted what and
    why until it is compacted away. An event with an idempotency key also carries it in
    the ``evstate.idem`` header, so the view indexes it without decoding a tombstone.

    Args:
        event: the event.
        encoded: ``encode(event)``, when the caller has it already (it is not redone).

    Raises:
        UnserializableError, SerdeError: as :func:`encode`.
    """
    value, headers = encoded if encoded is not None else encode(event)
    if event.idempotency_key is not None:
        headers = [*headers, (IDEMPOTENCY_HEADER, event.idempotency_key.encode("utf-8"))]
    if event.op in _TOMBSTONE_OPS:
        return None, [*headers, (DELETE_HEADER, value)]
    return value, headers


_TOMBSTONE_OPS = frozenset({"DELETE", "UNLOCK", "BREAK"})
