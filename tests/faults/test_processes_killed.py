"""Writers and views killed with SIGKILL: nothing acknowledged is lost, views come back right."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from evstate import EvstateClient, Scope
from evstate.history import record_event
from tests._guarantees import Guarantee
from tests._util import cli_env, committed_records, run_cli, subprocess_env
from tests.contract import make_state

HERE = Path(__file__).parent
PROCS = HERE.parent / "integration" / "procs"
THIS = "tests/faults/test_processes_killed.py"

WRITER_ACKS = 400  # acknowledgements read before the writer is killed
BULK = 20_000  # events loaded before a rebuild is killed
BULK_KEYS = 200
LOAD_ACKS = 300

WRITER_KILLED = Guarantee(
    test=f"{THIS}::test_writer_killed_right_after_acks_loses_nothing_and_duplicates_nothing",
    fault=f"a writer process SIGKILLed right after {WRITER_ACKS} acknowledgements, with "
    "writes in flight; a new client then opens its view dir",
    asserted=(
        "every acknowledged write is in the history topic exactly once",
        "no event appears twice in the history",
        "after the restart every acknowledged key reads back that write or a later one",
        "`verify` finds the view equal to the state topic",
    ),
)
VIEW_KILLED_IN_REBUILD = Guarantee(
    test=f"{THIS}::test_view_killed_during_rebuild_resumes_and_verifies",
    fault=f"a view SIGKILLed in the middle of rebuilding {BULK:,} events ({BULK_KEYS} keys)",
    asserted=(
        "on restart it resumes from the offsets stored with its data (more than 0), "
        f"applying fewer than {BULK:,} records again",
        f"`verify` then finds the view equal to the state topic ({BULK_KEYS} keys)",
    ),
)
VIEW_KILLED_UNDER_LOAD = Guarantee(
    test=f"{THIS}::test_view_killed_under_write_load_comes_back_consistent",
    fault=f"a writer SIGKILLed after {LOAD_ACKS} acknowledgements while its own view was "
    "applying them",
    asserted=("`evstate verify` on that view dir exits 0: the view matches the topic",),
)
GUARANTEES = (WRITER_KILLED, VIEW_KILLED_IN_REBUILD, VIEW_KILLED_UNDER_LOAD)


def _client(bootstrap: str, prefix: str, view_dir: Path) -> EvstateClient:
    return EvstateClient(bootstrap_servers=bootstrap, view_dir=str(view_dir), topic_prefix=prefix)


async def _start(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, env=subprocess_env()
    )
    assert proc.stdout is not None
    return proc


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 120)).decode().strip()


async def _kill(proc: asyncio.subprocess.Process) -> list[str]:
    proc.send_signal(signal.SIGKILL)
    rest, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return [line for line in rest.decode().splitlines() if line]


async def _bulk_load(bootstrap: str, prefix: str, view_dir: Path, n: int) -> None:
    """``n`` SETs over 100 keys in 8 scopes, written through evstate with many in flight."""
    async with _client(bootstrap, prefix, view_dir) as client:
        scopes = [Scope("bulk", f"s{i}") for i in range(8)]

        async def one(i: int) -> None:
            scope = scopes[i % 8]
            key = f"k{i % 100}"
            await client.store(scope).set(key, make_state(scope, key, seq=i, i=i))

        for start in range(0, n, 250):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 250))))


async def test_writer_killed_right_after_acks_loses_nothing_and_duplicates_nothing(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view = tmp_path / "writer"
    writer = await _start(
        str(PROCS / "writer_flood.py"), bootstrap_servers, topic_prefix, str(view)
    )
    assert await _line(writer) == "ready"
    acked = [await _line(writer) for _ in range(WRITER_ACKS)]
    acked += await _kill(writer)

    async with _client(bootstrap_servers, topic_prefix, view) as client:  # restart
        await client.catch_up()
        history = [
            record_event(r)
            for r in await committed_records(bootstrap_servers, f"{topic_prefix}.history")
        ]
        writes = Counter((e.scope, e.key, e.state["seq"]) for e in history if e.state)
        assert all(n == 1 for n in writes.values()), "an event appears twice in the history"
        for line in acked:
            path, key, seq, _pos = line.split()
            assert writes[(tuple(path.split("/")), key, int(seq))] == 1
            state = await client.store(Scope.parse(path)).get(key)
            assert state is not None
            assert state.seq >= int(seq)  # this write, or a later one of the same key
        report = await client.verify()
        assert report.ok
    print(f"FAULTS writer-killed acknowledged={len(acked)} lost=0 duplicated=0")
    WRITER_KILLED.record(acknowledged=len(acked), lost=0, duplicated=0)


async def test_view_killed_during_rebuild_resumes_and_verifies(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    await _bulk_load(bootstrap_servers, topic_prefix, tmp_path / "loader", BULK)
    view = tmp_path / "view"
    proc = await _start(
        str(HERE / "procs_applier.py"), bootstrap_servers, topic_prefix, str(view), "rebuild"
    )
    assert await _line(proc) == "applying"
    while True:  # kill it mid-replay: some records applied, not all
        _, done, total = (await _line(proc)).split()
        if 0 < int(done) < int(total):
            break
    await _kill(proc)
    async with _client(bootstrap_servers, topic_prefix, view) as client:
        resumed_from = sum(client.view.applied_offsets().values())
        await client.catch_up()
        assert client.applier is not None
        applied_after = client.applier.stats.records_applied
        report = await client.verify()
        assert report.ok, report.differences[:5]
        assert report.keys == BULK_KEYS  # (i % 8, i % 100) takes 200 values
    # It resumed from the offsets stored with the data, not from zero.
    assert resumed_from > 0
    assert applied_after < BULK
    print(
        f"FAULTS view-killed-in-rebuild resumed_at_offsets={resumed_from} "
        f"applied_after_restart={applied_after} of {BULK}"
    )
    VIEW_KILLED_IN_REBUILD.record(
        resumed_at_offsets=resumed_from, applied_after_restart=applied_after, events=BULK
    )


async def test_view_killed_under_write_load_comes_back_consistent(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view = tmp_path / "writer"
    writer = await _start(
        str(PROCS / "writer_flood.py"), bootstrap_servers, topic_prefix, str(view)
    )
    assert await _line(writer) == "ready"
    acked = [await _line(writer) for _ in range(LOAD_ACKS)]
    acked += await _kill(writer)  # its view was applying as it wrote
    proc = await run_cli("verify", env=cli_env(bootstrap_servers, topic_prefix, view))
    assert proc.returncode == 0, proc.stderr
    assert "view matches topic" in proc.stdout
    print(f"FAULTS view-killed-under-load acknowledged={len(acked)} verify=ok")
    VIEW_KILLED_UNDER_LOAD.record(acknowledged=len(acked), verify="ok")
