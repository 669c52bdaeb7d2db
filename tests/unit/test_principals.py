"""The principals file and the grant check (:mod:`evstate.principals`): pure, no I/O."""

from __future__ import annotations

import pytest

from evstate.errors import ConfigError, ForbiddenError
from evstate.principals import (
    Principal,
    Principals,
    decide,
    hash_token,
    may,
    may_see,
    parse_principals,
)

H1 = hash_token("token-one")
H2 = hash_token("token-two")
FILE = f"""
[[principal]]
name = "ci-dev"
tokens_sha256 = ["{H1}"]
read = ["app"]
write = ["app/dev"]
lock = ["app/dev"]

[[principal]]
name = "ops"
tokens_sha256 = ["{H2}"]
admin = ["*"]
read = ["*"]
"""


def test_hash_token_is_hex_sha256() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token(b"abc") == hash_token("abc")


def test_a_file_parses_and_tokens_find_their_principal() -> None:
    principals = parse_principals(FILE)
    assert [p.name for p in principals.principals] == ["ci-dev", "ops"]
    found = principals.authenticate("token-one")
    assert found is not None
    assert found.name == "ci-dev"
    assert principals.authenticate(b"token-two") is not None
    assert principals.authenticate("token-three") is None
    assert principals.authenticate("") is None
    table = dict((name, grants) for name, _, grants in principals.table())
    assert table["ci-dev"]["read"] == ("app", "app/dev", "app/dev")
    assert table["ops"]["write"] == ()


@pytest.mark.parametrize(
    ("permission", "path", "allowed"),
    [
        ("read", "app", True),
        ("read", "app/prod/db", True),
        ("read", "other", False),
        ("read", "apple", False),  # a prefix of segments, not of characters
        ("write", "app/dev", True),
        ("write", "app/dev/db", True),
        ("write", "app/devx", False),
        ("write", "app/prod", False),
        ("write", "app", False),
        ("lock", "app/dev", True),
        ("lock", "app/prod", False),
        ("admin", "app/dev", False),
        ("write", "\u0430pp/dev", False),  # Cyrillic a
        ("write", "\uff41pp/dev", False),  # fullwidth a
        ("write", "App/dev", False),
        ("write", "app/dev\u200b", False),  # zero-width space
    ],
)
def test_decide(permission: str, path: str, allowed: bool) -> None:
    ci = parse_principals(FILE).principals[0]
    assert may(ci, permission, path) is allowed  # type: ignore[arg-type]
    if allowed:
        decide(ci, permission, path)  # type: ignore[arg-type]
    else:
        with pytest.raises(ForbiddenError) as info:
            decide(ci, permission, path)  # type: ignore[arg-type]
        assert info.value.principal == "ci-dev"
        assert info.value.permission == permission
        assert info.value.scope == path
        # repr: an invisible character is spelled out (\u200b), a look-alike shown as is.
        assert "ci-dev" in str(info.value)
        assert repr(path) in str(info.value)


def test_star_covers_everything_and_the_single_token_is_default() -> None:
    single = Principals.single("s3cret")
    default = single.authenticate("s3cret")
    assert default is not None
    assert default.name == "default"
    for permission in ("read", "write", "lock", "admin"):
        decide(default, permission, "any/scope/at/all")  # type: ignore[arg-type]
    assert "s3cret" not in repr(single)
    assert "s3cret" not in repr(default)


def test_principals_are_found_by_name() -> None:
    parsed = parse_principals(FILE)
    assert parsed.named("ops") is parsed.principals[1]
    assert parsed.named("nobody") is None
    assert parsed.named("OPS") is None


def test_may_see_shows_the_way_down_to_a_grant() -> None:
    p = Principal(name="p", read=("app/dev/db",))
    assert may_see(p, "app")
    assert may_see(p, "app/dev")
    assert may_see(p, "app/dev/db/x")
    assert not may_see(p, "app/prod")
    assert not may_see(p, "other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml = ", "not valid TOML"),
        ("", "no [[principal]]"),
        ("[[principal]]\nname='a'\n", "tokens_sha256"),
        (f"[[principal]]\nname='a b'\ntokens_sha256=['{H1}']\n", "name must be"),
        ("[[principal]]\nname='a'\ntokens_sha256=['the-plain-token']\n", "64 lowercase hex"),
        (f"[[principal]]\nname='a'\ntokens_sha256=['{hash_token('')}']\n", "empty token"),
        (f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\nread=['app/../x']\n", "'..'"),
        (f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\nread=['/app']\n", "empty"),
        (f'[[principal]]\nname="a"\ntokens_sha256=["{H1}"]\nread=["a\\u001bb"]\n', "control"),
        (f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\nread='app'\n", "list of scope"),
        (f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\nreed=['app']\n", "unknown key"),
        (
            f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\n"
            f"[[principal]]\nname='a'\ntokens_sha256=['{H2}']\n",
            "listed twice",
        ),
        (
            f"[[principal]]\nname='a'\ntokens_sha256=['{H1}']\n"
            f"[[principal]]\nname='b'\ntokens_sha256=['{H1}']\n",
            "share a token",
        ),
        ("[user]\nname='a'\n", "unknown table"),
    ],
)
def test_bad_files_are_refused_without_echoing_tokens(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_principals(text, "principals.toml")
    assert message in str(info.value)
    assert "the-plain-token" not in str(info.value)
