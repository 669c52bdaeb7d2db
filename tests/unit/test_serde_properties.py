"""Serde properties over generated trees (Hypothesis).

Every value serde knows round-trips exactly: big and negative integers, finite floats,
unicode text, tz-aware dates (to the millisecond, as Alchemy keeps them), bytes, secrets
and the scope, nested in dicts and lists at any place. Plain trees are their own
serialized form. The fast paths (evstate.serde_fast) agree with the checked walks and the
two-step read on trees made to trip them (lookalike and escaped marker keys, integers
past 64 bits, nested lists, any unicode), and a bad value anywhere is reported at its path.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evstate import serde, serde_fast
from evstate.errors import SerdeError, UnserializableError
from evstate.model import Scope, State
from evstate.serde import (
    MARKERS,
    Secret,
    SecretAhead,
    deserialize,
    deserialize_state,
    loads_state,
    serialize,
    serialize_state,
)
from evstate.view import decode_value, encode_value

# One password for every example: its write key is derived (one scrypt) once, then cached.
SCOPE = Scope("app", "prop", password="property tests")

# Quick enough for every run of the unit suite; deadline off since the first secret of a
# run pays the scrypt.
QUICK = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(max_size=6).filter(lambda key: key not in MARKERS)
integers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.sampled_from([2**63, 2**64, 2**64 + 1, -(2**64) - 1, -(2**63) - 1]),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
plain_leaves = st.one_of(st.none(), st.booleans(), integers, floats, st.text(max_size=12))

# UTC instants to the millisecond, then seen from a zone of whole minutes; the bounds keep
# every instant inside years 1..9999 whatever the zone (years < 1000 included).
utc_dates = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
)
zones = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
dates = st.builds(lambda when, zone: when.astimezone(zone), utc_dates, zones)


def plain_trees(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        plain_leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


secrets_ = st.builds(Secret, st.text(max_size=12) | plain_trees(4))
special = st.one_of(dates, st.binary(max_size=12), st.just(SCOPE), secrets_)
live_leaves = st.one_of(plain_leaves, special)
live_trees = st.recursive(
    live_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
live_dicts = st.dictionaries(keys, live_trees, max_size=4)


def through_json(tree: Any) -> Any:
    return json.loads(json.dumps(tree, ensure_ascii=False, allow_nan=False))


@QUICK
@given(plain_trees())
def test_plain_tree_is_its_own_serialized_form(tree: Any) -> None:
    serialized = serialize(SCOPE, tree)
    assert serialized == tree
    # Same JSON text too, so no type changed on the way (True stays True, 1.0 stays 1.0).
    assert json.dumps(serialized) == json.dumps(tree)
    assert deserialize(SCOPE, serialized) == tree


@QUICK
@given(live_trees)
def test_live_values_round_trip_through_json(value: Any) -> None:
    back = deserialize(SCOPE, through_json(serialize(SCOPE, value)))
    assert back == value


@QUICK
@given(st.text(max_size=30), live_trees)
def test_no_secret_plaintext_in_the_tree(text: str, around: Any) -> None:
    plaintext = "plaintext: " + text
    tree = serialize(SCOPE, [around, Secret(plaintext), Secret({"p": plaintext})])
    assert "plaintext: " not in json.dumps(tree, ensure_ascii=False)


@QUICK
@given(data=live_dicts, props=st.none() | live_dicts, output=st.none() | live_dicts)
def test_states_round_trip(
    data: dict[str, Any], props: dict[str, Any] | None, output: dict[str, Any] | None
) -> None:
    state = State(
        status="created",
        kind="test::Thing",
        id="thing",
        fqn="app/prop/thing",
        seq=1,
        data=data,
        props=props,
        old_props=props,
        output=output,
    )
    text = json.dumps(serialize_state(SCOPE, state), separators=(",", ":"), ensure_ascii=False)
    expected = State(**{**vars(state), "output": None if output is None else {**output}})
    if expected.output is not None:
        expected.output["Scope"] = SCOPE
    assert deserialize_state(SCOPE, json.loads(text)) == expected
    assert loads_state(SCOPE, text) == expected


@QUICK
@given(
    st.one_of(
        plain_trees(),
        st.recursive(
            st.one_of(plain_leaves, dates, st.binary(max_size=12), st.just(SCOPE)),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(keys, children, max_size=4)
                | st.lists(children, max_size=3).map(tuple)
            ),
            max_leaves=12,
        ),
    )
)
def test_fast_path_and_checked_walk_agree(value: Any) -> None:
    # Secrets aside (a fresh IV each time), the two walks give the same tree.
    assert serialize(SCOPE, value) == serde._serialize(SCOPE, value, "", set(), 0)


def _render(steps: list[str | int], start: str) -> str:
    out = start
    for step in steps:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step.isidentifier():
            out += f".{step}" if out else step
        else:
            out += f"[{step!r}]"
    return out


@st.composite
def planted(draw: st.DrawFn, bad: Any) -> tuple[dict[str, Any], list[str | int]]:
    """A tree (a dict) with ``bad`` put at a drawn place, and the steps to that place."""
    tree = draw(st.dictionaries(keys, live_trees, max_size=4))
    steps: list[str | int] = []
    node: Any = tree
    while True:
        if isinstance(node, dict):
            inner = [k for k, v in node.items() if isinstance(v, dict | list)]
            if inner and draw(st.booleans()):
                key = draw(st.sampled_from(inner))
                steps.append(key)
                node = node[key]
                continue
            key = draw(keys)
            node[key] = bad
            steps.append(key)
            return tree, steps
        inner_at = [i for i, v in enumerate(node) if isinstance(v, dict | list)]
        if inner_at and draw(st.booleans()):
            index = draw(st.sampled_from(inner_at))
            steps.append(index)
            node = node[index]
            continue
        index = draw(st.integers(min_value=0, max_value=len(node)))
        node.insert(index, bad)
        # Whatever sat at and after index moved one on; the planted value is at index.
        steps.append(index)
        return tree, steps


@QUICK
@given(planted(object()))
def test_a_bad_value_is_reported_at_its_path(case: tuple[dict[str, Any], list[str | int]]) -> None:
    tree, steps = case
    with pytest.raises(UnserializableError) as info:
        serialize(SCOPE, tree, path="props")
    assert info.value.path == _render(steps, "props")
    assert _render(steps, "props") in str(info.value)


@QUICK
@given(planted({"@date": "not a date"}))
def test_a_malformed_marker_is_reported_at_its_path(
    case: tuple[dict[str, Any], list[str | int]],
) -> None:
    tree, steps = case
    # Everything else is serialized first; the planted marker is put in the tree as is.
    serialized = serialize(SCOPE, _without(tree, steps))
    _put(serialized, steps, {"@date": "not a date"})
    where = _render(steps, "props")
    with pytest.raises(SerdeError, match=f"at {re.escape(where)}"):
        deserialize(SCOPE, serialized, path="props")
    state = {"status": "created", "kind": "k", "id": "i", "fqn": "f", "seq": 1, "data": {}}
    with pytest.raises(SerdeError, match=f"at {re.escape(where)}"):
        loads_state(SCOPE, json.dumps({**state, "props": serialized}))


def _without(tree: dict[str, Any], steps: list[str | int]) -> dict[str, Any]:
    """``tree`` with the planted value (at ``steps``) set to None, so it serializes."""
    _put(tree, steps, None)
    return tree


def _put(tree: Any, steps: list[str | int], value: Any) -> None:
    node = tree
    for step in steps[:-1]:
        node = node[step]
    node[steps[-1]] = value


# Stored trees as they may come from anywhere (set_tree, an Alchemy folder, a bug):
# markers valid or not, in fields, inside other markers' payloads, beside the fields.
_VALID_SECRET = serialize(SCOPE, Secret("s"))
_VALID_DATA_SECRET = serialize(SCOPE, Secret({"n": 1}))
marker_like = st.one_of(
    st.just(_VALID_SECRET),
    st.just(_VALID_DATA_SECRET),
    st.just({"@secret": "legacy"}),
    st.builds(
        lambda d: {"@date": d}, st.sampled_from(["2024-01-02T03:04:05.678Z", "0999-01-01", "x"])
    ),
    st.builds(lambda b: {"@buffer": b}, st.sampled_from(["", "AQI=", "AQ", "*"])),
    st.just({"@scope": None}),
)
stored_trees = st.recursive(
    st.one_of(plain_leaves, marker_like),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from([*MARKERS, "a", "b c"]), children, max_size=3)
    ),
    max_leaves=10,
)


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "ok", read()
    except (SerdeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@QUICK
@given(
    fields=st.dictionaries(
        st.sampled_from(["data", "props", "oldProps", "output", "@date", "@scope", "extra"]),
        stored_trees,
        max_size=4,
    )
)
def test_loads_state_is_json_loads_then_deserialize_state(fields: dict[str, Any]) -> None:
    tree = {"status": "created", "kind": "k", "id": "i", "fqn": "f", "seq": 1, "data": {}}
    text = json.dumps({**tree, **fields})
    one_pass = _outcome(lambda: loads_state(SCOPE, text))
    two_steps = _outcome(lambda: deserialize_state(SCOPE, json.loads(text)))
    assert one_pass == two_steps


# The fast paths (evstate.serde_fast) against the checked walks and the two-step read, on
# trees made to trip them: keys that look like markers without being one, escaped keys,
# integers past 64 bits, deep-ish lists, any unicode (lone surrogates included).
lookalike_keys = st.one_of(
    keys,
    st.sampled_from(["@", "@dat", "@dates", "@Scope", "@types/node", "date", "\\u0040date"]),
    st.text(alphabet=st.characters(codec=None), max_size=4),  # surrogates too
)
wild_leaves = st.one_of(
    plain_leaves,
    st.sampled_from([2**64, -(2**64), 2**200, 10**40 + 1]),
    st.text(alphabet=st.characters(codec=None), max_size=8),
    st.sampled_from(["@date", "@scope", '{"@date":"x"}', "\\", "\u2028", "NaN"]),
)
wild_trees = st.recursive(
    wild_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=2).map(tuple)
        | st.dictionaries(lookalike_keys.filter(lambda k: k not in MARKERS), children, max_size=4)
    ),
    max_leaves=16,
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=4)
        | st.dictionaries(lookalike_keys.filter(lambda k: k not in MARKERS), children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
    )


class _Str(str):
    pass


class _Dict(dict[str, Any]):
    pass


@QUICK
@given(
    st.one_of(wild_trees, st.recursive(st.one_of(wild_leaves, special), _containers, max_leaves=12))
)
def test_serialize_fast_path_agrees_with_the_checked_walk(value: Any) -> None:
    try:
        fast = serde_fast.tree_of(SCOPE, value)
    except serde_fast.Unusual:
        pass  # left to the checked walk, as below
    else:
        checked = serde._serialize(SCOPE, value, "", set(), 0)
        assert _without_secrets(fast) == _without_secrets(checked)
        # The same JSON text too: no type changed on the way (True stays True, 1.0 stays 1.0).
        assert json.dumps(_without_secrets(fast)) == json.dumps(_without_secrets(checked))
    assert _without_secrets(serialize(SCOPE, value)) == _without_secrets(
        serde._serialize(SCOPE, value, "", set(), 0)
    )


@QUICK
@given(
    st.one_of(wild_trees, special),
    st.sampled_from([_Str("s"), _Dict(a=1), (1, [2]), float("nan"), {1: 2}, {"@date": 1}]),
)
def test_the_fast_path_leaves_unusual_values_to_the_checked_walk(around: Any, unusual: Any) -> None:
    value = {"a": [around, {"b": unusual}]}
    one = _outcome(lambda: serialize(SCOPE, value))
    other = _outcome(lambda: serde._serialize(SCOPE, value, "", set(), 0))
    assert _without_secrets(one) == _without_secrets(other)


@QUICK
@given(data=st.dictionaries(lookalike_keys, wild_trees, max_size=4), props=st.none() | live_dicts)
def test_serialize_state_fast_agrees_with_field_by_field(
    data: dict[str, Any], props: dict[str, Any] | None
) -> None:
    state = State(
        status="created",
        kind="k",
        id="i",
        fqn="f",
        seq=2**70,
        data=data,
        props=props,
        old_props=props,
        output={"Scope": SCOPE, "at": datetime(2024, 1, 1, tzinfo=UTC)},
    )
    one = _outcome(lambda: serialize_state(SCOPE, state))
    tree = state.to_json()
    expected = _outcome(
        lambda: {
            **tree,
            **{
                json_name: serde._serialize(SCOPE, tree[json_name], name, set(), 0)
                for json_name, name in serde._JSON_VALUE_FIELDS
                if tree.get(json_name) is not None
            },
        }
    )
    assert _without_secrets(one) == _without_secrets(expected)
    if one[0] == "ok":
        assert list(one[1]) == list(tree)  # the same fields in the same order


@QUICK
@given(
    fields=st.dictionaries(
        st.sampled_from(["data", "props", "oldProps", "output", "@date", "extra"]),
        st.one_of(
            stored_trees,
            st.dictionaries(lookalike_keys, st.one_of(wild_trees, stored_trees), max_size=4),
        ),
        max_size=4,
    ),
    compact=st.booleans(),
    ascii_only=st.booleans(),
    around=st.sampled_from(["", " ", "\n", "\ufeff", " x", "{}"]),
)
def test_loads_state_agrees_with_two_steps_on_any_text(
    fields: dict[str, Any], compact: bool, ascii_only: bool, around: str
) -> None:
    tree = {"status": "created", "kind": "k", "id": "i", "fqn": "f", "seq": 2**65, "data": {}}
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps({**tree, **fields}, separators=separators, ensure_ascii=ascii_only)
    for variant in (text, around + text, text + around):
        one_pass = _outcome(lambda: loads_state(SCOPE, variant))  # noqa: B023
        two_steps = _outcome(lambda: deserialize_state(SCOPE, json.loads(variant)))  # noqa: B023
        assert one_pass == two_steps
        # The store's way: the text as the view holds it, bounded, secrets deferred.
        stored = decode_value(encode_value(1, variant))[1].decode("utf-8")
        try:
            store_read = _outcome(
                lambda: loads_state(SCOPE, stored, bounded=True, defer_secrets=True)  # noqa: B023
            )
        except SecretAhead:  # the store reads it in two steps once the keys are derived
            assert "secret" in variant  # "@secret", or escaped
        else:
            assert store_read == two_steps


@QUICK
@given(wild_trees, st.sampled_from(MARKERS))
def test_an_escaped_marker_key_is_still_a_marker(tree: Any, marker: str) -> None:
    payload = {
        "@secret": "legacy",
        "@date": "2024-01-02T03:04:05.678Z",
        "@scope": None,
        "@buffer": "AQI=",
    }[marker]
    state = {"status": "created", "kind": "k", "id": "i", "fqn": "f", "seq": 1, "data": {}}
    state["props"] = {"t": tree, "m": {marker: payload}}
    text = json.dumps(state, ensure_ascii=False).replace(
        f'"{marker}"', '"\\u0040' + marker[1:] + '"'
    )
    assert _outcome(lambda: loads_state(SCOPE, text)) == _outcome(
        lambda: deserialize_state(SCOPE, json.loads(text))
    )


def _without_secrets(tree: Any) -> Any:
    """``tree`` with each ``@secret`` payload blanked: its IV is fresh on every run."""
    if isinstance(tree, dict):
        if "@secret" in tree:
            return {"@secret": "…"}
        return {key: _without_secrets(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return [_without_secrets(value) for value in tree]
    return tree
