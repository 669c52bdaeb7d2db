"""What the store puts in Kafka, the topics it makes, and the input it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from evstate import EvstateClient, Scope, State, events, keys
from evstate.broker import LocalBroker
from evstate.errors import (
    ViewLockedError,
)
from tests.contract import make_state

APP = Scope("app", "prod")


def _client(bootstrap: str, prefix: str, view_dir: Path, **more: object) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap, view_dir=str(view_dir), topic_prefix=prefix, **more
    )


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        meta = await admin.describe_topics([topic])
    finally:
        await admin.close()
    configs = {e[0]: e[1] for e in response.resources[0][4]}
    configs["partitions"] = str(len(meta[0]["partitions"]))
    configs["replicas"] = str(len(meta[0]["partitions"][0]["replicas"]))
    return configs


async def _read_all(bootstrap: str, topic: str, partition: int) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records = []
        # Transaction markers take offsets too: read until the position reaches the end.
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=5000)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def test_init_creates_a_compacted_topic(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        await client.store(APP).init()
    configs = await _topic_config(bootstrap_servers, f"{topic_prefix}.state")
    assert configs["cleanup.policy"] == "compact"
    assert configs["partitions"] == "12"
    assert configs["replicas"] == "1"  # min(3, brokers) on one broker


async def test_events_are_avro_keyed_by_scope_and_partitioned_by_scope(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir, actor="ci@test") as client:
        store = client.store(APP)
        await store.init()
        p1 = await store.set("b/1", make_state(APP, "b/1", size=3), reason="deploy")
        p2 = await store.delete("b/1", reason="destroy")
    partition = keys.partition_for(APP, 12)
    assert p1.partition == p2.partition == partition
    records = await _read_all(bootstrap_servers, f"{topic_prefix}.state", partition)
    assert [r.offset for r in records] == [p1.offset, p2.offset]
    set_rec, del_rec = records
    assert set_rec.key == b"app/prod:b/1"
    assert (events.SCHEMA_HEADER, events.CURRENT_FINGERPRINT) in set_rec.headers
    event = events.decode(set_rec.value, set_rec.headers)
    assert (event.op, event.scope, event.key, event.version) == ("SET", ("app", "prod"), "b/1", 1)
    assert (event.actor, event.reason) == ("ci@test", "deploy")
    assert event.state is not None
    assert event.state["props"] == {"size": 3}
    assert event.state["fqn"] == "app/prod/b/1"
    # A DELETE is a tombstone (compaction can drop the key) carrying the event in a header.
    assert del_rec.key == b"app/prod:b/1"
    assert del_rec.value is None
    carried = dict(del_rec.headers)[events.DELETE_HEADER]
    deleted = events.decode(carried, del_rec.headers)
    assert (deleted.op, deleted.version, deleted.reason) == ("DELETE", 2, "destroy")


async def test_second_client_on_the_same_view_dir_is_refused(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir):
        with pytest.raises(ViewLockedError, match=str(view_dir)):
            async with _client(bootstrap_servers, topic_prefix, view_dir):
                pass


async def test_state_round_trips_alchemy_values(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    from datetime import UTC, datetime

    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        when = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC)
        state = State(
            status="updated",
            kind="k",
            id="x",
            fqn="app/prod/x",
            seq=3,
            data={"raw": b"\x00\x01"},
            props={"at": when},
            old_props={"at": None},
            output={"Scope": APP, "n": 1.5},
        )
        await store.set("x", state)
        got = await store.get("x")
    assert got is not None
    assert got.data == {"raw": b"\x00\x01"}
    assert got.props == {"at": when}
    assert got.old_props == {"at": None}
    assert got.output == {"Scope": APP, "n": 1.5}


@pytest.mark.cluster
async def test_three_brokers_give_replication_3_and_min_isr_2(
    cluster3: LocalBroker, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(cluster3.bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        await store.init()
        await store.set("a", make_state(APP, "a"))
        assert await store.get("a") is not None
    configs = await _topic_config(cluster3.bootstrap_servers, f"{topic_prefix}.state")
    assert configs["replicas"] == "3"
    assert configs["min.insync.replicas"] == "2"
