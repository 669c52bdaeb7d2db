"""The write rules (evstate.rules): pure decisions over leases and versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evstate.errors import (
    ConflictError,
    FencedError,
    LockHeldError,
    NoSuchLeaseError,
    ValidationError,
)
from evstate.model import Lease
from evstate.rules import check_lock, check_release, check_version, check_write, lockable

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def lease(scope: str = "app/dev", token: int = 7, *, lapsed: bool = False) -> Lease:
    return Lease(
        scope=scope,
        token=token,
        holder="ci",
        info={"job": "42"},
        acquired_at=NOW - timedelta(minutes=1),
        expires_at=NOW + timedelta(seconds=-1 if lapsed else 30),
    )


def test_a_live_lease_refuses_writes_without_its_token_in_its_tree() -> None:
    held = [lease()]
    for path in ("app/dev", "app/dev/db", "app/dev/db/deeper"):
        with pytest.raises(LockHeldError) as refused:
            check_write(path, None, held, NOW, "set")
        assert refused.value.holder == "ci"
        assert refused.value.token == 7
        assert "ci" in str(refused.value)
        assert "job=42" in str(refused.value)
    for path in ("app/dev2", "app", "app/prod", "other/dev"):
        check_write(path, None, held, NOW, "set")  # not covered


def test_the_holders_token_passes_and_another_is_fenced() -> None:
    check_write("app/dev/db", 7, [lease()], NOW, "set")
    with pytest.raises(FencedError):
        check_write("app/dev/db", 6, [lease()], NOW, "set")
    with pytest.raises(FencedError):  # the lease is gone: released or broken
        check_write("app/dev/db", 7, [], NOW, "set")


def test_a_lapsed_lease_frees_the_scope_but_still_admits_its_holder() -> None:
    check_write("app/dev", None, [lease(lapsed=True)], NOW, "set")
    check_write("app/dev", 7, [lease(lapsed=True)], NOW, "set")
    check_lock("app/dev", [lease(lapsed=True)], NOW)
    # Taken over: the new live lease wins over the old token.
    with pytest.raises(FencedError):
        check_write("app/dev", 7, [lease("app/dev/db", 7, lapsed=True), lease(token=9)], NOW, "set")


def test_locks_overlap_up_and_down_the_tree() -> None:
    for path in ("app/dev", "app/dev/db"):
        with pytest.raises(LockHeldError):
            check_lock(path, [lease()], NOW)
    with pytest.raises(LockHeldError):
        check_lock("app/dev", [lease("app/dev/db")], NOW)  # would cover a held lease
    check_lock("app/dev2", [lease()], NOW)
    check_lock("app/prod/db", [lease()], NOW)


def test_a_one_name_scope_cannot_be_locked() -> None:
    with pytest.raises(ValidationError, match="one-name scope"):
        lockable("app")
    lockable("app/dev")


def test_release_needs_the_exact_lease() -> None:
    assert check_release("app/dev", 7, [lease()], "unlock").token == 7
    with pytest.raises(FencedError, match="now is 7"):
        check_release("app/dev", 5, [lease()], "renew")
    with pytest.raises(NoSuchLeaseError):
        check_release("app/dev", 5, [lease()], "break")
    with pytest.raises(FencedError):
        check_release("app/dev/db", 7, [lease()], "unlock")  # another scope's lease


def test_compare_and_set() -> None:
    check_version("app/dev", "k", None, 3)
    check_version("app/dev", "k", 3, 3)
    check_version("app/dev", "k", 0, 0)
    with pytest.raises(ConflictError) as conflict:
        check_version("app/dev", "k", 2, 3)
    assert (conflict.value.key, conflict.value.expected, conflict.value.actual) == ("k", 2, 3)


def test_a_lease_round_trips_through_json() -> None:
    original = lease()
    assert Lease.from_json(original.to_json()) == original
    assert Lease.from_json(original.to_json(with_token=False), token=7) == original
    with pytest.raises(ValidationError):
        Lease.from_json({"scope": "app/dev"})
