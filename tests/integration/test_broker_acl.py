"""``evstate broker start --sasl-user serve=... --sasl-user reader=... --acl``: Kafka's own
authorizer lets only the gateway's SASL user write evstate's topics. Real broker, real
clients: evstate writes as ``serve``; a producer logged in as ``reader`` (or anonymous) is
refused on the state and history topics, while reading works."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.errors as kerr
import pytest

from evstate import ConsistencyTimeout, EvstateClient, Scope
from evstate.broker import LocalBroker
from evstate.errors import NotAuthorizedError
from evstate.fencing import lane_id
from tests._util import free_port_block
from tests.contract import make_state

USERS = {"serve": "serve-secret-1", "reader": "reader-secret-2"}
APP = Scope("app", "acl")


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(
        tmp_path_factory.mktemp("acl-broker"),
        port=free_port_block(3),
        sasl_users=USERS,
        acl_writer="serve",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _sasl(broker: LocalBroker, user: str) -> dict[str, Any]:
    assert broker.sasl_bootstrap_servers is not None
    return {
        "bootstrap_servers": broker.sasl_bootstrap_servers,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": user,
        "sasl_plain_password": USERS[user],
    }


async def _produce(options: dict[str, Any], topic: str) -> BaseException | None:
    producer = aiokafka.AIOKafkaProducer(request_timeout_ms=5000, **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"forged", key=b"app/acl:k")
    except kerr.KafkaError as exc:
        return exc
    finally:
        await producer.stop()
    return None


async def _read(options: dict[str, Any], topic: str) -> int:
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        group_id="acl-test-readers",
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **options,
    )
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=10_000)
        return sum(len(records) for records in got.values())
    finally:
        await consumer.stop()


def _props(path: Path) -> tuple[int, str]:
    return path.stat().st_mode, path.read_text()


async def test_only_the_gateway_user_writes(acl_broker: LocalBroker, tmp_path: Path) -> None:
    state = acl_broker.load()
    assert state is not None
    assert state.acl_writer == "serve"
    mode, text = _props(Path(state.nodes[0].dir, "server.properties"))
    assert mode & 0o077 == 0  # it holds the broker user's password
    assert "StandardAuthorizer" in text
    assert "allow.everyone.if.no.acl.found=false" in text
    for password in USERS.values():
        assert password not in text

    # evstate, logged in as serve, creates its topics and writes (transactions and all).
    async with EvstateClient(
        view_dir=str(tmp_path / "view"), topic_prefix="acl", **_sasl(acl_broker, "serve")
    ) as client:
        store = client.store(APP)
        await store.init()
        await store.set("k", make_state(APP, "k", n=1))
        assert (await store.get("k", consistency="strong")) is not None

    reader = _sasl(acl_broker, "reader")
    anonymous = {"bootstrap_servers": acl_broker.bootstrap_servers}
    for topic in ("acl.state", "acl.history"):
        refused = await _produce(reader, topic)
        assert isinstance(refused, kerr.TopicAuthorizationFailedError), (topic, refused)
        refused = await _produce(anonymous, topic)
        assert isinstance(refused, kerr.TopicAuthorizationFailedError), (topic, refused)
        # Reading works for the reader: the layout marker and the SET (state), the SET
        # (history); nothing forged.
        assert await _read(reader, topic) == (2 if topic == "acl.state" else 1)

    # A reader cannot become a transactional writer either.
    producer = aiokafka.AIOKafkaProducer(
        transactional_id="evstate-acl-p0", request_timeout_ms=5000, **reader
    )
    with pytest.raises(kerr.KafkaError):
        await producer.start()
    await producer.stop()

    # And an evstate client as reader reads what serve wrote.
    async with EvstateClient(
        view_dir=str(tmp_path / "reader-view"), topic_prefix="acl", **reader
    ) as client:
        got = await client.store(APP).get("k", consistency="strong")
        assert got is not None


async def test_a_reader_that_may_not_fence_is_told_what_holds_its_partition(
    acl_broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """serve's transaction is left open holding a record; a reader, who may not use the
    partition's transactional id, cannot have it aborted: its wait runs out, the log says
    why the abort failed, and the error names the open transaction."""
    serve, reader = _sasl(acl_broker, "serve"), _sasl(acl_broker, "reader")
    async with EvstateClient(
        view_dir=str(tmp_path / "serve-view"), topic_prefix="aclheld", **serve
    ) as client:
        await client.store(APP).set("k", make_state(APP, "k", n=1))
        partition = client.engine.partition_of(APP)
        tid = lane_id(client.settings, partition)
    stuck = aiokafka.AIOKafkaProducer(
        transactional_id=tid, transaction_timeout_ms=120_000, request_timeout_ms=5000, **serve
    )
    await stuck.start()
    try:
        await stuck.begin_transaction()
        await stuck.send_and_wait(
            "aclheld.state", b"never committed", key=b"app/acl:half", partition=partition
        )
        with caplog.at_level(logging.WARNING, logger="evstate.held"):
            async with EvstateClient(
                view_dir=str(tmp_path / "reader-view"),
                topic_prefix="aclheld",
                read_timeout=3.0,
                **reader,
            ) as client:
                with pytest.raises(ConsistencyTimeout) as info:
                    await client.store(APP).get("k")
                # Nor may it write: told so, not that Kafka is unreachable.
                with pytest.raises(
                    NotAuthorizedError,
                    match=r"does not let reader.*WRITE on the partitions' transactional ids",
                ):
                    await client.store(APP).set("k", make_state(APP, "k", n=2))
        await stuck.abort_transaction()
    finally:
        await stuck.stop()
    err = info.value
    assert err.held_at is not None
    assert err.held_at == err.reached + 1
    assert f"a transaction left open at offset {err.held_at}" in str(err)
    failed = [r.getMessage() for r in caplog.records if "aborting it failed" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records]
    assert f"held at offset {err.held_at}" in failed[0]
    assert "does not let reader" in failed[0]  # the ACLs, named as such


def test_acl_needs_its_writer_among_the_sasl_users(tmp_path: Path) -> None:
    from evstate.errors import BrokerError

    with pytest.raises(BrokerError, match="must be one of the SASL users"):
        LocalBroker(tmp_path, acl_writer="serve")
    with pytest.raises(BrokerError, match="must be one of the SASL users"):
        LocalBroker(tmp_path, sasl_users={"reader": "x"}, acl_writer="serve")
    with pytest.raises(BrokerError, match="single node"):
        LocalBroker(tmp_path, nodes=3, sasl_users=USERS, acl_writer="serve")
