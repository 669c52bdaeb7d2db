"""A process (or server) started after others wrote reads everything committed before it.

Issue: a fresh view is empty until it catches up, and the default consistency used to wait
only for the process's own writes: a new CI job read ``None`` for a key that existed,
deleted nothing, and numbered versions from an empty view. These tests write 30,000
states first, so the catch-up window is real, then start fresh readers: a subprocess, an
in-process client, and ``evstate serve`` (also restarted over a view that fell behind).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from evstate import EvstateClient, Scope, keys
from evstate.config import Settings
from tests._util import spawn_serve, subprocess_env
from tests.contract import make_state

PROCS = Path(__file__).parent / "procs"
BIG = Scope("app", "big")
STATES = 30_000
PARTITIONS = 12


def _small_scope() -> Scope:
    """A scope in another partition than BIG."""
    big = keys.partition_for(BIG, PARTITIONS)
    for i in range(100):
        scope = Scope("app", f"small{i}")
        if keys.partition_for(scope, PARTITIONS) != big:
            return scope
    raise AssertionError("no scope outside BIG's partition")


SMALL = _small_scope()


async def _fill(bootstrap: str, prefix: str, view_dir: Path) -> None:
    async with EvstateClient(
        bootstrap_servers=bootstrap, topic_prefix=prefix, view_dir=str(view_dir)
    ) as client:
        big, small = client.store(BIG), client.store(SMALL)
        await big.init()
        gate = asyncio.Semaphore(512)

        async def one(i: int) -> None:
            async with gate:
                await big.set(f"k{i}", make_state(BIG, f"k{i}", i=i))

        await asyncio.gather(*(one(i) for i in range(STATES)))
        for i in range(3):
            await small.set(f"s{i}", make_state(SMALL, f"s{i}", i=i))


@pytest.fixture(scope="module")
def filled(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A topic prefix whose state topic holds 30,000 states of BIG and 3 of SMALL."""
    prefix = f"fresh{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(bootstrap_servers, prefix, tmp_path_factory.mktemp("filler")))
    return prefix


def _client(bootstrap: str, prefix: str, view_dir: Path) -> EvstateClient:
    return EvstateClient(bootstrap_servers=bootstrap, topic_prefix=prefix, view_dir=str(view_dir))


async def test_a_fresh_process_reads_deletes_and_writes_on_what_was_committed(
    bootstrap_servers: str, filled: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "fresh_reader.py"),
        bootstrap_servers,
        filled,
        str(tmp_path / "fresh"),
        BIG.path,
        f"k{STATES - 1}",
        "k7",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0
    seen = json.loads(out)
    assert seen == {"found": True, "count": STATES, "listed": STATES, "version": 2}
    # What it deleted is gone, and its update is version 2 (not 1 again), for anyone.
    async with _client(bootstrap_servers, filled, tmp_path / "check") as client:
        store = client.store(BIG)
        assert await store.get(f"k{STATES - 1}", consistency="strong") is None
        assert await store.version("k7") == 2
        versions = [e.version async for e in client.history(BIG, "k7")]
        assert versions == [1, 2]
        # Put back what this test changed, for the other tests of the module.
        await store.set(f"k{STATES - 1}", make_state(BIG, f"k{STATES - 1}", i=STATES - 1))


async def test_a_read_of_one_scope_waits_only_for_its_partition(
    bootstrap_servers: str, filled: str, tmp_path: Path
) -> None:
    async with _client(bootstrap_servers, filled, tmp_path / "fresh") as client:
        applier = client.applier
        assert applier is not None
        got = await client.store(SMALL).all()
        assert sorted(got) == ["s0", "s1", "s2"]
        # BIG's partition was left for later: it is still catching up ...
        assert keys.partition_for(BIG, PARTITIONS) in applier.behind()
        # ... and a read of BIG waits for it, then sees all of it.
        assert await client.store(BIG).count() >= STATES - 1
        assert applier.behind() == {}


TOKEN = "fresh-start-token"


def body(method: str, params: list[object], chain: list[str], **ctx: object) -> object:
    return {"method": method, "params": params, "context": {"chain": chain, **ctx}}


async def _serve(settings: Settings) -> tuple[asyncio.subprocess.Process, str]:
    """``evstate serve`` as a process, returned as soon as it listens (not when ready)."""
    env = subprocess_env(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=settings.view_dir,
        EVSTATE_TOKEN=TOKEN,
    )
    proc = await spawn_serve(env)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, line.split()[-1] + "/"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(session: aiohttp.ClientSession, url: str, payload: object) -> object:
    async with session.post(url, json=payload, headers=AUTH) as r:
        answer = await r.json()
        assert r.status == 200, answer
        return answer["result"]


async def _stop(proc: asyncio.subprocess.Process) -> bytes:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return err


async def test_serve_answers_only_from_a_caught_up_view_also_after_a_restart(
    bootstrap_servers: str, filled: str, tmp_path: Path
) -> None:
    settings = Settings(
        bootstrap_servers=bootstrap_servers, topic_prefix=filled, view_dir=str(tmp_path / "srv")
    )
    chain = list(BIG.chain)
    async with aiohttp.ClientSession() as session:
        proc, url = await _serve(settings)
        try:
            # The very first requests, while the view is still empty, wait for it.
            count, state = await asyncio.gather(
                _post(session, url, body("count", [], chain)),
                _post(session, url, body("get", [f"k{STATES - 1}"], chain)),
            )
            assert count == STATES
            assert isinstance(state, dict)
        finally:
            err = await _stop(proc)
        assert "catching up" in err.decode()

        # HEAD says ready only once every partition is caught up: from then on even an
        # eventual read sees everything.
        fresh = Settings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=filled,
            view_dir=str(tmp_path / "srv2"),
        )
        proc, url = await _serve(fresh)
        try:
            statuses: list[int] = []
            while not statuses or statuses[-1] != 200:
                async with session.head(url, headers=AUTH) as r:
                    statuses.append(r.status)
                assert len(statuses) < 3000, statuses[-5:]
                await asyncio.sleep(0.01)
            eventual = body("count", [], chain, consistency="eventual")
            assert await _post(session, url, eventual) == STATES
            assert set(statuses) <= {200, 503}
        finally:
            await _stop(proc)

        # Others write while the server is down; the restarted server sees it all at once.
        async with _client(bootstrap_servers, filled, tmp_path / "other") as other:
            store = other.store(BIG)
            await store.delete("k3")
            await store.set("new", make_state(BIG, "new"))
        proc, url = await _serve(settings)
        try:
            assert await _post(session, url, body("get", ["k3"], chain)) is None
            assert await _post(session, url, body("get", ["new"], chain)) is not None
            assert await _post(session, url, body("count", [], chain)) == STATES
        finally:
            await _stop(proc)
