"""Bad input: each is refused with a clear EvstateError naming the problem, and nothing is written.

The table below is the list: what the caller does, the error it gets, and words the
message must contain.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from evstate import EvstateClient, Scope, Secret, events, keys
from evstate.alchemy import fs as alchemy_fs
from evstate.alchemy.migrate import export_alchemy, import_alchemy
from evstate.errors import (
    BrokerUnavailableError,
    EventTooLargeError,
    EvstateError,
    InvalidKeyError,
    InvalidScopeError,
    InvalidStateError,
    SecretError,
    SerdeError,
    TopicMismatchError,
    UnreadableStateError,
    UnserializableError,
    ValidationError,
)
from evstate.model import ChangeEvent
from evstate.serde import serialize_state
from evstate.store import KafkaStateStore
from tests._guarantees import Guarantee
from tests._util import free_port_block, topic_record_count
from tests.contract import make_state

APP = Scope("app", "prod")
LOCKED = Scope("app", "locked", password="right horse battery")


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


def _bad_status() -> Any:
    state = make_state(APP, "a")
    state.status = "exploded"  # type: ignore[assignment]
    return state


Action = Callable[[KafkaStateStore, EvstateClient], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    name: str
    action: Action
    error: type[EvstateError]
    says: str  # a regex the message must match


async def _wrong_password(store: KafkaStateStore, client: EvstateClient) -> object:
    locked = client.store(LOCKED)
    await locked.set("db", make_state(LOCKED, "db", password=Secret("s3cret")))
    return await client.store(Scope("app", "locked", password="wrong")).get("db")


def _tree_with(key: str, **props: Any) -> dict[str, Any]:
    """A serialized state of ``key`` in APP whose props are ``props``, as given (no serde)."""
    tree = serialize_state(APP, make_state(APP, key))
    tree["props"] = props
    return tree


def _key_case(name: str, key: str, says: str) -> Case:
    return Case(name, lambda s, c: s.set(key, make_state(APP, key)), InvalidKeyError, says)


def _scope_case(name: str, scope_name: str, says: str) -> Case:
    return Case(
        name,
        lambda s, c: c.store(Scope("app", scope_name)).set("a", make_state(APP, "a")),
        InvalidScopeError,
        says,
    )


CASES = [
    Case("empty key", lambda s, c: s.set("", make_state(APP, "")), InvalidKeyError, "empty"),
    _scope_case("scope name '..'", "..", "'..' segment"),
    _scope_case("scope name '.'", ".", "'.' segment"),
    _scope_case("scope name '/abs'", "/abs", "empty '/'-separated segment"),
    _scope_case("scope name with NUL", "a\x00b", "control character"),
    _scope_case("scope name with a lone surrogate", "a\udc80", "lone surrogate"),
    _key_case("key '../x'", "../x", "'..' segment"),
    _key_case("key with ESC", "k\x1b]0;pwned\x07", "control character"),
    _key_case("key with C1", "k\x9b", "control character"),
    _key_case("key with a lone surrogate", "k\ud800", "lone surrogate"),
    Case(
        "set_tree with an @date that does not decode",
        lambda s, c: s.set_tree("a", _tree_with("a", at={"@date": "garbage"})),
        SerdeError,
        r"@date.*props\.at",
    ),
    Case(
        "set_tree with a string @secret",
        lambda s, c: s.set_tree("a", _tree_with("a", pw={"@secret": "str"})),
        SecretError,
        r"props\.pw",
    ),
    Case(
        "set_tree with a marker for a whole field",
        lambda s, c: s.set_tree("a", _tree_with("a", **{"@buffer": "AA=="})),
        SerdeError,
        "'props' is a serde marker",
    ),
    Case("key with ':'", lambda s, c: s.set("a:b", make_state(APP, "a:b")), InvalidKeyError, "':'"),
    Case(
        "key differs from state.id",
        lambda s, c: s.set("a", make_state(APP, "b")),
        InvalidKeyError,
        "differs from state.id",
    ),
    Case("invalid status", lambda s, c: s.set("a", _bad_status()), InvalidStateError, "status"),
    Case(
        "scope name with ':'",
        lambda s, c: c.store(Scope("app", "pr:od")).set("a", make_state(APP, "a")),
        InvalidScopeError,
        "':'",
    ),
    Case(
        "value that cannot be serialized",
        lambda s, c: s.set("a", make_state(APP, "a", lock=threading.Lock())),
        UnserializableError,
        r"props\.lock",
    ),
    Case(
        "a cycle",
        lambda s, c: s.set("a", make_state(APP, "a", loop=_cyclic())),
        UnserializableError,
        "cycle",
    ),
    Case(
        "event over the broker's size limit",
        lambda s, c: s.set("a", make_state(APP, "a", blob="x" * 1_100_000)),
        EventTooLargeError,
        r"max\.message\.bytes",
    ),
    Case(
        "secret without a password",
        lambda s, c: s.set("a", make_state(APP, "a", pw=Secret("hunter2"))),
        SecretError,
        r"props\.pw",
    ),
    Case("wrong password on read", _wrong_password, SecretError, r"password"),
]


GUARANTEE = Guarantee(
    test="tests/faults/test_bad_input.py::test_bad_input_is_refused_and_nothing_written",
    fault=f"bad input, {len(CASES)} kinds: " + "; ".join(c.name for c in CASES),
    asserted=(
        "each is refused with its `EvstateError` subclass, whose message names the problem",
        "nothing is written to the state topic, and the scope stays empty",
    ),
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_is_refused_and_nothing_written(
    case: Case, bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    ) as client:
        store = client.store(APP)
        await store.init()
        before = await topic_record_count(bootstrap_servers, f"{topic_prefix}.state")
        if case.name == "wrong password on read":
            before += 2  # the state written with the right password, and its marker
        with pytest.raises(case.error) as info:
            await case.action(store, client)
        assert re.search(case.says, str(info.value)), str(info.value)
        assert await topic_record_count(bootstrap_servers, f"{topic_prefix}.state") == before
        assert await store.count() == 0
    GUARANTEE.record(part=case.name, refused=type(info.value).__name__)


async def test_unreachable_broker_is_named_within_a_bounded_time(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port_block(1)}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=re.escape(dead)):
        async with EvstateClient(
            bootstrap_servers=dead, view_dir=str(tmp_path / "v"), connect_timeout=2.0
        ):
            pass
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("policy", "partitions", "says"),
    [("delete", 12, "cleanup.policy=delete"), ("compact", 3, "3 partitions")],
)
async def test_existing_topic_with_wrong_settings(
    bootstrap_servers: str,
    topic_prefix: str,
    view_dir: Path,
    policy: str,
    partitions: int,
    says: str,
) -> None:
    topic = f"{topic_prefix}.state"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": policy})]
        )
    finally:
        await admin.close()
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    ) as client:
        store = client.store(APP)
        with pytest.raises(TopicMismatchError, match=says):
            await store.init()
        with pytest.raises(TopicMismatchError):
            await store.set("a", make_state(APP, "a"))
    assert await topic_record_count(bootstrap_servers, topic) == 0


# -- records stored before input was checked ----------------------------------------------


async def produce_legacy(
    bootstrap_servers: str, topic_prefix: str, chain: tuple[str, ...], key: str, tree: Any
) -> None:
    """Write a SET straight to both topics, as a writer without today's checks did."""
    event = ChangeEvent.new(op="SET", scope=chain, key=key, state=tree, version=1, actor="old")
    encoded = events.encode(event)
    path = "/".join(chain)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for topic, (value, headers) in (
            ("state", events.state_record(event, encoded)),
            ("history", encoded),
        ):
            await producer.send_and_wait(
                f"{topic_prefix}.{topic}",
                value,
                key=f"{path}:{key}".encode(),
                headers=headers,
                partition=keys.partition_for(path, 12),
            )
    finally:
        await producer.stop()


