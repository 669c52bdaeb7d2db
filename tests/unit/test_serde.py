"""Serde: Alchemy's markers, refusals that name the path, cycles, and whole states."""

from __future__ import annotations

import base64
import binascii
import json
import socket
import threading
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any

import pytest

from evstate import events, secrets
from evstate.errors import InvalidStateError, SecretError, SerdeError, UnserializableError
from evstate.model import ChangeEvent, Scope, State
from evstate.serde import (
    Secret,
    SecretAhead,
    check_tree,
    deserialize,
    deserialize_state,
    loads_state,
    serialize,
    serialize_state,
)
from evstate.view import decode_value, encode_value

SCOPE = Scope("app", "dev", password="pw")


class Color(IntEnum):
    RED = 1


class TestMarkers:
    def test_date(self) -> None:
        when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        tree = serialize(SCOPE, when)
        assert tree == {"@date": "2024-01-02T03:04:05.678Z"}
        assert deserialize(SCOPE, tree) == when.replace(microsecond=678000)

    def test_date_other_zone_becomes_utc(self) -> None:
        when = datetime(2024, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
        assert serialize(SCOPE, when) == {"@date": "2024-01-02T03:00:00.000Z"}

    def test_date_from_alchemy_reads_as_utc(self) -> None:
        value = deserialize(SCOPE, {"@date": "2025-06-30T23:59:59.001Z"})
        assert value == datetime(2025, 6, 30, 23, 59, 59, 1000, tzinfo=UTC)
        assert value.utcoffset() == timedelta(0)

    def test_naive_date_refused(self) -> None:
        with pytest.raises(UnserializableError, match="naive") as info:
            serialize(SCOPE, {"at": datetime(2024, 1, 1)})
        assert info.value.path == "at"

    def test_buffer(self) -> None:
        tree = serialize(SCOPE, {"b": b"\x00\xffhi", "ba": bytearray(b"xy")})
        assert tree == {"b": {"@buffer": "AP9oaQ=="}, "ba": {"@buffer": "eHk="}}
        assert deserialize(SCOPE, tree) == {"b": b"\x00\xffhi", "ba": b"xy"}

    def test_scope(self) -> None:
        tree = serialize(SCOPE, {"Scope": Scope("other")})
        assert tree == {"Scope": {"@scope": None}}
        reader = Scope("reader")
        assert deserialize(reader, tree)["Scope"] is reader

    def test_plain_values_pass_through(self) -> None:
        value = {
            "s": "text ☃",
            "i": 2**70,
            "f": 1.25,
            "t": True,
            "n": None,
            "l": [1, [2, {"x": "y"}]],
            "Symbol(alchemy::id)": "kept",
        }
        tree = serialize(SCOPE, value)
        assert tree == value
        assert json.loads(json.dumps(tree)) == tree
        assert deserialize(SCOPE, tree) == value

    def test_tuple_becomes_list(self) -> None:
        assert serialize(SCOPE, (1, (2, 3))) == [1, [2, 3]]

    def test_subclasses_are_normalised(self) -> None:
        tree = serialize(SCOPE, {"c": Color.RED})
        assert tree == {"c": 1}
        assert type(tree["c"]) is int

    def test_shared_reference_is_not_a_cycle(self) -> None:
        shared = {"x": 1}
        assert serialize(SCOPE, [shared, shared, {"a": shared}]) == [
            {"x": 1},
            {"x": 1},
            {"a": {"x": 1}},
        ]

    def test_round_trip_mixed(self) -> None:
        when = datetime(2020, 2, 29, 12, 0, 0, 123000, tzinfo=UTC)
        value = {"when": when, "raw": b"\x01", "nested": [{"when": when}], "scope": SCOPE}
        back = deserialize(SCOPE, json.loads(json.dumps(serialize(SCOPE, value))))
        assert back == value


class TestSecrets:
    @pytest.mark.parametrize(
        "plaintext", ["", "   ", "ünïcødé ☃ 🔑", "line 1\nline 2\r\n", "p" * 1000]
    )
    def test_string_secret_round_trips(self, plaintext: str) -> None:
        tree = serialize(SCOPE, {"s": Secret(plaintext)})
        assert set(tree["s"]["@secret"]) == {"version", "ciphertext", "iv", "salt", "tag"}
        assert deserialize(SCOPE, json.loads(json.dumps(tree))) == {"s": Secret(plaintext)}

    @pytest.mark.parametrize(
        "value", [{"user": "bob", "n": [1, 2.5, None, True]}, ["a"], 42, 1.5, True, None]
    )
    def test_non_string_secret_is_encrypted_json(self, value: object) -> None:
        tree = serialize(SCOPE, Secret(value))
        assert list(tree["@secret"]) == ["data"]
        assert tree["@secret"]["data"]["version"] == "v1"
        back = deserialize(SCOPE, tree)
        assert isinstance(back, Secret)
        assert back.unencrypted == value

    def test_two_encryptions_of_one_secret_differ(self) -> None:
        one, two = serialize(SCOPE, [Secret("same"), Secret("same")])
        assert one != two

    def test_nested_in_lists_and_dicts(self) -> None:
        value = {"a": [Secret("1"), {"b": Secret("2"), "c": [[Secret({"d": "3"})]]}]}
        assert deserialize(SCOPE, serialize(SCOPE, value)) == value

    def test_plaintext_never_in_the_tree(self) -> None:
        plaintext = "hunter2-plaintext"
        text = json.dumps(serialize(SCOPE, {"x": Secret(plaintext), "y": Secret([plaintext])}))
        assert plaintext not in text

    def test_plaintext_absent_from_encoded_event_bytes(self) -> None:
        plaintext = "plaintext-that-must-not-leak"
        state = make_state(props={"db": {"password": Secret(plaintext)}})
        event = ChangeEvent.new(
            op="SET",
            scope=SCOPE,
            key=state.id,
            state=serialize_state(SCOPE, state),
            version=1,
            actor="test",
        )
        value, headers = events.state_record(event)
        assert value is not None
        assert plaintext.encode() not in value
        assert all(plaintext.encode() not in v for _k, v in headers)

    def test_wrong_password_names_the_path(self) -> None:
        tree = serialize(SCOPE, {"db": {"password": Secret("x")}}, path="props")
        with pytest.raises(SecretError, match=r"props\.db\.password.*wrong password"):
            deserialize(Scope("app", password="wrong"), tree, path="props")

    def test_missing_password_on_read(self) -> None:
        tree = serialize(SCOPE, {"items": [Secret("x")]})
        with pytest.raises(SecretError, match=r"items\[0\].*without a password"):
            deserialize(Scope("app"), tree)

    def test_missing_password_on_write(self) -> None:
        with pytest.raises(SecretError, match=r"props\.db\.password"):
            serialize_state(Scope("app"), make_state(props={"db": {"password": Secret("x")}}))

    def test_no_password_needed_without_secrets(self) -> None:
        tree = serialize(Scope("app"), {"a": 1})
        assert deserialize(Scope("app"), tree) == {"a": 1}

    @pytest.mark.parametrize("bad", [object(), {1, 2}, float("nan"), b"bytes"])
    def test_unserializable_secret_value(self, bad: object) -> None:
        with pytest.raises(UnserializableError, match="no JSON form") as info:
            serialize(SCOPE, {"k": Secret({"v": bad})}, path="props")
        assert info.value.path == "props.k"

    def test_cycle_inside_a_secret(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        with pytest.raises(UnserializableError) as info:
            serialize(SCOPE, {"k": Secret(loop)})
        assert info.value.path == "k"

    @pytest.mark.parametrize(
        "marker",
        [
            {"@secret": None},
            {"@secret": {"version": "v1"}},
            {"@secret": {"data": 5}},
            {"@secret": {"version": "v9", "ciphertext": "", "iv": "", "salt": "", "tag": ""}},
        ],
    )
    def test_malformed_marker_names_the_path(self, marker: dict[str, Any]) -> None:
        with pytest.raises(SerdeError, match=r"props\.x\[0\]"):
            deserialize(SCOPE, {"x": [marker]}, path="props")

    def test_data_that_is_not_json(self) -> None:
        from evstate import secrets

        tree = {"@secret": {"data": secrets.encrypt("{not json", "pw")}}
        with pytest.raises(SerdeError, match="not JSON"):
            deserialize(SCOPE, tree)

    def test_repr_never_shows_the_value(self) -> None:
        secret = Secret("hunter2")
        for shown in (repr(secret), str(secret), f"{secret}", repr({"s": secret}), repr([secret])):
            assert "hunter2" not in shown
        state = make_state(props={"p": secret})
        assert "hunter2" not in repr(state)
        assert secret.unencrypted == "hunter2"

    def test_equality_and_hash(self) -> None:
        assert Secret("a") == Secret("a")
        assert Secret("a") != Secret("b")
        assert Secret("a") != "a"
        with pytest.raises(TypeError):
            hash(Secret("a"))

    def test_secrets_in_a_whole_state(self) -> None:
        state = make_state(
            props={"db": {"password": Secret("pw1")}}, output={"token": Secret({"t": 1})}
        )
        back = deserialize_state(SCOPE, json.loads(json.dumps(serialize_state(SCOPE, state))))
        assert back.props == {"db": {"password": Secret("pw1")}}
        assert back.output is not None
        assert back.output["token"] == Secret({"t": 1})


class TestRefusals:
    @pytest.mark.parametrize(
        "bad",
        [
            {1, 2},
            frozenset(),
            object(),
            threading.Lock(),
            float("nan"),
            float("inf"),
            -float("inf"),
            complex(1, 2),
        ],
    )
    def test_refused_values_name_the_path(self, bad: object) -> None:
        with pytest.raises(UnserializableError) as info:
            serialize(SCOPE, {"db": {"password": bad}}, path="props")
        assert info.value.path == "props.db.password"
        assert "props.db.password" in str(info.value)

    def test_socket_refused(self) -> None:
        with socket.socket() as sock, pytest.raises(UnserializableError, match="socket"):
            serialize(SCOPE, {"conn": sock})

    def test_list_index_in_path(self) -> None:
        with pytest.raises(UnserializableError) as info:
            serialize(SCOPE, {"items": [1, 2, 3, object()]})
        assert info.value.path == "items[3]"

    def test_odd_key_in_path(self) -> None:
        with pytest.raises(UnserializableError) as info:
            serialize(SCOPE, {"a b": {"c": object()}}, path="props")
        assert info.value.path == "props['a b'].c"

    def test_top_level_path(self) -> None:
        with pytest.raises(UnserializableError, match="top level") as info:
            serialize(SCOPE, object())
        assert info.value.path == ""

    def test_non_str_key(self) -> None:
        with pytest.raises(UnserializableError, match="not a str") as info:
            serialize(SCOPE, {"m": {1: "x"}})
        assert info.value.path == "m"

    def test_reserved_marker_key(self) -> None:
        with pytest.raises(UnserializableError, match="reserved") as info:
            serialize(SCOPE, {"d": {"@date": "not a date"}})
        assert info.value.path == "d['@date']"

    def test_cycle_in_dict(self) -> None:
        loop: dict[str, Any] = {"a": {}}
        loop["a"]["back"] = loop
        with pytest.raises(UnserializableError, match="cycle") as info:
            serialize(SCOPE, loop, path="props")
        assert info.value.path == "props.a.back"

    def test_cycle_in_list(self) -> None:
        loop: list[Any] = [1]
        loop.append(loop)
        with pytest.raises(UnserializableError, match="cycle") as info:
            serialize(SCOPE, {"items": loop})
        assert info.value.path == "items[1]"

    def test_very_deep_nesting_is_an_error_not_recursion(self) -> None:
        deep: list[Any] = []
        cursor = deep
        for _ in range(5000):
            cursor.append([])
            cursor = cursor[0]
        with pytest.raises(UnserializableError, match="deeper"):
            serialize(SCOPE, deep)
        with pytest.raises(SerdeError, match="deeper"):
            deserialize(SCOPE, deep)

    def test_unserializable_is_type_error(self) -> None:
        with pytest.raises(TypeError):
            serialize(SCOPE, object())


class TestMalformedMarkers:
    @pytest.mark.parametrize(
        "tree",
        [
            {"@date": 5},
            {"@date": "yesterday"},
            {"@date": None},
            {"@buffer": "***"},
            {"@buffer": 12},
        ],
    )
    def test_malformed_marker_names_path(self, tree: dict[str, Any]) -> None:
        with pytest.raises(SerdeError, match=r"props\.x\[0\]"):
            deserialize(SCOPE, {"x": [tree]}, path="props")

    def test_non_json_value_refused(self) -> None:
        with pytest.raises(SerdeError, match="set at a"):
            deserialize(SCOPE, {"a": {1}})


def make_state(**changes: Any) -> State:
    values: dict[str, Any] = {
        "status": "updated",
        "kind": "test::Db",
        "id": "db/1",
        "fqn": "app/dev/db/1",
        "seq": 2,
        "data": {"created": datetime(2024, 3, 1, tzinfo=UTC)},
        "props": {"key": b"\x01\x02", "tags": ("a", "b")},
        "old_props": {"key": b"\x00"},
        "output": {"url": "postgres://x", "Scope": SCOPE},
    }
    values.update(changes)
    return State(**values)


class TestState:
    def test_serialize_state(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        assert tree == {
            "status": "updated",
            "kind": "test::Db",
            "id": "db/1",
            "fqn": "app/dev/db/1",
            "seq": 2,
            "data": {"created": {"@date": "2024-03-01T00:00:00.000Z"}},
            "props": {"key": {"@buffer": "AQI="}, "tags": ["a", "b"]},
            "oldProps": {"key": {"@buffer": "AA=="}},
            "output": {"url": "postgres://x", "Scope": {"@scope": None}},
        }
        json.dumps(tree)

    def test_round_trip_sets_scope_in_output(self) -> None:
        reader = Scope("app", "dev", password="other")
        tree = json.loads(json.dumps(serialize_state(SCOPE, make_state())))
        state = deserialize_state(reader, tree)
        assert state.output is not None
        assert state.output["Scope"] is reader
        assert state.output["url"] == "postgres://x"
        assert state.props == {"key": b"\x01\x02", "tags": ["a", "b"]}
        assert state.old_props == {"key": b"\x00"}
        assert state.data == {"created": datetime(2024, 3, 1, tzinfo=UTC)}

    def test_output_scope_added_even_if_absent(self) -> None:
        tree = serialize_state(SCOPE, make_state(output={"n": 1}))
        state = deserialize_state(SCOPE, tree)
        assert state.output == {"n": 1, "Scope": SCOPE}

    def test_none_fields_stay_none(self) -> None:
        tree = serialize_state(SCOPE, make_state(props=None, old_props=None, output=None))
        assert "oldProps" not in tree
        state = deserialize_state(SCOPE, tree)
        assert (state.props, state.old_props, state.output) == (None, None, None)

    def test_serialize_state_path_starts_at_field(self) -> None:
        with pytest.raises(UnserializableError) as info:
            serialize_state(SCOPE, make_state(props={"db": {"password": object()}}))
        assert info.value.path == "props.db.password"

    def test_serialize_state_validates(self) -> None:
        with pytest.raises(InvalidStateError, match="status"):
            serialize_state(SCOPE, make_state(status="bogus"))

    def test_deserialize_state_refuses_marker_as_field(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["data"] = {"@date": "2024-01-01T00:00:00.000Z"}
        with pytest.raises(InvalidStateError, match="'data'"):
            deserialize_state(SCOPE, tree)

    def test_deserialize_state_missing_field(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        del tree["kind"]
        with pytest.raises(InvalidStateError, match="kind"):
            deserialize_state(SCOPE, tree)

    def test_deserialize_state_malformed_marker(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["props"]["key"] = {"@buffer": 3}
        with pytest.raises(SerdeError, match=r"props\.key"):
            deserialize_state(SCOPE, tree)

    def test_state_object_itself_not_mutated(self) -> None:
        state = make_state()
        serialize_state(SCOPE, state)
        assert state.props == {"key": b"\x01\x02", "tags": ("a", "b")}


class TestCheckTree:
    """check_tree: what deserialize_state would refuse for the tree's own sake, no password."""

    def _tree(self, **props: Any) -> dict[str, Any]:
        return {
            "status": "created",
            "kind": "k",
            "id": "a",
            "fqn": "x/a",
            "seq": 1,
            "data": {},
            "props": props,
        }

    @pytest.mark.parametrize(
        ("props", "says"),
        [
            ({"at": {"@date": "garbage"}}, r"@date marker at props\.at"),
            ({"b": {"@buffer": "not base64!"}}, r"@buffer marker at props\.b"),
            ({"s": {"@secret": {"version": "v1"}}}, r"@secret marker at props\.s"),
            ({"s": {"@secret": {"data": 3}}}, r"@secret marker at props\.s"),
            ({"@date": "2024-01-01T00:00:00.000Z"}, "'props' is a serde marker"),
            ({"s": "lone \ud800"}, "lone surrogate"),
            ({"deep": json.loads("[" * 300 + "]" * 300)}, "nested deeper"),
        ],
    )
    def test_refuses(self, props: dict[str, Any], says: str) -> None:
        with pytest.raises(SerdeError, match=says):
            check_tree(self._tree(**props))

    def test_a_string_secret_is_the_legacy_format(self) -> None:
        with pytest.raises(SecretError, match="legacy"):
            check_tree(self._tree(s={"@secret": "str"}))

    def test_what_serialize_writes_passes_without_a_password(self) -> None:
        scope = Scope("app", password="pw")
        value = {
            "at": datetime(2024, 1, 2, tzinfo=UTC),
            "b": b"\x00",
            "s": Secret("x"),
            "o": Secret({"n": 1}),
            "me": scope,
        }
        check_tree(self._tree(**serialize(scope, value)))


class TestLoadsState:
    """``loads_state`` is ``deserialize_state(scope, json.loads(text))`` in one pass."""

    def test_same_state_as_two_steps(self) -> None:
        reader = Scope("app", "dev", password="pw")
        text = json.dumps(serialize_state(SCOPE, make_state(props={"p": Secret("s")})))
        state = loads_state(reader, text)
        assert state == deserialize_state(reader, json.loads(text))
        assert state.output is not None
        assert state.output["Scope"] is reader
        assert state.props == {"p": Secret("s")}

    def test_plain_text_without_markers(self) -> None:
        tree = serialize_state(SCOPE, make_state(data={}, props=None, old_props=None, output={}))
        state = loads_state(SCOPE, json.dumps(tree))
        assert (state.data, state.props, state.output) == ({}, None, {"Scope": SCOPE})

    def test_malformed_marker_names_the_path(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["props"]["key"] = {"@buffer": 3}
        with pytest.raises(SerdeError, match=r"props\.key"):
            loads_state(SCOPE, json.dumps(tree))

    def test_wrong_password_names_the_path(self) -> None:
        text = json.dumps(serialize_state(SCOPE, make_state(output={"t": [Secret("x")]})))
        with pytest.raises(SecretError, match=r"output\.t\[0\].*wrong password"):
            loads_state(Scope("app", password="wrong"), text)

    def test_marker_as_a_field_is_refused(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["data"] = {"@date": "2024-01-01T00:00:00.000Z"}
        with pytest.raises(InvalidStateError, match="'data'"):
            loads_state(SCOPE, json.dumps(tree))

    def test_marker_key_beside_the_fields_is_ignored(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["@scope"] = None  # an unknown top-level field, as deserialize_state ignores it
        assert loads_state(SCOPE, json.dumps(tree)) == deserialize_state(SCOPE, tree)

    def test_too_deep_is_an_error(self) -> None:
        deep: list[Any] = []
        cursor = deep
        for _ in range(300):
            cursor.append([])
            cursor = cursor[0]
        cursor.append({"@date": "2024-01-01T00:00:00.000Z"})
        tree = serialize_state(SCOPE, make_state())
        tree["props"] = {"deep": deep}
        with pytest.raises(SerdeError, match="deeper"):
            loads_state(SCOPE, json.dumps(tree))

    def test_too_deep_without_markers_is_an_error_too(self) -> None:
        tree = serialize_state(SCOPE, make_state())
        tree["data"] = _nested(300)
        text = json.dumps(tree)
        for read in (
            lambda: loads_state(SCOPE, text),
            lambda: deserialize_state(SCOPE, json.loads(text)),
        ):
            with pytest.raises(SerdeError, match="deeper than 200"):
                read()

    @pytest.mark.parametrize("marker", [False, True])
    def test_the_view_sends_a_deep_text_to_the_walk(self, marker: bool) -> None:
        # The store parses bounded (no bracket count): the view's codec marks the text.
        tree = serialize_state(SCOPE, make_state())
        tree["data"] = {"deep": _nested(250), "when": {"@date": "2024-01-01T00:00:00.000Z"}}
        if not marker:
            del tree["data"]["when"]
        text = json.dumps(tree)
        stored = decode_value(encode_value(3, text))[1].decode("utf-8")
        assert stored == " " + text
        with pytest.raises(SerdeError, match="deeper than 200"):
            loads_state(SCOPE, stored, bounded=True)

    def test_the_view_keeps_a_shallow_text_as_it_is(self) -> None:
        text = json.dumps(serialize_state(SCOPE, make_state()))
        assert decode_value(encode_value(3, text)) == (3, text.encode())
        assert loads_state(SCOPE, text, bounded=True) == loads_state(SCOPE, text)

    def test_deferring_stops_at_a_secret_without_deriving_a_key(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        text = json.dumps(serialize_state(SCOPE, make_state(props={"p": Secret("s")})))

        def no_scrypt(password: str, salt: bytes) -> None:
            raise AssertionError("a key was derived on the event loop's path")

        monkeypatch.setattr(secrets, "_derive", no_scrypt)
        # Without a password the secret would raise SecretError once reached; deferred,
        # it is not reached, and no key is derived for a scope that has one.
        for reader in (Scope("app", "dev"), Scope("app", "dev", password="pw")):
            with pytest.raises(SecretAhead):
                loads_state(reader, text, defer_secrets=True)

    def test_deferring_a_broken_text_with_a_secret_defers_too(self) -> None:
        # The one pass fails on the date first; the two-step path would decrypt.
        tree = serialize_state(SCOPE, make_state(props={"p": Secret("s")}))
        tree["data"] = {"when": {"@date": "not a date"}}
        with pytest.raises(SecretAhead):
            loads_state(SCOPE, json.dumps(tree), defer_secrets=True)

    def test_deferring_changes_nothing_without_a_secret(self) -> None:
        text = json.dumps(serialize_state(SCOPE, make_state()))
        assert loads_state(SCOPE, text, defer_secrets=True) == loads_state(SCOPE, text)

    def test_not_json(self) -> None:
        with pytest.raises(ValueError, match="Expecting"):
            loads_state(SCOPE, '{"@date": ')


def _nested(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        tree = {"x": tree}
    return tree


class TestDateRange:
    def test_years_before_1000_have_four_digits(self) -> None:
        # As JavaScript's toISOString writes them, and as fromisoformat reads them back.
        when = datetime(999, 12, 31, 23, 59, 59, 1000, tzinfo=UTC)
        tree = serialize(SCOPE, {"at": when})
        assert tree == {"at": {"@date": "0999-12-31T23:59:59.001Z"}}
        assert deserialize(SCOPE, tree) == {"at": when}

    @pytest.mark.parametrize(
        "when",
        [
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
            datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
        ],
    )
    def test_out_of_range_in_utc_names_the_path(self, when: datetime) -> None:
        with pytest.raises(UnserializableError, match="out of range") as info:
            serialize(SCOPE, {"at": [when]}, path="data")
        assert info.value.path == "data.at[0]"


@pytest.mark.parametrize(
    "text", ["", "AQ==", "AQI=", "AQID", "AB=", "A===", "AQ==AQ==", " AQ==", "AQ==\n", "A-_=", "é"]
)
def test_buffer_text_accepted_exactly_as_b64decode_validate(text: str) -> None:
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(SerdeError, match="malformed @buffer"):
            deserialize(SCOPE, {"@buffer": text})
    else:
        assert deserialize(SCOPE, {"@buffer": text}) == expected
        assert serialize(SCOPE, expected) == {"@buffer": base64.b64encode(expected).decode()}


def test_loads_state_sees_an_escaped_marker_key() -> None:
    tree = serialize_state(
        SCOPE, make_state(data={}, props={"when": "x"}, old_props=None, output=None)
    )
    text = json.dumps(tree).replace(
        '"when": "x"', '"when": {"\\u0040date": "2024-01-02T03:04:05.678Z"}'
    )
    assert '"@' not in text
    state = loads_state(SCOPE, text)
    assert state.props == {"when": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)}
    assert state == deserialize_state(SCOPE, json.loads(text))
