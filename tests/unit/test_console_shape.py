"""The console's pure parts: secrets masked, field diffs, deploys, the scope tree (sessions:
``test_console_sessions.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from evstate.model import ChangeEvent
from evstate.serve.ui.shape import (
    MASK,
    FieldChange,
    changes_of,
    deploys,
    field_changes,
    flatten,
    masked,
    nested_scopes,
    resource_row,
    scope_tree,
    show,
    timeline,
    walk_tree,
)

SECRET = {"@secret": {"ciphertext": "Zm9v", "iv": "aXY=", "salt": "c2FsdA=="}}
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def tree(**props: Any) -> dict[str, Any]:
    return {
        "status": "created",
        "kind": "k",
        "id": "x",
        "fqn": "a/b/x",
        "seq": 1,
        "data": {"provider": 1},
        "props": props,
        "output": {"arn": "a"},
    }


def event(
    op: str,
    key: str,
    version: int,
    state: dict[str, Any] | None,
    *,
    minutes: float = 0,
    actor: str = "alice",
    correlation_id: str | None = None,
) -> ChangeEvent:
    return ChangeEvent(
        event_id="e",
        op=op,
        scope=("a", "b"),
        key=key,
        state=state,  # type: ignore[arg-type]
        version=version,
        expected_version=None,
        timestamp=T0 + timedelta(minutes=minutes),
        actor=actor,
        reason=None,
        correlation_id=correlation_id,
    )


def test_secrets_are_masked_wherever_they_are() -> None:
    value = {"a": [SECRET, {"b": SECRET}], "c": "plain"}
    assert masked(value) == {"a": [MASK, {"b": MASK}], "c": "plain"}
    assert "Zm9v" not in show(value)
    assert "@secret" not in show(value)
    assert show(SECRET) == MASK


def test_flatten_keeps_markers_and_empty_objects_whole() -> None:
    flat = flatten(tree(a={"b": 1, "d": {"@date": "2026-01-01T00:00:00Z"}}, e={}, s=SECRET))
    assert flat["props.a.b"] == 1
    assert flat["props.a.d"] == {"@date": "2026-01-01T00:00:00Z"}
    assert flat["props.e"] == {}
    assert flat["props.s"] == SECRET
    assert "data.provider" not in flat  # the provider's data is not diffed


def test_field_changes_show_old_and_new_with_secrets_masked() -> None:
    rotated = {"@secret": {"ciphertext": "YmFy", "iv": "aXY=", "salt": "c2FsdA=="}}
    changes = field_changes(tree(size=1, pw=SECRET, gone=True), tree(size=2, pw=rotated, new="n"))
    assert changes == [
        FieldChange("props.gone", "true", None),
        FieldChange("props.new", None, "n"),
        FieldChange("props.pw", MASK, MASK, secret=True),
        FieldChange("props.size", "1", "2"),
    ]
    assert field_changes(tree(pw=SECRET), tree(pw=SECRET)) == []
    assert [c.path for c in field_changes(None, tree())] == [
        "kind",
        "output.arn",
        "props",  # an empty object is one value
        "status",
    ]


def test_changes_are_added_changed_removed_or_lock_events() -> None:
    events = [
        event("SET", "x", 1, tree(v=1)),
        event("LOCK", "", 0, {"scope": "a/b"}),
        event("SET", "x", 2, tree(v=2)),
        event("DELETE", "x", 3, None),
        event("SET", "x", 4, tree(v=4)),
    ]
    kinds = [(c.kind, [f.path for f in c.fields]) for c in changes_of(events)]
    assert kinds == [
        ("added", ["kind", "output.arn", "props.v", "status"]),
        ("lock", []),
        ("changed", ["props.v"]),
        ("removed", ["kind", "output.arn", "props.v", "status"]),
        ("added", ["kind", "output.arn", "props.v", "status"]),
    ]


def test_deploys_group_by_correlation_id_else_by_actor_and_gap() -> None:
    events = [
        event("SET", "a", 1, tree(), correlation_id="d1"),
        event("SET", "b", 1, tree(), correlation_id="d1", actor="bob"),
        event("SET", "a", 2, tree(v=2), minutes=1),
        event("SET", "b", 2, tree(v=2), minutes=3),
        event("SET", "a", 3, tree(v=3), minutes=9),  # a gap: a new deploy
        event("DELETE", "b", 3, None, minutes=9.5, actor="bob"),  # another actor
    ]
    groups = deploys(changes_of(events))
    assert [(g.correlation_id, g.actor, len(g.changes)) for g in groups] == [
        ("d1", "alice", 2),
        (None, "alice", 2),
        (None, "alice", 1),
        (None, "bob", 1),
    ]
    assert groups[0].actors == ["alice", "bob"]
    assert (groups[0].count("added"), groups[1].count("changed")) == (2, 2)
    assert groups[3].count("removed") == 1


def test_the_scope_tree_has_every_parent() -> None:
    roots = scope_tree(["app/prod", "app/prod/db", "other/dev/x"])
    assert [(n.path, n.depth, n.has_states) for n in walk_tree(roots)] == [
        ("app", 0, False),
        ("app/prod", 1, True),
        ("app/prod/db", 2, True),
        ("other", 0, False),
        ("other/dev", 1, False),
        ("other/dev/x", 2, True),
    ]
    assert nested_scopes("app", ["app/prod", "app/prod/db", "app2/x"]) == [
        "app/prod",
        "app/prod/db",
    ]


def test_the_scope_tree_of_a_reader_names_unreadable_parents_only_as_the_way_down() -> None:
    paths = ["app", "app/dev", "app/dev/db", "app/prod", "app/prod/db", "other/x"]
    roots = scope_tree(paths, lambda p: p == "app/dev" or p.startswith("app/dev/"))
    assert [(n.path, n.has_states, n.readable) for n in walk_tree(roots)] == [
        ("app", False, False),  # holds states, but not this reader's: only a path
        ("app/dev", True, True),
        ("app/dev/db", True, True),
    ]
    assert scope_tree(paths, lambda p: False) == []
    assert nested_scopes("app", paths, lambda p: not p.startswith("app/prod")) == [
        "app/dev",
        "app/dev/db",
    ]


def test_a_timeline_page_is_diffed_against_the_versions_before() -> None:
    events = [
        event("SET", "x", 1, tree(v=1)),
        event("SET", "x", 2, tree(v=2)),
        event("DELETE", "x", 3, None),
        event("SET", "x", 4, tree(v=4)),
    ]
    page = timeline(events, 0, 4)
    assert [(c.event.version, c.kind) for c in page] == [
        (4, "added"),
        (3, "removed"),
        (2, "changed"),
        (1, "added"),
    ]
    assert page == list(reversed(list(changes_of(events))))
    assert [c.event.version for c in timeline(events, 1, 3)] == [3, 2]


def test_an_alchemy_v2_record_shows_its_type_and_hides_its_sealed_secret() -> None:
    sealed = {"__redacted__": {"__evstate_sealed__": {"alg": "A256GCM", "ct": "Y2lwaGVy"}}}
    before = {"status": "creating", "resourceType": "Alchemy.Random", "fqn": "Secret"}
    after = {**before, "status": "created", "attr": {"text": sealed}}
    row = resource_row("Secret", after, 2, None)
    assert (row.kind, row.status) == ("Alchemy.Random", "created")
    changes = {c.path: c for c in field_changes(before, after)}
    assert changes["status"].new == "created"
    assert changes["attr.text"].new == MASK
    assert changes["attr.text"].secret
    assert "Y2lwaGVy" not in show(after)
