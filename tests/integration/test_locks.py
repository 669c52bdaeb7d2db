"""Locks, compare-and-set and idempotent retries against the real broker.

Two clients with their own view dirs are two writers as far as Kafka is concerned: each
has its own producers for the shared transactional ids, so they fence each other just as
two processes do. Where a separate process matters (a killed holder, a counter raced by
two processes), the tests start one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from evstate import (
    ConflictError,
    EvstateClient,
    FencedError,
    LockHeldError,
    NoSuchLeaseError,
    Scope,
)
from evstate.errors import ValidationError
from evstate.kafka import produce
from tests._util import committed_records, subprocess_env
from tests.contract import make_state

PROCS = Path(__file__).parent / "procs"
STAGE = Scope("app", "dev")
NESTED = Scope("app", "dev", "db")


@asynccontextmanager
async def clients(
    bootstrap: str, prefix: str, tmp: Path, *actors: str
) -> AsyncIterator[list[EvstateClient]]:
    made = [
        EvstateClient(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            view_dir=str(tmp / f"view-{actor}"),
            actor=actor,
        )
        for actor in actors
    ]
    try:
        for client in made:
            await client.start()
        await made[0].store(STAGE).init()
        yield made
    finally:
        for client in made:
            await client.close()


async def test_a_free_lock_raced_has_exactly_one_winner(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "a", "b", "c") as racers:
        tokens: list[int] = []
        for _ in range(20):
            results = await asyncio.gather(
                *(c.lock(STAGE, ttl=30) for c in racers), return_exceptions=True
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, results
            assert all(isinstance(e, LockHeldError) for e in lost), lost
            assert all(e.token == won[0].token for e in lost if isinstance(e, LockHeldError))
            tokens.append(won[0].token)
            await won[0].release()
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == 20


async def test_a_write_by_a_non_holder_is_refused_everywhere(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "alice", "bob") as (a, b):
        await b.store(NESTED).set("db", make_state(NESTED, "db", i=1))
        before = datetime.now(UTC)
        async with a.lock(STAGE, ttl=30, info={"job": "ci-7"}) as lease:
            assert (lease.scope, lease.holder, lease.info) == ("app/dev", "alice", {"job": "ci-7"})
            with pytest.raises(LockHeldError) as held:
                await b.store(NESTED).set("db", make_state(NESTED, "db", i=2))
            assert (held.value.holder, held.value.token, held.value.scope) == (
                "alice",
                lease.token,
                "app/dev",
            )
            assert "alice" in str(held.value)
            assert "job=ci-7" in str(held.value)
            with pytest.raises(LockHeldError):
                await b.store(STAGE).delete("anything-at-all")
            with pytest.raises(LockHeldError):
                await b.lock(NESTED)
            # The holder writes without naming the token: its client attaches it.
            await a.store(NESTED).set("mine", make_state(NESTED, "mine", i=3))
            listed = await b.locks()
            assert [(x.scope, x.token, x.holder) for x in listed] == [
                ("app/dev", lease.token, "alice")
            ]
        # Every view, a fresh one included, and the history replay agree.
        async with clients(bootstrap_servers, topic_prefix, tmp_path, "carol") as (c,):
            for client in (a, b, c):
                db = await client.store(NESTED).get("db", consistency="strong")
                assert db is not None
                assert db.props["i"] == 1
                assert await client.store(NESTED).get("mine", consistency="strong") is not None
            replayed = await c.state_at(NESTED, datetime.now(UTC))
            assert replayed["db"].props["i"] == 1
            ops = [e.op async for e in c.history(STAGE, since=before)]
            assert ops == ["LOCK", "UNLOCK"]
            assert await c.locks() == []
        # The refused events are in neither topic.
        history = await committed_records(bootstrap_servers, f"{topic_prefix}.history")
        assert sum(1 for r in history if r.key == b"app/dev/db:db") == 1


async def test_a_killed_holders_lease_lapses_after_its_ttl(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "waiter") as (w,):
        env = subprocess_env()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCS / "lock_holder.py"),
            bootstrap_servers,
            topic_prefix,
            str(tmp_path / "holder-view"),
            "app/dev",
            "3",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        token = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["token"]
        try:
            await asyncio.sleep(4)  # past one ttl: the holder renewed it meanwhile
            with pytest.raises(LockHeldError) as held:
                await w.lock(STAGE)
            assert held.value.token == token
            assert held.value.holder == "holder"
            assert held.value.info["pid"] == proc.pid
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        killed = time.monotonic()
        lease = await w.lock(STAGE, ttl=10, wait=20)
        waited = time.monotonic() - killed
        assert lease.token > token
        assert waited < 3 + 2, waited  # at most one ttl after the last renewal
        await lease.release()


async def test_break_then_takeover_fences_the_old_holder(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "old", "admin") as (o, adm):
        lease = await o.lock(STAGE, ttl=60)
        await o.store(STAGE).set("vpc", make_state(STAGE, "vpc", i=1))
        with pytest.raises(NoSuchLeaseError):
            await adm.break_lock(STAGE, lease.token + 1)
        await adm.break_lock(STAGE, lease.token)
        taken = await adm.lock(STAGE, ttl=60)
        assert taken.token > lease.token
        with pytest.raises(FencedError):
            await o.store(STAGE).set("vpc", make_state(STAGE, "vpc", i=2))
        with pytest.raises(FencedError):
            await lease.renew()
        with pytest.raises(FencedError):
            await lease.release()
        vpc = await adm.store(STAGE).get("vpc", consistency="strong")
        assert vpc is not None
        assert vpc.props["i"] == 1
        await adm.store(STAGE).set("vpc", make_state(STAGE, "vpc", i=3))
        await taken.release()
        ops = [(e.op, e.actor) async for e in adm.history(STAGE)]
        assert [op for op in ops if op[0] != "SET"] == [
            ("LOCK", "old"),
            ("BREAK", "admin"),
            ("LOCK", "admin"),
            ("UNLOCK", "admin"),
        ]


async def test_a_write_in_flight_during_a_takeover_is_never_applied(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder's transaction is open (records sent, not committed) while another
    client breaks the lease and takes the lock: Kafka fences the open transaction, and the
    holder's retry is decided after the takeover, so it is refused."""
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "slow", "fast") as (s, f):
        lease = await s.lock(STAGE, ttl=60)
        sent, go = asyncio.Event(), asyncio.Event()
        real = produce.TransactionalProducer._transact

        async def paused(producer: Any, records: Any) -> list[tuple[int, int]]:
            if any(r.key == b"app/dev:vpc" for r in records) and not go.is_set():
                for r in records:  # in the transaction commit() began (or opened ahead)
                    await producer.send(r.topic, r.value, key=r.key, partition=r.partition)
                sent.set()
                await go.wait()
                await producer.commit_transaction()  # fenced meanwhile
                raise AssertionError("a fenced transaction committed")
            return await real(producer, records)

        monkeypatch.setattr(produce.TransactionalProducer, "_transact", staticmethod(paused))
        write = asyncio.create_task(s.store(STAGE).set("vpc", make_state(STAGE, "vpc", i=9)))
        await asyncio.wait_for(sent.wait(), 30)
        await f.break_lock(STAGE, lease.token)
        taken = await f.lock(STAGE, ttl=60)
        go.set()
        with pytest.raises(FencedError):
            await asyncio.wait_for(write, 60)
        for client in (s, f):
            assert await client.store(STAGE).get("vpc", consistency="strong") is None
        await taken.release()
        history = await committed_records(bootstrap_servers, f"{topic_prefix}.history")
        assert not any(r.key == b"app/dev:vpc" for r in history)


