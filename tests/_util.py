"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from subprocess import CompletedProcess

from evstate.kafka import Record


def free_port_block(count: int) -> int:
    """A first port such that ``count`` consecutive loopback ports are free right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")


async def topic_record_count(bootstrap_servers: str, topic: str) -> int:
    """How many offsets a topic's partitions hold in all (0 when it does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return 0
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def committed_records(bootstrap_servers: str, topic: str) -> list[Record]:
    """Every record a read_committed reader sees in ``topic``, all partitions, in order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Record] = []
        # Transaction markers take offsets too: read until every position reaches its end.
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, recs in (await consumer.getmany(timeout_ms=2000)).items():
                out.extend(
                    Record(tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp)
                    for r in recs
                )
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> CompletedProcess[str]:
    """Run ``evstate ARGS`` in a subprocess (off the event loop) and return what it did."""
    import subprocess
    import sys

    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "evstate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> dict[str, str]:
    """The environment for a CLI subprocess reading this test's topics into ``view_dir``."""
    import os

    return {
        **os.environ,
        "EVSTATE_BOOTSTRAP_SERVERS": bootstrap_servers,
        "EVSTATE_TOPIC_PREFIX": topic_prefix,
        "EVSTATE_VIEW_DIR": str(view_dir),
    }
