"""Serde against the real Alchemy 0.94.0 from npm, run by Node.

(a) Alchemy's own ``serialize`` writes secrets, dates, buffers, the scope and symbol keys;
evstate reads them with the same password. (b) Alchemy's ``deserialize`` reads what
evstate wrote. Needs Node.js and npm (the package is installed once into a cache).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from evstate.errors import SecretError
from evstate.model import Scope
from evstate.serde import Secret, deserialize, serialize
from tests._alchemy import run_node

PASSWORD = "interop pässword"
SCOPE = Scope("app", "dev", password=PASSWORD)


@pytest.fixture(scope="module")
def alchemy_tree() -> Any:
    """What Alchemy's serialize wrote (see tests/node/alchemy_serde.mjs)."""
    return run_node("alchemy_serde.mjs", stdin={"password": PASSWORD, "op": "serialize"})


def alchemy_reads(tree: Any, password: str = PASSWORD) -> Any:
    return run_node(
        "alchemy_serde.mjs", stdin={"password": password, "op": "deserialize", "tree": tree}
    )


class TestEvstateReadsAlchemy:
    def test_secrets_open_with_the_same_password(self, alchemy_tree: Any) -> None:
        value = deserialize(SCOPE, alchemy_tree)
        assert value["empty"] == Secret("")
        assert value["space"] == Secret("   ")
        assert value["unicode"] == Secret("pässwörd ☃ 🔑")
        assert value["newline"] == Secret("line 1\nline 2\r\n")
        assert value["long"] == Secret("x" * 1000)
        assert value["nested"]["list"][0] == Secret("in a list")
        assert value["nested"]["list"][1]["deeper"] == Secret("in a dict")

    def test_non_string_secrets(self, alchemy_tree: Any) -> None:
        assert "data" in alchemy_tree["object"]["@secret"]
        value = deserialize(SCOPE, alchemy_tree)
        assert value["object"].unencrypted == {
            "user": "bob",
            "scopes": ["read", "write"],
            "n": 1.5,
            "ok": True,
        }
        assert value["number"] == Secret(42)

    def test_other_markers(self, alchemy_tree: Any) -> None:
        value = deserialize(SCOPE, alchemy_tree)
        assert value["when"] == datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
        assert value["raw"] == b"\x00\x01\x02\xff"
        assert value["scope"] is SCOPE
        assert value["Symbol(alchemy::ResourceID)"] == "id-1"
        assert value["plain"] == "text"

    def test_wrong_password_is_an_error(self, alchemy_tree: Any) -> None:
        with pytest.raises(SecretError, match="wrong password") as info:
            deserialize(Scope("app", password="nope"), alchemy_tree)
        assert "empty" in str(info.value)

    def test_reserializing_keeps_alchemy_readable(self, alchemy_tree: Any) -> None:
        again = serialize(SCOPE, deserialize(SCOPE, alchemy_tree))
        described = alchemy_reads(again)
        assert described["long"] == {"$secret": "x" * 1000}
        assert described["object"]["$secret"]["scopes"] == ["read", "write"]


class TestAlchemyReadsEvstate:
    def test_markers(self) -> None:
        value = {
            "token": Secret("t0ken ☃\n"),
            "empty": Secret(""),
            "long": Secret("y" * 1000),
            "config": Secret({"a": [1, 2, {"b": None}], "pi": 3.25}),
            "flag": Secret(True),
            "nested": [{"s": Secret("deep")}, [Secret("deeper")]],
            "when": datetime(2030, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            "raw": b"\xde\xad\xbe\xef",
            "Scope": SCOPE,
            "Symbol(alchemy::ResourceKind)": "fs::File",
            "text": "plain",
        }
        tree = json.loads(json.dumps(serialize(SCOPE, value)))
        assert alchemy_reads(tree) == {
            "token": {"$secret": "t0ken ☃\n"},
            "empty": {"$secret": ""},
            "long": {"$secret": "y" * 1000},
            "config": {"$secret": {"a": [1, 2, {"b": None}], "pi": 3.25}},
            "flag": {"$secret": True},
            "nested": [{"s": {"$secret": "deep"}}, [{"$secret": "deeper"}]],
            "when": {"$date": "2030-12-31T23:59:59.999Z"},
            "raw": {"$buffer": base64.b64encode(b"\xde\xad\xbe\xef").decode()},
            "Scope": {"$scope": True},
            "Symbol(alchemy::ResourceKind)": "fs::File",
            "text": "plain",
        }

    def test_many_secrets_share_a_salt_and_alchemy_still_reads_each(self) -> None:
        value = [Secret(f"secret {i}") for i in range(20)]
        tree = serialize(SCOPE, value)
        assert len({node["@secret"]["iv"] for node in tree}) == 20
        assert alchemy_reads(tree) == [{"$secret": f"secret {i}"} for i in range(20)]

    def test_alchemy_refuses_a_wrong_password(self) -> None:
        tree = serialize(SCOPE, {"s": Secret("x")})
        with pytest.raises(RuntimeError, match="failed"):
            alchemy_reads(tree, password="wrong")