async def test_compare_and_set(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "a", "b") as (a, b):
        sa, sb = a.store(STAGE), b.store(STAGE)
        assert await sa.version("k") == 0
        await sa.set("k", make_state(STAGE, "k", i=1), expected_version=0)
        with pytest.raises(ConflictError) as conflict:
            await sb.set("k", make_state(STAGE, "k", i=2), expected_version=0)
        assert (conflict.value.key, conflict.value.expected, conflict.value.actual) == ("k", 0, 1)
        await sb.set("k", make_state(STAGE, "k", i=2), expected_version=1)
        assert await sa.version("k", consistency="strong") == 2
        with pytest.raises(ConflictError):
            await sa.delete("k", expected_version=1)
        await sa.delete("k", expected_version=2)
        assert await sb.version("k", consistency="strong") == 0
        with pytest.raises(ValidationError, match="expected_version"):
            await sa.set("k", make_state(STAGE, "k", i=3), expected_version=-1)


async def test_a_cas_counter_raced_by_two_processes_loses_no_increment(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "reader") as (r,):
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(PROCS / "cas_counter.py"),
                bootstrap_servers,
                topic_prefix,
                str(tmp_path / f"counter-{i}"),
                "app/dev",
                "4",
                "25",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=subprocess_env(),
            )
            for i in range(2)
        ]
        outs = [await asyncio.wait_for(p.communicate(), 300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e.decode()[-3000:] for _, e in outs]
        reports = [json.loads(out) for out, _ in outs]
        assert sum(rep["increments"] for rep in reports) == 200
        counter = await r.store(STAGE).get("counter", consistency="strong")
        assert counter is not None
        assert counter.output["n"] == 200
        assert await r.store(STAGE).version("counter") == 200


async def test_an_idempotent_retry_adds_exactly_one_event(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "a") as (a,):
        first = await a.store(STAGE).set("k", make_state(STAGE, "k", i=1), idempotency_key="r-1")
        again = await a.store(STAGE).set("k", make_state(STAGE, "k", i=1), idempotency_key="r-1")
        assert again == first
        gone = await a.store(STAGE).delete("k", idempotency_key="r-2")
        assert await a.store(STAGE).delete("k", idempotency_key="r-2") == gone
        with pytest.raises(ValidationError, match="idempotency key"):
            await a.store(STAGE).delete("k", idempotency_key="")
    # A retry from a fresh process (a restarted server) is recognised too.
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "b") as (b,):
        retried = await b.store(STAGE).set("k", make_state(STAGE, "k", i=1), idempotency_key="r-1")
        assert retried == first
        assert await b.store(STAGE).get("k") is None  # the delete stands
    history = await committed_records(bootstrap_servers, f"{topic_prefix}.history")
    assert [r.key for r in history if r.key == b"app/dev:k"] == [b"app/dev:k"] * 2


