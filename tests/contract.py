"""The StateStore contract, written once and run against every front end.

A subclass provides two fixtures:

* ``open_store``: ``scope -> store`` with Alchemy's methods (``init, deinit, list, count,
  get, get_batch, all, set, delete``), all async;
* ``records_written``: ``async () -> int``, how many records the state topic holds, so a
  test can prove that refused input wrote nothing;

and sets ``invalid_input``: the exception type a front end raises for refused input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from evstate import Scope, State

Store = Any
OpenStore = Callable[[Scope], Store]
RecordsWritten = Callable[[], Awaitable[int]]

APP = Scope("my-app", "prod")


def make_state(scope: Scope, key: str, *, seq: int = 1, **props: Any) -> State:
    """A state as Alchemy would write it for ``key`` in ``scope``."""
    return State(
        status="created",
        kind="test::Resource",
        id=key,
        fqn="/".join((*scope.chain, key)),
        seq=seq,
        data={},
        props=dict(props),
        output={"arn": f"arn:test:{key}"},
    )


class StoreContract:
    """Alchemy's StateStore contract. Subclass it with the fixtures described above."""

    invalid_input: type[Exception] = Exception

    async def test_fresh_store_is_empty(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        assert await store.list() == []
        assert await store.count() == 0
        assert await store.all() == {}

    async def test_set_get_overwrite_delete(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        await store.set("bucket", make_state(APP, "bucket", size=1))
        got = await store.get("bucket")
        assert got is not None
        assert got.props == {"size": 1}
        assert got.status == "created"
        assert got.fqn == "my-app/prod/bucket"
        assert got.output is not None
        assert got.output["arn"] == "arn:test:bucket"
        await store.set("bucket", make_state(APP, "bucket", seq=2, size=2))
        got = await store.get("bucket")
        assert got is not None
        assert (got.seq, got.props) == (2, {"size": 2})
        await store.delete("bucket")
        assert await store.get("bucket") is None

    async def test_returned_state_carries_the_scope(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        await store.set("a", make_state(APP, "a"))
        got = await store.get("a")
        assert got is not None
        assert got.output is not None
        assert got.output["Scope"] == APP

    async def test_get_missing_is_none(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        assert await store.get("never-written") is None

    async def test_delete_missing_is_a_noop(
        self, open_store: OpenStore, records_written: RecordsWritten
    ) -> None:
        store = open_store(APP)
        await store.init()
        await store.set("a", make_state(APP, "a"))
        before = await records_written()
        await store.delete("never-written")
        assert await records_written() == before
        assert await store.list() == ["a"]

    async def test_get_batch(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        for key in ("a", "b", "c"):
            await store.set(key, make_state(APP, key))
        got = await store.get_batch(["a", "missing", "c"])
        assert sorted(got) == ["a", "c"]
        assert got["a"].id == "a"
        assert await store.get_batch([]) == {}

    async def test_count_after_sets_and_deletes(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        for i in range(7):
            await store.set(f"r{i}", make_state(APP, f"r{i}"))
        for i in range(3):
            await store.delete(f"r{i}")
        assert await store.count() == 4
        assert sorted(await store.list()) == ["r3", "r4", "r5", "r6"]

    async def test_keys_with_slash_round_trip(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        keys = ["a/b", "x/y/z", "plain"]
        for key in keys:
            await store.set(key, make_state(APP, key))
        assert sorted(await store.list()) == sorted(keys)
        assert sorted(await store.all()) == sorted(keys)
        got = await store.get("x/y/z")
        assert got is not None
        assert got.id == "x/y/z"

    @pytest.mark.parametrize("key", ["", "a:b", ":"])
    async def test_bad_keys_are_refused_and_nothing_written(
        self, open_store: OpenStore, records_written: RecordsWritten, key: str
    ) -> None:
        store = open_store(APP)
        await store.init()
        before = await records_written()
        with pytest.raises(self.invalid_input):
            await store.set(key, make_state(APP, key))
        assert await records_written() == before
        assert await store.count() == 0

    async def test_key_must_equal_state_id(
        self, open_store: OpenStore, records_written: RecordsWritten
    ) -> None:
        store = open_store(APP)
        await store.init()
        before = await records_written()
        with pytest.raises(self.invalid_input):
            await store.set("a", make_state(APP, "b"))
        assert await records_written() == before

    async def test_parent_and_child_scopes_are_apart(self, open_store: OpenStore) -> None:
        child_scope = APP.child("api")
        parent, child = open_store(APP), open_store(child_scope)
        await parent.init()
        await child.init()
        await parent.set("p", make_state(APP, "p"))
        await child.set("c", make_state(child_scope, "c"))
        assert await parent.list() == ["p"]
        assert await child.list() == ["c"]
        assert await parent.get("c") is None
        assert await child.get("p") is None
        assert await parent.count() == 1
        sibling = open_store(Scope("my-app", "prod2"))
        await sibling.init()
        assert await sibling.list() == []

    async def test_init_is_idempotent(self, open_store: OpenStore) -> None:
        store = open_store(APP)
        await store.init()
        await store.set("a", make_state(APP, "a"))
        await store.init()
        await store.init()
        assert await store.list() == ["a"]

    async def test_deinit_empties_only_this_scope(self, open_store: OpenStore) -> None:
        child_scope = APP.child("api")
        store, child = open_store(APP), open_store(child_scope)
        await store.init()
        for i in range(5):
            await store.set(f"r{i}", make_state(APP, f"r{i}"))
        await child.set("c", make_state(child_scope, "c"))
        await store.deinit()
        assert await store.count() == 0
        assert await store.list() == []
        assert await child.list() == ["c"]

    async def test_delete_missing_in_an_untouched_scope(
        self, open_store: OpenStore, records_written: RecordsWritten
    ) -> None:
        store = open_store(Scope("untouched", "scope"))
        await store.init()
        # init() of a new topic writes its layout marker, nothing else.
        assert await records_written() <= 1
        before = await records_written()
        await store.delete("nothing")
        assert await records_written() == before
