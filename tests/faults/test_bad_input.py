"""Bad input: each is refused with a clear EvstateError naming the problem, and nothing is written.

The table below is the list: what the caller does, the error it gets, and words the
message must contain.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from evstate import EvstateClient, Scope, Secret
from evstate.errors import (
    BrokerUnavailableError,
    EventTooLargeError,
    EvstateError,
    InvalidKeyError,
    InvalidScopeError,
    InvalidStateError,
    SecretError,
    TopicMismatchError,
    UnserializableError,
)
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


CASES = [
    Case("empty key", lambda s, c: s.set("", make_state(APP, "")), InvalidKeyError, "empty"),
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
