"""A view offline longer than the tombstone retention must not bring deleted states back.

Kafka removes a delete's tombstone from the compacted topic ``delete.retention.ms`` after
compaction. A view last caught up before the delete, reopened after the tombstone is gone,
never sees the delete unless it knows its offsets are too old to trust. Here the topic
compacts within seconds and the test waits until the tombstone really was removed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from evstate import EvstateClient, Scope
from tests._util import committed_records
from tests.contract import make_state

APP = Scope("app", "prod")
BULK = Scope("app", "bulk")
BULK_KEYS = 3_000
FAST_COMPACTION = {
    "delete.retention.ms": "100",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
}


def _client(bootstrap: str, prefix: str, view_dir: Path) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        view_dir=str(view_dir),
        state_topic_configs=FAST_COMPACTION,
    )


async def test_a_view_older_than_the_tombstone_retention_rereads_its_partition(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    old_view = tmp_path / "old"
    async with _client(bootstrap_servers, topic_prefix, old_view) as client:
        store = client.store(APP)
        await store.init()
        await store.set("doomed", make_state(APP, "doomed"))
        await store.set("kept", make_state(APP, "kept"))
        assert sorted(await store.list()) == ["doomed", "kept"]

    doomed_key = b"app/prod:doomed"
    state_topic = f"{topic_prefix}.state"
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "other") as other:
        store = other.store(APP)
        assert await store.get("doomed", consistency="strong") is not None
        await store.delete("doomed")
        # Keep the partition dirty and rolling until the cleaner has dropped the tombstone.
        deadline = time.monotonic() + 180
        i = 0
        while True:
            i += 1
            await store.set("filler", make_state(APP, "filler", i=i))
            records = await committed_records(bootstrap_servers, state_topic)
            if not any(r.key == doomed_key for r in records):
                break
            assert time.monotonic() < deadline, "the broker never removed the tombstone"
            await asyncio.sleep(0.5)

    async with _client(bootstrap_servers, topic_prefix, old_view) as client:
        store = client.store(APP)
        assert await store.get("doomed") is None
        assert await store.get("doomed", consistency="strong") is None
        assert sorted(await store.list()) == ["filler", "kept"]
        # A view just rebuilt is fresh, however short the retention: no second re-read.
        # (The rebuild reads enough records to take longer than half the retention.)
        bulk = client.store(BULK)
        gate = asyncio.Semaphore(256)

        async def one(i: int) -> None:
            async with gate:
                await bulk.set(f"b{i}", make_state(BULK, f"b{i}"))

        await asyncio.gather(*(one(i) for i in range(BULK_KEYS)))
        await client.rebuild()
        assert await bulk.count(consistency="eventual") == BULK_KEYS
        assert sorted(await store.list(consistency="eventual")) == ["filler", "kept"]
