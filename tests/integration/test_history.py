"""The change log: history kept past compaction, state as of any point, diffs, atomicity."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from evstate import EvstateClient, Position, Scope
from evstate.history import record_event
from tests._guarantees import Guarantee
from tests._util import committed_records as _committed
from tests._util import subprocess_env
from tests.contract import make_state

PROCS = Path(__file__).parent / "procs"
KILL_AFTER = 300  # acknowledgements read before the writer is killed
FENCED_WITHIN = 10.0  # seconds; the transaction timeout is 15 s

GUARANTEE = Guarantee(
    test="tests/integration/test_history.py::test_writer_killed_mid_transaction_leaves_topics_in_step",
    fault=f"a writer SIGKILLed with transactions in flight, after {KILL_AFTER} acknowledgements",
    asserted=(
        "a restarted writer (same view dir, so same transactional id) fences the dead one: "
        f"its next write is acknowledged and read back within {FENCED_WITHIN:g} s "
        "(the transaction timeout is 15 s)",
        "the state and history topics hold exactly the same events",
        "every acknowledged write is in the history",
    ),
)
APP = Scope("app", "prod")


def _client(bootstrap: str, prefix: str, view_dir: Path, **more: object) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap, view_dir=str(view_dir), topic_prefix=prefix, **more
    )


async def test_actor_and_reason_come_back(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir, actor="alice@ci") as client:
        store = client.store(APP)
        await store.set("a", make_state(APP, "a"), reason="first deploy", correlation_id="run-1")
        await store.set("a", make_state(APP, "a", size=2), reason="resize")
        await store.delete("a", reason="teardown", correlation_id="run-2")
        got = [e async for e in client.history(APP)]
    assert [(e.op, e.key, e.version) for e in got] == [
        ("SET", "a", 1),
        ("SET", "a", 2),
        ("DELETE", "a", 3),
    ]
    assert {e.actor for e in got} == {"alice@ci"}
    assert [e.reason for e in got] == ["first deploy", "resize", "teardown"]
    assert [e.correlation_id for e in got] == ["run-1", None, "run-2"]
    assert got[1].state is not None
    assert got[1].state["props"] == {"size": 2}


async def test_history_survives_compaction_and_rebuild_reads_only_the_compacted_topic(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    tiny = {
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
        "min.compaction.lag.ms": "0",
        "max.compaction.lag.ms": "100",
    }
    async with _client(
        bootstrap_servers, topic_prefix, view_dir, state_topic_configs=tiny
    ) as client:
        store = client.store(APP)
        await store.init()
        keys = [f"k{i}" for i in range(5)]
        for round_ in range(10):
            for key in keys:
                await store.set(key, make_state(APP, key, round=round_))
            await asyncio.sleep(0.15)  # let segments roll, so older ones can be cleaned
        writes = 50
        state_topic = f"{topic_prefix}.state"
        deadline = time.monotonic() + 120
        ticked = False
        while True:  # keep rolling segments until the cleaner has really run
            left = await _committed(bootstrap_servers, state_topic)
            if len(left) < writes / 2:
                break
            assert time.monotonic() < deadline, f"no compaction: {len(left)} records left"
            await store.set("tick", make_state(APP, "tick"))
            ticked = True
            await asyncio.sleep(1)
        # Old versions are gone from the state topic...
        rounds_left = {
            record_event(r).state["props"]["round"] for r in left if r.key != b"app/prod:tick"
        }  # type: ignore[index]
        assert 0 not in rounds_left
        # ...but the history has every version of every key.
        history = [e async for e in client.history(APP) if e.key != "tick"]
        assert len(history) == writes
        for key in keys:
            versions = [e.state["props"]["round"] for e in history if e.key == key]  # type: ignore[index]
            assert versions == list(range(10))
        read = await client.rebuild()
        # The cleaner may go on between the two reads; it only ever removes records.
        assert read <= len(left) < writes
        assert sorted(await store.list()) == sorted([*keys, *(["tick"] if ticked else [])])
        got = await store.get("k3")
        assert got is not None
        assert got.props == {"round": 9}


async def test_state_at_and_diff(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        await store.set("web", make_state(APP, "web", memory=256))
        await store.set("db", make_state(APP, "db", size=10))
        await store.set("old", make_state(APP, "old"))
        await asyncio.sleep(0.05)
        before_deploy = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await store.set("web", make_state(APP, "web", memory=512))
        deleted = await store.delete("old")
        await store.set("cache", make_state(APP, "cache"))
        await asyncio.sleep(0.05)
        after_deploy = datetime.now(UTC)
        await asyncio.sleep(0.05)  # event times have millisecond precision
        await store.set("db", make_state(APP, "db", size=20))  # after the deploy

        then = await client.state_at(APP, before_deploy)
        assert sorted(then) == ["db", "old", "web"]
        assert then["web"].props == {"memory": 256}
        assert then["web"].output is not None
        assert then["web"].output["Scope"] == APP
        now = await client.state_at(APP, after_deploy)
        assert sorted(now) == ["cache", "db", "web"]
        assert now["web"].props == {"memory": 512}
        assert now["db"].props == {"size": 10}

        # By position: the history position of the DELETE of "old".
        events = [e async for e in client.history(APP, "old")]
        delete_pos = events[-1].position
        assert delete_pos is not None
        assert deleted.partition == delete_pos.partition
        just_before = Position(delete_pos.partition, delete_pos.offset - 1)
        assert "old" in await client.state_at(APP, just_before)
        assert "old" not in await client.state_at(APP, delete_pos)

        diff = await client.diff(APP, before_deploy, after_deploy)
        assert sorted(diff.added) == ["cache"]
        assert sorted(diff.removed) == ["old"]
        assert sorted(diff.changed) == ["web"]
        before, after = diff.changed["web"]
        assert (before["props"], after["props"]) == ({"memory": 256}, {"memory": 512})

        # A point far past every record: each key's last record is taken without decoding
        # the ones before it (records stamped well before the point are surely in).
        later = await client.state_at(APP, datetime.now(UTC) + timedelta(minutes=10))
        assert sorted(later) == ["cache", "db", "web"]
        assert later["db"].props == {"size": 20}
        assert later["web"].props == {"memory": 512}


async def test_history_filters_by_key_and_time(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> None:
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        store = client.store(APP)
        child = client.store(APP.child("api"))
        await store.set("a", make_state(APP, "a"))
        await child.set("a", make_state(APP.child("api"), "a"))
        await asyncio.sleep(0.05)
        mid = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await store.set("b", make_state(APP, "b"))
        await store.set("a", make_state(APP, "a", v=2))
        assert [e.key async for e in client.history(APP)] == ["a", "b", "a"]
        assert [e.version async for e in client.history(APP, "a")] == [1, 2]
        assert [e.key async for e in client.history(APP, since=mid)] == ["b", "a"]
        assert [e.key async for e in client.history(APP, until=mid)] == ["a"]
        assert [e.scope async for e in client.history(APP.child("api"))] == [("app", "prod", "api")]


async def test_writer_killed_mid_transaction_leaves_topics_in_step(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view_dir = tmp_path / "writer"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "writer_flood.py"),
        bootstrap_servers,
        topic_prefix,
        str(view_dir),
        stdout=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
    acked: list[str] = []
    while len(acked) < KILL_AFTER:
        acked.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip())
    proc.send_signal(signal.SIGKILL)  # writes are in flight: some transaction is open
    rest, _ = await proc.communicate()
    acked.extend(line for line in rest.decode().splitlines() if line)
    assert proc.returncode == -signal.SIGKILL

    # A restarted writer (same view dir: same transactional id) fences the dead one, whose
    # open transaction is aborted at once; its next write succeeds and is read back.
    started = time.monotonic()
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        scope = Scope("app", "s0")
        store = client.store(scope)
        await store.set("after", make_state(scope, "after"))
        assert await store.get("after") is not None
        restarted_in = time.monotonic() - started
        assert restarted_in < FENCED_WITHIN  # well under the 15 s transaction timeout

    state = await _committed(bootstrap_servers, f"{topic_prefix}.state")
    history = await _committed(bootstrap_servers, f"{topic_prefix}.history")
    state_ids = {record_event(r).event_id for r in state}
    history_ids = {record_event(r).event_id for r in history}
    assert state_ids == history_ids  # neither topic holds an event the other lacks
    # Every acknowledged write is in the history.
    seen = {
        (".".join(e.scope), e.key, e.state["seq"]) for e in map(record_event, history) if e.state
    }
    for line in acked:
        path, key, seq, _ = line.split()
        assert (path.replace("/", "."), key, int(seq)) in seen
    GUARANTEE.record(
        acknowledged=len(acked),
        events_in_both_topics=len(state_ids),
        restarted_write_s=round(restarted_in, 1),
    )
