"""What :class:`~evstate.store.KafkaStateStore` refuses before any I/O: a value that is not a
Scope or a State is an :class:`~evstate.errors.EvstateError`, like every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from evstate import Scope
from evstate.errors import EvstateError, InvalidScopeError, InvalidStateError
from evstate.store import KafkaStateStore


@pytest.mark.parametrize("scope", ["my-app/prod", ("my-app", "prod"), None])
def test_a_scope_that_is_not_a_scope_is_refused(scope: Any) -> None:
    with pytest.raises(InvalidScopeError, match=r"scope must be an evstate\.Scope") as info:
        KafkaStateStore(scope)
    assert isinstance(info.value, EvstateError)


@pytest.mark.parametrize("state", [{"id": "k", "status": "created"}, "k", None])
async def test_a_state_that_is_not_a_state_is_refused(state: Any) -> None:
    store = KafkaStateStore(Scope("my-app", "prod"), bootstrap_servers="127.0.0.1:1")
    with pytest.raises(InvalidStateError, match=r"state must be an evstate\.State") as info:
        await store.set("k", state)  # refused before the client opens: no I/O
    assert isinstance(info.value, EvstateError)