async def test_locks_are_taken_on_a_stage_or_below(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "a") as (a,):
        with pytest.raises(ValidationError, match="one-name scope"):
            await a.lock("app")
        with pytest.raises(ValidationError, match="ttl"):
            await a.lock(STAGE, ttl=0)
        async with a.lock(NESTED, ttl=5) as lease:
            assert lease.scope == "app/dev/db"
            with pytest.raises(LockHeldError):
                await a.lock(STAGE)  # it would cover a held lease
            # The stage itself stays writable; the nested scope is the holder's.
            await a.store(STAGE).set("x", make_state(STAGE, "x", i=1))
        assert await a.locks() == []


async def test_run_with_a_lock_passes_the_token_and_the_exit_status(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "cli-view",
    )
    # The command writes through evstate under the lease: its client attaches the token.
    script = (
        "import asyncio, os, sys\n"
        "from evstate import EvstateClient, Scope\n"
        "from tests.contract import make_state\n"
        "async def main():\n"
        "    async with EvstateClient(view_dir=sys.argv[1]) as c:\n"
        "        s = Scope('app', 'dev', 'db')\n"
        "        await c.store(s).set('k', make_state(s, 'k', i=1))\n"
        "    print(os.environ['EVSTATE_LOCK_TOKEN'], flush=True)\n"
        "    sys.exit(3)\n"
        "asyncio.run(main())\n"
    )
    async with clients(bootstrap_servers, topic_prefix, tmp_path, "other") as (other,):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evstate.cli",
            "run",
            "--lock",
            "app/dev",
            "--ttl",
            "10",
            "--",
            sys.executable,
            "-c",
            script,
            str(tmp_path / "child-view"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=Path(__file__).parents[2],
        )
        out, errors = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 3, errors.decode()
        token = int(out.decode().split()[-1])
        events = [(e.op, e.lock_token) async for e in other.history(Scope("app", "dev", "db"))]
        assert events == [("SET", token)]
        assert await other.locks() == []  # released when the command ended

        async with other.lock(STAGE, ttl=30, info={"job": "deploy-9"}):
            held = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "evstate.cli",
                "run",
                "--lock",
                "app/dev/db",
                "--",
                sys.executable,
                "-c",
                "raise SystemExit('must not run')",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            _, errors = await asyncio.wait_for(held.communicate(), 120)
            assert held.returncode == 75
            assert "other" in errors.decode()
            assert "deploy-9" in errors.decode()
            assert "must not run" not in errors.decode()

        listed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evstate.cli",
            "run",
            "--lock",
            "app",
            "--",
            "true",
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, errors = await asyncio.wait_for(listed.communicate(), 120)
        assert listed.returncode == 2
        assert "one-name scope" in errors.decode()


async def test_lock_list_and_break_from_the_cli(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "cli-view",
        COLUMNS="200",
        EVSTATE_ACTOR="oncall",
    )

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evstate.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, errors = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), errors.decode()

    async with clients(bootstrap_servers, topic_prefix, tmp_path, "ci") as (ci,):
        lease = await ci.lock(NESTED, ttl=60, info={"url": "https://ci.example/1"})
        code, out, _ = await cli("lock", "list")
        assert code == 0
        for text in ("app/dev/db", "ci", str(lease.token), "https://ci.example/1"):
            assert text in out
        code, out, _ = await cli("lock", "list", "app/prod")
        assert code == 0
        assert "app/dev/db" not in out
        code, _, errors = await cli("lock", "break", "app/dev/db", "--token", "999999")
        assert code == 2
        assert "no lease 999999" in errors
        code, _, errors = await cli("lock", "break", "app/dev/db", "--token", str(lease.token))
        assert code == 0, errors
        with pytest.raises(FencedError):
            await ci.store(NESTED).set("x", make_state(NESTED, "x", i=1))
        code, _, errors = await cli("lock", "break", "app/dev/db")
        assert code == 2
        assert "--token" in errors
        breaks = [(e.op, e.actor) async for e in ci.history(NESTED) if e.op == "BREAK"]
        assert breaks == [("BREAK", "oncall")]
