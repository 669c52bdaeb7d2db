"""The rule for scope names and keys (evstate.names), through Scope and validate_key."""

from __future__ import annotations

import pytest

from evstate.errors import InvalidKeyError, InvalidScopeError
from evstate.keys import validate_key
from evstate.model import Scope
from evstate.names import name_problem, printable

BAD = [
    ("..", "'..' segment"),
    (".", "'.' segment"),
    ("a/../b", "'..' segment"),
    ("/abs", "empty"),
    ("a//b", "empty"),
    ("a/", "empty"),
    ("nul\x00", "control character"),
    ("esc\x1b]0;title\x07", "control character"),
    ("del\x7f", "control character"),
    ("c1\x9b", "control character"),
    ("lone\ud800", "lone surrogate"),
]


@pytest.mark.parametrize(("name", "says"), BAD, ids=[repr(n) for n, _ in BAD])
def test_scope_names_and_keys_are_refused(name: str, says: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert says in problem
    with pytest.raises(InvalidScopeError, match=says):
        Scope("app", name)
    with pytest.raises(InvalidKeyError, match=says):
        validate_key(name)


@pytest.mark.parametrize("name", ["a", "a/b", "...", "a.b", "é ☃", "Symbol(x)", ".hidden"])
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None
    Scope("app", name)
    validate_key(name)


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("a\x1b]0;x\x07b\x9bc\ud800") == "a\\x1b]0;x\\x07b\\x9bc\\ud800"
    assert printable("plain é") == "plain é"