async def test_a_scope_holding_an_undecodable_record_stays_readable(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    ) as client:
        store = client.store(APP)
        await store.init()
        await store.set("good", make_state(APP, "good", n=1))
        deep: dict[str, Any] = {"leaf": 1}
        for _ in range(250):  # deeper than serde reads (200): the view's text is marked
            deep = {"x": deep}
        for key, props in (
            ("bad-date", {"at": {"@date": "garbage"}}),
            ("bad-secret", {"pw": {"@secret": "str"}}),
            ("too-deep", {"deep": deep}),
            ("too-deep-dated", {"deep": deep, "at": {"@date": "2024-01-01T00:00:00.000Z"}}),
        ):
            tree = _tree_with(key, **props)
            await produce_legacy(bootstrap_servers, topic_prefix, APP.chain, key, tree)
        states = await store.all(consistency="strong")
        assert set(states) == {"good"}
        assert states["good"].props == {"n": 1}
        assert set(states.unreadable) == {"bad-date", "bad-secret", "too-deep", "too-deep-dated"}
        assert "@date" in str(states.unreadable["bad-date"])
        assert "deeper than 200" in str(states.unreadable["too-deep"])
        assert "deeper than 200" in str(states.unreadable["too-deep-dated"])
        assert states.unreadable["bad-date"].key == "bad-date"
        batch = await store.get_batch(["good", "bad-date", "missing"])
        assert set(batch) == {"good"}
        assert set(batch.unreadable) == {"bad-date"}
        with pytest.raises(UnreadableStateError, match="'bad-secret'"):
            await store.get("bad-secret")
        assert await store.count() == 5


