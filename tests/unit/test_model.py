"""Scope, State, Position and ChangeEvent: construction, validation and round trips."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from evstate.errors import InvalidScopeError, InvalidStateError, ValidationError
from evstate.model import OPS, STATUSES, ChangeEvent, Position, Scope, State


def make_state(**changes: Any) -> State:
    values: dict[str, Any] = {
        "status": "created",
        "kind": "test::Thing",
        "id": "thing/1",
        "fqn": "app/dev/thing/1",
        "seq": 3,
        "data": {"a": 1},
        "props": {"name": "x"},
        "output": {"url": "https://x"},
    }
    values.update(changes)
    return State(**values)


class TestScope:
    def test_chain_and_path(self) -> None:
        scope = Scope("app", "dev", "child")
        assert scope.chain == ("app", "dev", "child")
        assert scope.path == "app/dev/child"

    def test_password_not_in_eq_hash_or_repr(self) -> None:
        a = Scope("app", password="s3cret")
        b = Scope("app", password="other")
        assert a == b
        assert hash(a) == hash(b)
        assert "s3cret" not in repr(a)
        assert a.password == "s3cret"

    def test_child_keeps_password(self) -> None:
        child = Scope("app", password="pw").child("dev")
        assert child.chain == ("app", "dev")
        assert child.password == "pw"

    def test_parse(self) -> None:
        scope = Scope.parse("app/stage/child", password="pw")
        assert scope == Scope("app", "stage", "child")
        assert scope.password == "pw"

    def test_names_may_contain_slash(self) -> None:
        scope = Scope("a/b", "c")
        assert scope.chain == ("a/b", "c")
        assert scope.path == "a/b/c"

    def test_frozen(self) -> None:
        scope = Scope("app")
        with pytest.raises(AttributeError):
            scope.chain = ("x",)  # type: ignore[misc]

    @pytest.mark.parametrize("names", [("a:b",), ("app", ""), ("app", 3)])
    def test_bad_name_is_named(self, names: tuple[Any, ...]) -> None:
        with pytest.raises(InvalidScopeError) as info:
            Scope(*names)
        assert repr(names[-1]) in str(info.value)

    def test_needs_a_name(self) -> None:
        with pytest.raises(InvalidScopeError):
            Scope()

    def test_parse_refuses_empty_segment(self) -> None:
        with pytest.raises(InvalidScopeError):
            Scope.parse("app//dev")
        with pytest.raises(InvalidScopeError):
            Scope.parse("")

    def test_child_refuses_colon(self) -> None:
        with pytest.raises(InvalidScopeError, match="x:y"):
            Scope("app").child("x:y")

    def test_scope_error_is_value_error(self) -> None:
        with pytest.raises(ValueError, match="scope"):
            Scope(":")


class TestState:
    def test_statuses(self) -> None:
        assert STATUSES == ("creating", "created", "updating", "updated", "deleting", "deleted")

    def test_to_json_uses_alchemy_names(self) -> None:
        tree = make_state(old_props={"name": "old"}).to_json()
        assert tree == {
            "status": "created",
            "kind": "test::Thing",
            "id": "thing/1",
            "fqn": "app/dev/thing/1",
            "seq": 3,
            "data": {"a": 1},
            "props": {"name": "x"},
            "oldProps": {"name": "old"},
            "output": {"url": "https://x"},
        }

    def test_to_json_omits_old_props_when_none(self) -> None:
        tree = make_state().to_json()
        assert "oldProps" not in tree
        assert "old_props" not in tree

    def test_round_trip(self) -> None:
        state = make_state(old_props={"p": [1, 2]}, props=None, output=None)
        again = State.from_json(copy.deepcopy(state.to_json()))
        assert again == state
        assert again.old_props == {"p": [1, 2]}

    def test_from_json_optional_fields_absent(self) -> None:
        tree = make_state().to_json()
        del tree["props"]
        del tree["output"]
        state = State.from_json(tree)
        assert state.props is None
        assert state.output is None
        assert state.old_props is None

    def test_from_json_ignores_unknown_fields(self) -> None:
        tree = make_state().to_json()
        tree["futureField"] = 1
        assert State.from_json(tree) == make_state()

    @pytest.mark.parametrize("field", ["status", "kind", "id", "fqn", "seq", "data"])
    def test_from_json_missing_field_is_named(self, field: str) -> None:
        tree = make_state().to_json()
        del tree[field]
        with pytest.raises(InvalidStateError, match=repr(field)):
            State.from_json(tree)

    def test_from_json_not_a_dict(self) -> None:
        with pytest.raises(InvalidStateError):
            State.from_json([1, 2])

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("kind", 3),
            ("id", None),
            ("fqn", b"x"),
            ("seq", "1"),
            ("seq", True),
            ("data", None),
            ("data", []),
            ("props", "x"),
            ("old_props", 1),
            ("output", [1]),
        ],
    )
    def test_validate_wrong_type_names_field(self, field: str, value: Any) -> None:
        with pytest.raises(InvalidStateError, match=repr(field)):
            make_state(**{field: value}).validate()

    def test_validate_unknown_status(self) -> None:
        with pytest.raises(InvalidStateError, match="'status'"):
            make_state(status="exploded").validate()

    def test_from_json_bad_type(self) -> None:
        tree = make_state().to_json()
        tree["oldProps"] = "nope"
        with pytest.raises(InvalidStateError, match="old_props"):
            State.from_json(tree)

    def test_valid_state_passes(self) -> None:
        for status in STATUSES:
            make_state(status=status).validate()


class TestPosition:
    def test_token_and_str(self) -> None:
        pos = Position(3, 42)
        assert pos.token == "3:42"
        assert str(pos) == "3:42"

    def test_parse_round_trip(self) -> None:
        assert Position.parse("3:42") == Position(3, 42)
        assert Position.parse(Position(0, 0).token) == Position(0, 0)

    def test_order(self) -> None:
        positions = [Position(1, 5), Position(0, 9), Position(1, 2)]
        assert sorted(positions) == [Position(0, 9), Position(1, 2), Position(1, 5)]
        assert Position(2, 10) > Position(2, 9)

    def test_hashable_frozen(self) -> None:
        assert {Position(1, 2), Position(1, 2)} == {Position(1, 2)}

    @pytest.mark.parametrize(
        "token", ["", "1", "1:", ":1", "a:1", "1:b", "-1:2", "1:-2", "1:2:3", " 1:2", "1_0:2"]
    )
    def test_parse_junk(self, token: str) -> None:
        with pytest.raises(ValidationError, match="position token"):
            Position.parse(token)

    def test_parse_not_a_str(self) -> None:
        with pytest.raises(ValidationError):
            Position.parse(12)  # type: ignore[arg-type]

    def test_negative_refused(self) -> None:
        with pytest.raises(ValidationError, match="offset"):
            Position(0, -2)
        with pytest.raises(ValidationError, match="partition"):
            Position(-1, 0)

    def test_before_first_record(self) -> None:
        assert Position.parse("3:-1") == Position(3, -1)
        assert Position(3, -1) < Position(3, 0)


class TestChangeEvent:
    def test_new_fills_id_and_timestamp(self) -> None:
        before = datetime.now(UTC)
        event = ChangeEvent.new(
            op="SET",
            scope=Scope("app", "dev"),
            key="k",
            state=make_state().to_json(),
            version=1,
            actor="me@host",
        )
        after = datetime.now(UTC)
        assert uuid.UUID(hex=event.event_id).version == 4
        assert len(event.event_id) == 32
        assert event.scope == ("app", "dev")
        assert event.timestamp.tzinfo is not None
        assert event.timestamp.utcoffset() is not None
        assert event.timestamp.microsecond % 1000 == 0
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= event.timestamp
        assert event.timestamp <= after
        assert event.position is None
        assert event.reason is None
        assert event.expected_version is None

    def test_new_ids_differ(self) -> None:
        kwargs: dict[str, Any] = {
            "op": "DELETE",
            "scope": ("a",),
            "key": "k",
            "state": None,
            "version": 2,
            "actor": "me",
        }
        assert ChangeEvent.new(**kwargs).event_id != ChangeEvent.new(**kwargs).event_id

    def test_ops(self) -> None:
        assert OPS == ("SET", "DELETE", "LOCK", "UNLOCK", "RENEW", "BREAK")

    def test_unknown_op_refused(self) -> None:
        with pytest.raises(ValidationError, match="PATCH"):
            ChangeEvent.new(
                op="PATCH",  # type: ignore[arg-type]
                scope=("a",),
                key="k",
                state=None,
                version=1,
                actor="me",
            )

    def test_naive_timestamp_refused(self) -> None:
        with pytest.raises(ValidationError, match="tz-aware"):
            ChangeEvent(
                event_id="x",
                op="SET",
                scope=("a",),
                key="k",
                state=None,
                version=1,
                expected_version=None,
                timestamp=datetime(2024, 1, 1),
                actor="me",
                reason=None,
                correlation_id=None,
            )


class _Tree(dict[str, Any]):
    """A dict subclass: State.from_json takes its checked loop for it."""


class TestStateFastPaths:
    @pytest.mark.parametrize("drop", [(), ("props",), ("oldProps",), ("props", "output")])
    def test_from_json_same_as_the_checked_loop(self, drop: tuple[str, ...]) -> None:
        tree = make_state(old_props={"o": 1}).to_json()
        for name in drop:
            del tree[name]
        assert State.from_json(tree) == State.from_json(_Tree(tree))

    @pytest.mark.parametrize("missing", ["status", "kind", "id", "fqn", "seq", "data"])
    def test_missing_field_named(self, missing: str) -> None:
        tree = make_state().to_json()
        del tree[missing]
        with pytest.raises(InvalidStateError, match=f"'{missing}' is missing"):
            State.from_json(tree)

    def test_subclasses_still_pass_and_bad_types_still_fail(self) -> None:
        class Text(str):
            pass

        make_state(kind=Text("k"), data=_Tree()).validate()
        with pytest.raises(InvalidStateError, match="'seq'"):
            make_state(seq=True).validate()
        with pytest.raises(InvalidStateError, match="'status'"):
            make_state(status="bogus").validate()


@pytest.mark.parametrize("old_props", [None, {"o": 1}])
def test_to_json_has_every_field_in_alchemy_order(old_props: dict[str, Any] | None) -> None:
    order = ["status", "kind", "id", "fqn", "seq", "data", "props", "oldProps", "output"]
    tree = make_state(old_props=old_props).to_json()
    assert list(tree) == [name for name in order if name != "oldProps" or old_props]
    assert State.from_json(tree) == make_state(old_props=old_props)


def test_event_ids_are_random_version_4_uuids() -> None:
    import uuid

    from evstate.model import new_event_id

    ids = [new_event_id() for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(hex=event_id)
        assert parsed.hex == event_id  # 32 lowercase hex digits, as uuid4().hex
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
