"""The transaction a sequencer opens ahead of its next write, against the real broker.

After each commit the partition's producer begins the next transaction and has its
partitions added at once, so a write costs a produce and an end-transaction. These tests
pin what that must not change: a fenced producer never writes again without its owner
catching up; an open, empty transaction holds back no reader; an idle writer ends it
before the broker's transaction timeout would fence it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from evstate import EvstateClient, FencedError, Scope
from evstate.config import Settings
from evstate.errors import WriterFencedError
from evstate.kafka import OutRecord, TransactionalProducer
from tests._util import committed_records
from tests.contract import make_state

STAGE = Scope("app", "dev")


def _client(bootstrap: str, prefix: str, tmp: Path, actor: str, **settings: float) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        view_dir=str(tmp / f"view-{actor}"),
        actor=actor,
        **settings,
    )


def _lane(client: EvstateClient, partition: int) -> TransactionalProducer:
    """The producer of ``partition``'s sequencer in ``client`` (it has written there)."""
    writer = client.engine._writer
    assert writer is not None
    return writer._sequencers[partition]._lane


async def test_a_lane_fenced_while_open_ahead_never_writes_until_registered_again(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    async with _client(bootstrap_servers, topic_prefix, tmp_path, "setup") as setup:
        await setup.store(STAGE).init()  # the topics
    topic, tid = settings.state_topic, f"{topic_prefix}-lane-test"
    first = TransactionalProducer(settings, tid, max_request_size=1 << 20, ahead=[(topic, 0)])
    second = TransactionalProducer(settings, tid, max_request_size=1 << 20, ahead=[(topic, 0)])
    await first.start()
    assert first.opened_ahead
    try:
        await second.start()  # fences the first; the broker aborts its open transaction
        await first.close_ahead()
        assert not first.registered  # its abort was refused: it knows it is fenced
        with pytest.raises(WriterFencedError, match="not registered"):
            await first.commit([OutRecord(topic, 0, b"k", b"from the fenced one", [])])
        await second.commit([OutRecord(topic, 0, b"k", b"from the owner", [])])
    finally:
        await first.stop()
        await second.stop()
    values = [r.value for r in await committed_records(bootstrap_servers, topic)]
    assert values == [b"from the owner"]


async def test_a_writer_fenced_while_idle_catches_up_before_deciding_again(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The lease holder idles past its idle limit while another client breaks its lease:
    its abort of the transaction opened ahead is refused, and its next write, decided only
    after registering again and catching up, is refused as fenced."""
    quick = {"transaction_timeout": 3.0}  # idle limit: a third of it
    async with (
        _client(bootstrap_servers, topic_prefix, tmp_path, "holder", **quick) as holder,
        _client(bootstrap_servers, topic_prefix, tmp_path, "oncall") as oncall,
    ):
        await holder.store(STAGE).init()
        lease = await holder.lock(STAGE, ttl=60)
        partition = holder.engine.partition_of(STAGE)
        assert _lane(holder, partition).opened_ahead
        await oncall.break_lock(STAGE, lease.token)
        deadline = time.monotonic() + 10
        while _lane(holder, partition).registered:  # its idle abort finds it fenced
            assert time.monotonic() < deadline, "the idle writer never closed its transaction"
            await asyncio.sleep(0.1)
        with pytest.raises(FencedError):
            await holder.store(STAGE).set("vpc", make_state(STAGE, "vpc", i=1))
        assert await oncall.store(STAGE).get("vpc", consistency="strong") is None


async def test_an_idle_writer_ends_its_open_transaction_before_the_broker_would(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with _client(
        bootstrap_servers, topic_prefix, tmp_path, "idle", transaction_timeout=3.0
    ) as client:
        store = client.store(STAGE)
        await store.init()
        await store.set("a", make_state(STAGE, "a", i=1))
        lane = _lane(client, client.engine.partition_of(STAGE))
        producer = lane._producer
        assert lane.opened_ahead
        await asyncio.sleep(4.0)  # past the broker's transaction timeout
        assert not lane.opened_ahead  # aborted after a third of it, by the writer
        await store.set("a", make_state(STAGE, "a", i=2))
        # The same registration wrote again: the broker never fenced it.
        assert lane._producer is producer
        assert (await store.get("a")).props["i"] == 2


async def test_an_open_transaction_holds_back_no_reader(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with (
        _client(bootstrap_servers, topic_prefix, tmp_path, "writer") as writer,
        _client(bootstrap_servers, topic_prefix, tmp_path, "reader") as reader,
    ):
        store = writer.store(STAGE)
        await store.init()
        await store.set("a", make_state(STAGE, "a", i=1))
        assert _lane(writer, writer.engine.partition_of(STAGE)).opened_ahead
        started = time.monotonic()
        got = await reader.store(STAGE).get("a", consistency="strong")
        assert got is not None
        assert got.props["i"] == 1
        assert time.monotonic() - started < 2.0  # not the transaction timeout