# -- import-alchemy: everything checked first, only regular files inside DIR -------------


def _write_file(root: Path, chain: tuple[str, ...], key: str, **props: Any) -> Path:
    return alchemy_fs.write_state(root, chain, key, _tree_with(key, **props))


def _three_good(root: Path) -> None:
    for key in ("one", "two", "three"):
        tree = serialize_state(APP, make_state(APP, key))
        alchemy_fs.write_state(root, APP.chain, key, tree)


def _too_big_event(root: Path) -> None:
    _write_file(root, APP.chain, "zz-big", blob="x" * 1_100_000)


def _bad_marker(root: Path) -> None:
    _write_file(root, APP.chain, "zz-date", at={"@date": "garbage"})


def _fifo(root: Path) -> None:
    os.mkfifo(root / "app" / "prod" / "x.json")


def _symlink_out(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    tree = serialize_state(APP, make_state(APP, "stolen"))
    (outside / "stolen.json").write_text(json.dumps(tree))
    (root / "app" / "prod" / "stolen.json").symlink_to(outside / "stolen.json")


def _dev_zero(root: Path) -> None:
    (root / "app" / "prod" / "zero.json").symlink_to("/dev/zero")


def _oversized(root: Path) -> None:
    with (root / "app" / "prod" / "huge.json").open("wb") as handle:
        handle.truncate(alchemy_fs.MAX_FILE_BYTES + 1)  # sparse: costs no disk


def _deeply_nested(root: Path) -> None:
    (root / "app" / "prod" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)


IMPORTS = [
    ("an event over the broker's limit", _too_big_event, EventTooLargeError, "max.message.bytes"),
    ("a marker that does not decode", _bad_marker, SerdeError, r"zz-date\.json.*@date"),
    ("a FIFO", _fifo, ValidationError, r"x\.json is not a regular file"),
    ("a symlink out of DIR", _symlink_out, ValidationError, "outside"),
    ("a symlink to /dev/zero", _dev_zero, ValidationError, "outside"),
    ("a file over the size limit", _oversized, InvalidStateError, "larger than"),
    ("100k nested lists", _deeply_nested, InvalidStateError, "nested too deeply"),
]


@pytest.mark.parametrize(
    ("bad", "error", "says"), [i[1:] for i in IMPORTS], ids=[i[0] for i in IMPORTS]
)
async def test_import_alchemy_writes_nothing_when_one_file_is_bad(
    bootstrap_servers: str,
    topic_prefix: str,
    view_dir: Path,
    tmp_path: Path,
    bad: Callable[[Path], None],
    error: type[EvstateError],
    says: str,
) -> None:
    root = tmp_path / "dot-alchemy"
    _three_good(root)
    bad(root)
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    ) as client:
        await client.store(APP).init()
        with pytest.raises(error, match=says):
            await asyncio.wait_for(import_alchemy(client, root), 30)
        # Only the layout marker, written when init() created the topic.
        assert await topic_record_count(bootstrap_servers, f"{topic_prefix}.state") == 1


# -- export-alchemy: never outside its target ----------------------------------------------


async def test_export_of_a_stored_dot_dot_scope_writes_nothing_outside(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "a" / "b" / "c" / "d"
    target.mkdir(parents=True)
    tree = serialize_state(APP, make_state(APP, "esc"))
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    ) as client:
        await client.store(APP).init()
        chain = ("rt", "..", "..", "..", "escape")
        await produce_legacy(bootstrap_servers, topic_prefix, chain, "esc", tree)
        with pytest.raises(InvalidScopeError, match=r"'\.\.'"):
            await export_alchemy(client, "rt", target)
    assert _files_under(tmp_path / "a") == []


def _files_under(folder: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def test_write_state_stays_inside_its_target_on_its_own(tmp_path: Path) -> None:
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    (target / "app").mkdir(parents=True)
    outside.mkdir()
    (target / "app" / "prod").symlink_to(outside)  # a folder leading out
    tree = serialize_state(APP, make_state(APP, "x"))
    with pytest.raises(ValidationError, match="outside"):
        alchemy_fs.write_state(target, APP.chain, "x", tree)
    with pytest.raises(InvalidScopeError):
        alchemy_fs.write_state(target, ("app", ".."), "x", tree)
    assert list(outside.iterdir()) == []
