"""Alchemy v2's mapping onto scopes and keys, and its secrets sealed at rest: pure code."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evstate import keys
from evstate.errors import (
    ConfigError,
    InvalidRecordError,
    InvalidScopeError,
    SealedSecretError,
)
from evstate.secrets import SecretKeys, new_secret_key
from evstate.serve.stacks import check_exposure, is_loopback
from evstate.stacks import (
    OUTPUT_KEY,
    SEALED,
    check_record,
    fqn_key,
    holds_redacted,
    id_of,
    is_reserved,
    key_fqn,
    kind_of,
    open_record,
    output_record,
    output_value,
    place,
    replaced,
    seal_record,
    stack_of,
    stage_scope,
)

KEYS = SecretKeys.parse(new_secret_key("k1"), "test")
HERE = place("app", "dev", "Secret")


def record(text: str = "s3cr3t ☃", **extra: Any) -> dict[str, Any]:
    return {
        "status": "created",
        "fqn": "Secret",
        "resourceType": "Alchemy.Random",
        "attr": {"text": {"__redacted__": text}},
        "unknownField": [1, {"deep": True}],
        **extra,
    }


# -- scopes and keys -------------------------------------------------------------------


def test_a_stage_is_a_scope_of_its_own_stage_in_the_reserved_namespace() -> None:
    scope = stage_scope("my-app", "dev_sam")
    assert scope.chain == ("~v2.my-app", "dev_sam")
    assert keys.stage_of(scope) == "~v2.my-app/dev_sam"  # its own partition and leases
    assert stack_of(scope.path) == ("my-app", "dev_sam")
    assert is_reserved(scope.chain)
    assert not is_reserved(["my-app", "dev"])
    assert not is_reserved([1, "x"])
    assert stack_of("my-app/dev") is None
    assert stack_of("~v2.my-app/dev/nested") is None


@pytest.mark.parametrize(
    ("stack", "stage"), [("a/b", "dev"), ("app", "a/b"), ("", "dev"), ("app", ".."), ("a:b", "x")]
)
def test_bad_stack_or_stage_names_are_refused(stack: str, stage: str) -> None:
    with pytest.raises(InvalidScopeError):
        stage_scope(stack, stage)


@pytest.mark.parametrize(
    ("fqn", "key"),
    [
        ("Secret", "Secret"),
        ("Group/Nested", "Group/Nested"),
        ("a:b", "a%3Ab"),
        ("100%", "100%25"),
        ("tab\there", "tab%09here"),
        ("/abs", "%2Fabs"),
        ("a//b", "a%2F%2Fb"),
        ("a/../b", "a%2F%2E%2E%2Fb"),
        (".", "%2E"),
        ("%output", "%25output"),
    ],
)
def test_fqn_keys(fqn: str, key: str) -> None:
    assert fqn_key(fqn) == key
    assert key_fqn(key) == fqn


@given(st.text(min_size=1).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_every_fqn_maps_to_a_valid_key_and_back(fqn: str) -> None:
    key = fqn_key(fqn)
    keys.validate_key(key)
    assert key_fqn(key) == fqn
    assert key != OUTPUT_KEY


def test_fqns_that_are_no_text_are_refused() -> None:
    for fqn in ("", "\ud800"):
        with pytest.raises(InvalidRecordError):
            fqn_key(fqn)


# -- records ---------------------------------------------------------------------------


def test_records_are_kept_whole() -> None:
    tree = record()
    assert check_record("Secret", tree) is tree
    assert check_record("Other", {"no": "fqn field"}) == {"no": "fqn field"}


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ([1], "must be a JSON object"),
        ({"fqn": "Other"}, "not the fqn of the URL"),
        ({"fqn": "Secret", "a": [{SEALED: {}}]}, "marker of a sealed secret"),
    ],
)
def test_records_the_protocol_cannot_keep_are_refused(tree: Any, message: str) -> None:
    with pytest.raises(InvalidRecordError, match=message):
        check_record("Secret", tree)


def test_kind_id_replaced_and_output() -> None:
    assert kind_of(record()) == "Alchemy.Random"
    assert kind_of({"kind": "action", "actionType": "Build"}) == "Build"
    assert kind_of({"kind": "fs::File", "id": "x"}) == "fs::File"  # a v1 state
    assert kind_of({}) == ""
    assert id_of("Group/Nested", {"fqn": "Group/Nested"}) == "Group/Nested"
    assert id_of("k", {"id": "v1-id"}) == "v1-id"
    assert id_of("k", {}) == "k"
    trees = {
        "b": {"status": "replaced"},
        "a": {"status": "replaced"},
        "c": {"status": "created"},
        OUTPUT_KEY: {"status": "replaced"},
    }
    assert replaced(trees) == ["a", "b"]
    assert output_value(output_record({"url": "x"})) == {"url": "x"}
    assert output_value(output_record(None)) is None
    with pytest.raises(InvalidRecordError):
        output_record({SEALED: 1})


# -- secrets sealed at rest ------------------------------------------------------------


def test_sealing_hides_the_plaintext_and_opening_restores_the_record() -> None:
    tree = record()
    original = copy.deepcopy(tree)
    sealed = seal_record(tree, KEYS, HERE)
    assert tree == original  # a copy
    assert "s3cr3t" not in json.dumps(sealed, ensure_ascii=False)
    payload = sealed["attr"]["text"]["__redacted__"][SEALED]
    assert set(payload) == {"alg", "kid", "iv", "ct"}
    assert payload["kid"] == "k1"
    assert sealed["unknownField"] == original["unknownField"]
    assert open_record(sealed, KEYS, HERE) == original


def test_every_json_value_under_redacted_is_sealed() -> None:
    tree = {"a": {"__redacted__": {"user": "bob", "n": [1, 2.5, None]}}, "b": [{"__redacted__": 7}]}
    sealed = seal_record(tree, KEYS, HERE)
    assert holds_redacted(sealed)
    assert "bob" not in json.dumps(sealed)
    assert open_record(sealed, KEYS, HERE) == tree


def test_an_unchanged_secret_keeps_its_bytes_a_changed_one_does_not() -> None:
    first = seal_record(record(), KEYS, HERE)
    again = seal_record(record(status="deleting"), KEYS, HERE, previous=first)
    assert again["attr"] == first["attr"]
    changed = seal_record(record("other"), KEYS, HERE, previous=first)
    assert changed["attr"] != first["attr"]
    assert seal_record(record(), KEYS, HERE)["attr"] != first["attr"]  # a fresh IV


def test_a_sealed_secret_opens_only_where_it_was_sealed() -> None:
    sealed = seal_record(record(), KEYS, HERE)
    with pytest.raises(SealedSecretError, match="another record"):
        open_record(sealed, KEYS, place("app", "dev", "Other"))
    tampered = copy.deepcopy(sealed)
    tampered["attr"]["text"]["__redacted__"][SEALED]["ct"] = (
        "AAAA" + tampered["attr"]["text"]["__redacted__"][SEALED]["ct"][4:]
    )
    with pytest.raises(SealedSecretError, match="does not open"):
        open_record(tampered, KEYS, HERE)
    with pytest.raises(SealedSecretError, match="no secret keys"):
        open_record(sealed, None, HERE)


def test_keys_rotate_by_id() -> None:
    old_entry = new_secret_key("k1")
    old = SecretKeys.parse(old_entry, "old")
    sealed_by_old = seal_record(record(), old, HERE)
    new_entry = new_secret_key("k2")
    ring = SecretKeys.parse(f"{new_entry}\n# retired, still opens\n{old_entry}\n", "ring")
    assert ring.current == "k2"
    assert open_record(sealed_by_old, ring, HERE) == record()
    resealed = seal_record(record(), ring, HERE, previous=sealed_by_old)
    assert resealed["attr"]["text"]["__redacted__"][SEALED]["kid"] == "k2"
    with pytest.raises(SealedSecretError, match="'k2', which the server does not have"):
        open_record(resealed, old, HERE)
    assert "k2" in repr(ring)
    assert new_entry.split(":")[1] not in repr(ring)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one key"),
        ("k1", "entry 1 is not"),
        ("k1:not base64!", "entry 1 is not"),
        ("k1:AAAA", "is 3 bytes"),
        ("bad id:" + "A" * 44, "must be 1-64"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        SecretKeys.parse(text, "EVSTATE_SECRET_KEYS")
    assert "AAAA" not in str(info.value)


def test_a_key_id_given_twice_is_refused() -> None:
    entry = new_secret_key("k1")
    with pytest.raises(ConfigError, match="given twice"):
        SecretKeys.parse(f"{entry},{entry}", "x")


def test_exposure_needs_loopback_tls_or_consent() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"):
        assert is_loopback(host)
        check_exposure(host, tls=False, allow=False)
    for host in ("0.0.0.0", "10.0.0.1", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="needs TLS"):
            check_exposure(host, tls=False, allow=False)
        check_exposure(host, tls=True, allow=False)
        check_exposure(host, tls=False, allow=True)
