"""Reads see prior writes: across processes, after restarts, after a crash."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from evstate import ConsistencyTimeout, EvstateClient, Position, Scope
from evstate.fencing import lane_id
from tests._util import subprocess_env
from tests.contract import make_state

PROCS = Path(__file__).parent / "procs"
APP = Scope("app", "prod")


def _client(bootstrap: str, prefix: str, view_dir: Path, **more: object) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap, view_dir=str(view_dir), topic_prefix=prefix, **more
    )


async def test_other_process_reads_with_strong_and_min_position(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "writer") as writer:
        store = writer.store(APP)
        await store.init()
        reader = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCS / "reader.py"),
            bootstrap_servers,
            topic_prefix,
            str(tmp_path / "reader"),
            APP.path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=subprocess_env(),
        )
        assert reader.stdin is not None
        assert reader.stdout is not None

        async def ask(line: str) -> object:
            assert reader.stdin is not None
            assert reader.stdout is not None
            reader.stdin.write(line.encode() + b"\n")
            await reader.stdin.drain()
            return json.loads(await asyncio.wait_for(reader.stdout.readline(), 60))

        assert (await asyncio.wait_for(reader.stdout.readline(), 60)).strip() == b"ready"
        await store.set("k", make_state(APP, "k", v=1))
        assert await ask("strong k") == {"v": 1}
        pos = await store.set("k", make_state(APP, "k", v=2))
        assert await ask(f"pos k {pos.token}") == {"v": 2}
        reader.stdin.close()
        assert await asyncio.wait_for(reader.wait(), 30) == 0


async def test_restart_resumes_from_stored_offsets(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        await store.init()
        for i in range(20):
            await store.set(f"r{i}", make_state(APP, f"r{i}"))
        assert await store.count() == 20
        assert client.applier is not None
        assert client.applier.stats.records_applied == 20
        offsets_before = client.view.applied_offsets()
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        assert client.view.applied_offsets() == offsets_before
        store = client.store(APP)
        await store.set("one-more", make_state(APP, "one-more"))
        assert await store.count() == 21
        assert client.applier is not None
        # Only the new event was applied: the old 20 were not read again.
        assert client.applier.stats.records_applied == 1


async def test_killed_between_ack_and_apply_comes_back_consistent(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(PROCS / "writer_killed.py"),
            bootstrap_servers,
            topic_prefix,
            str(view_dir),
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    last = Position.parse(proc.stdout.strip())
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        got = await store.get("r29", consistency="eventual", min_position=last)
        assert got is not None
        assert got.props == {"i": 29}
        assert await store.count() == 30
        report = await client.verify()
        assert report.ok
        assert report.keys == 30


async def test_wait_that_runs_out_names_partition_and_offsets(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir, read_timeout=0.3) as client:
        store = client.store(APP)
        await store.init()
        pos = await store.set("a", make_state(APP, "a"))
        future = Position(pos.partition, pos.offset + 1000)
        with pytest.raises(ConsistencyTimeout) as info:
            await store.get("a", min_position=future)
        err = info.value
        assert (err.partition, err.wanted) == (pos.partition, pos.offset + 1000)
        # The view passed the write (and its transaction marker), not the wanted offset.
        assert pos.offset <= err.reached < err.wanted
        assert f"partition {pos.partition}" in str(err)
        assert isinstance(err, TimeoutError)


async def test_reader_started_before_the_topic_existed_sees_later_writes(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "reader") as reader:
        assert await reader.store(APP).get("a", consistency="strong") is None  # no topic yet
        async with _client(bootstrap_servers, topic_prefix, tmp_path / "writer") as writer:
            pos = await writer.store(APP).set("a", make_state(APP, "a", v=1))
        got = await reader.store(APP).get("a", consistency="strong")
        assert got is not None
        assert got.props == {"v": 1}
        again = await reader.store(APP).get("a", consistency="eventual", min_position=pos)
        assert again is not None


@asynccontextmanager
async def _dead_mid_write(
    bootstrap: str, prefix: str, tmp: Path, transactional_id: str | None = None
) -> AsyncIterator[int]:
    """``a`` written (props ``{"i": 1}``), then a process holding a record of the same
    partition in an open transaction, SIGKILLed before it could end it (a deploy killed
    mid-write); yields the partition. The transaction is under the partition's evstate
    id unless ``transactional_id`` says otherwise."""
    async with _client(bootstrap, prefix, tmp / "writer") as writer:
        await writer.store(APP).set("a", make_state(APP, "a", i=1))
        partition = writer.engine.partition_of(APP)
        tid = transactional_id or lane_id(writer.settings, partition)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "writer_mid_transaction.py"),
        bootstrap,
        tid,
        f"{prefix}.state",
        str(partition),
        "120",  # the broker would abort it only after two minutes
        stdout=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"open"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    yield partition


async def test_a_fresh_reader_is_not_held_by_a_writer_that_died_mid_write(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Readers wait for every record acknowledged before they looked, open transactions
    included: a dead writer's transaction would hold every new reader of its partition
    until the broker's transaction timeout. The waiting reader aborts it instead."""
    async with _dead_mid_write(bootstrap_servers, topic_prefix, tmp_path):
        started = time.monotonic()
        async with _client(bootstrap_servers, topic_prefix, tmp_path / "fresh") as reader:
            got = await reader.store(APP).get("a")
            waited = time.monotonic() - started
            assert got is not None
            assert got.props == {"i": 1}
            assert waited < 8, waited  # a few seconds' grace, not the 120 s timeout
            assert await reader.store(APP).get("half-written", consistency="strong") is None
        # The writers go on: the next write is decided and read back.
        async with _client(bootstrap_servers, topic_prefix, tmp_path / "writer") as writer:
            await writer.store(APP).set("a", make_state(APP, "a", i=2))
            again = await writer.store(APP).get("a")
            assert again is not None
            assert again.props == {"i": 2}


async def test_a_restarted_server_gets_ready_behind_a_writer_that_died_mid_write(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """No reader waits, yet the view must reach its start marks (what ``evstate serve``
    answers ``HEAD /`` with): the applier aborts the dead writer's transaction itself."""
    async with _dead_mid_write(bootstrap_servers, topic_prefix, tmp_path):
        started = time.monotonic()
        async with _client(bootstrap_servers, topic_prefix, tmp_path / "server") as server:
            await server.start()
            applier = server.engine.applier
            assert applier is not None
            while applier.behind():
                assert time.monotonic() - started < 8, applier.behind()
                await asyncio.sleep(0.1)
            got = await server.store(APP).get("a", consistency="eventual")
            assert got is not None
            assert got.props == {"i": 1}


async def test_a_reader_held_by_a_foreign_transaction_is_told_why(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """An open transaction under an id that is not evstate's cannot be aborted by
    registering evstate's: the wait runs out, and says what holds the partition."""
    foreign = f"{topic_prefix}-not-evstate"
    async with _dead_mid_write(bootstrap_servers, topic_prefix, tmp_path, foreign) as partition:
        quick = {"read_timeout": 3.0}
        async with _client(bootstrap_servers, topic_prefix, tmp_path / "fresh", **quick) as r:
            with pytest.raises(ConsistencyTimeout) as info:
                await r.store(APP).get("a")
    err = info.value
    assert err.partition == partition
    # The view sits right before the open transaction's first record, and says so.
    assert err.held_at is not None
    assert err.held_at == err.reached + 1
    assert f"a transaction left open at offset {err.held_at} holds the partition" in str(err)
