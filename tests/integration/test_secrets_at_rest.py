"""A secret's plaintext never reaches Kafka or RocksDB: the raw bytes are scanned for it."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from evstate import EvstateClient, Scope, State
from evstate.serde import Secret


async def _raw_records(bootstrap: str, prefix: str) -> list[bytes]:
    """Key, value and header bytes of every record in every topic named ``prefix.*``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith(prefix + ".")]
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        chunks: list[bytes] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    chunks += [record.key or b"", record.value or b""]
                    chunks += [value for _key, value in record.headers]
        return chunks
    finally:
        await consumer.stop()


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


async def test_plaintext_is_in_neither_kafka_nor_rocksdb(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    plaintext = f"plaintext-{uuid.uuid4().hex}"
    forms = [plaintext.encode(), base64.b64encode(plaintext.encode())]
    scope = Scope("app", "prod", password="at-rest-pw")
    state = State(
        status="created",
        kind="test::Db",
        id="db",
        fqn="app/prod/db",
        seq=0,
        data={"copy": Secret(plaintext)},
        props={"db": {"password": Secret(plaintext)}, "list": [Secret({"p": plaintext})]},
        output={"url": Secret(plaintext)},
    )
    client = EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    )
    async with client:
        store = client.store(scope)
        await store.set("db", state)
        back = await store.get("db")
        assert back is not None
        assert back.props == state.props  # the secret is really in there
        records = await _raw_records(bootstrap_servers, topic_prefix)
        assert records
    for chunk in records:
        for form in forms:
            assert form not in chunk

    # After close, every file of the view: SSTs, WAL, manifest, logs.
    files = _files(view_dir)
    assert files
    for path, data in files.items():
        for form in forms:
            assert form not in data, path
