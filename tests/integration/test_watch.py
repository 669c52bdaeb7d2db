"""``watch``: many consumers reacting to every change, against a real broker.

Groups each see every event in per-scope order; a consumer that dies (SIGKILL) or whose
handler raises gets the unhandled event again after restart and loses none; members of
one group share the partitions and together see every event, across a member leaving;
``start`` by time and by position begins where asked; a scope prefix sees nested scopes
and nothing else; poison records are skipped and counted; ``evstate watch`` prints a
change made by another process; ``examples/react_to_changes.py`` keeps its inventory and
posts to a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from evstate import ChangeEvent, EvstateClient, Position, Scope, Secret, State
from evstate.errors import ClosedError, ValidationError
from evstate.watch import WatchedEvent, Watcher
from tests._util import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
PROCS = Path(__file__).parent / "procs"
PASSWORD = "correct horse"
PLAINTEXT = "hunter2"


def _state(scope: Scope, key: str, i: int, **extra: Any) -> State:
    return State(
        status="created" if i == 0 else "updated",
        kind="test::Thing",
        id=key,
        fqn=f"{scope.path}/{key}",
        seq=0,
        data={},
        props={"i": i, **extra},
        output={"url": f"https://{key}.example"},
    )


@pytest.fixture
async def client(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path
) -> AsyncIterator[EvstateClient]:
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=str(view_dir),
        password=PASSWORD,
    ) as c:
        await c.ensure_topics()
        yield c


async def _set(client: EvstateClient, scope: Scope, key: str, i: int) -> None:
    await client.store(scope).set(key, _state(scope, key, i))


async def _collect(watcher: Watcher, n: int, timeout: float = 60) -> list[WatchedEvent]:
    got: list[WatchedEvent] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await anext(watcher))
    return got


async def _nothing_more(watcher: Watcher, wait: float = 2.0) -> None:
    try:
        async with asyncio.timeout(wait):
            extra = await anext(watcher)
    except TimeoutError:
        return
    pytest.fail(f"unexpected event {extra}")


async def _history(client: EvstateClient, scopes: list[Scope]) -> list[ChangeEvent]:
    return [e for s in scopes for e in [e async for e in client.history(s)]]


def _by_scope(events: list[ChangeEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault("/".join(e.scope), []).append(e.event_id)
    return out


# -- groups ---------------------------------------------------------------------------


async def test_three_groups_each_see_every_event_in_scope_order(client: EvstateClient) -> None:
    scopes = [Scope("app", name) for name in ("web", "db", "queue", "cdn")]
    watchers = [client.watch(group=f"g{i}") for i in range(3)]
    await asyncio.gather(*(w.start() for w in watchers))
    try:

        async def write(scope: Scope) -> None:
            for i in range(5):
                for key in ("a", "b", "c"):
                    await _set(client, scope, key, i)

        await asyncio.gather(*(write(s) for s in scopes))
        written = await _history(client, scopes)
        assert len(written) == 60
        results = await asyncio.gather(*(_collect(w, 60) for w in watchers))
        for got in results:
            assert _by_scope(list(got)) == _by_scope(written)  # all of them, in scope order
            assert all(isinstance(e, ChangeEvent) for e in got)
            assert [e.change for e in got if e.scope == ("app", "web")] == [
                e for e in written if e.scope == ("app", "web")
            ]
        await asyncio.gather(*(_nothing_more(w, 1.0) for w in watchers))
    finally:
        await asyncio.gather(*(w.close() for w in watchers))


async def test_two_members_share_partitions_and_together_see_every_event(
    client: EvstateClient,
) -> None:
    scopes = [Scope("app", f"svc{i}") for i in range(24)]
    first, second = client.watch(group="shared"), client.watch(group="shared")
    await first.start()
    await second.start()  # the group rebalances: first gives up half its partitions
    seen: dict[str, int] = {}
    got_by = {"first": 0, "second": 0}

    async def drain(w: Watcher, name: str) -> None:
        async for event in w:
            seen[event.event_id] = seen.get(event.event_id, 0) + 1
            got_by[name] += 1

    async def all_seen(wanted: set[str]) -> None:
        async with asyncio.timeout(60):
            while not wanted <= seen.keys():
                await asyncio.sleep(0.05)

    try:
        assert first.partitions
        assert second.partitions
        assert not first.partitions & second.partitions
        assert first.partitions | second.partitions == set(range(client.settings.partitions))
        tasks = [
            asyncio.create_task(drain(first, "first")),
            asyncio.create_task(drain(second, "second")),
        ]
        for round_ in range(2):
            for s in scopes:
                await _set(client, s, "x", round_)
        await all_seen({e.event_id for e in await _history(client, scopes)})
        assert got_by["first"] > 0
        assert got_by["second"] > 0

        # The second member leaves mid-stream: the first takes over its partitions.
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        await second.close()
        for s in scopes:
            await _set(client, s, "x", 2)
        wanted = {e.event_id for e in await _history(client, scopes)}
        assert len(wanted) == 72
        await all_seen(wanted)
        assert first.partitions == set(range(client.settings.partitions))
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
    finally:
        await first.close()
        await second.close()


async def _run_crashing(
    bootstrap: str, prefix: str, log: Path, crash_at: int, mode: str
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "watcher_crash.py"),
        bootstrap,
        prefix,
        "crashers",
        str(log),
        str(crash_at),
        mode,
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=subprocess_env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _log(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize("mode", ["raise", "kill"])
async def test_a_failed_handler_gets_the_event_again_after_restart(
    client: EvstateClient, bootstrap_servers: str, topic_prefix: str, tmp_path: Path, mode: str
) -> None:
    scopes = [Scope("app", "prod"), Scope("app", "dev"), Scope("app", "prod", "eu")]
    for i in range(8):
        for s in scopes:
            await _set(client, s, f"r{i % 3}", i)
    written = [e.event_id for e in await _history(client, scopes)]
    log = tmp_path / "handled.log"

    code, err = await _run_crashing(bootstrap_servers, topic_prefix, log, 10, mode)
    if mode == "kill":
        assert code == -signal.SIGKILL
    else:
        assert code != 0
        assert "HandlerFailed" in err
    first_run = _log(log)
    crashed = first_run[-1]
    assert crashed[0] == "got"
    assert ("done", crashed[1]) not in first_run

    code, err = await _run_crashing(bootstrap_servers, topic_prefix, log, 0, "none")
    assert code == 0, err
    second_run = _log(log)[len(first_run) :]
    redelivered = [eid for what, eid in second_run if what == "got"]
    assert crashed[1] in redelivered  # the unhandled event came back
    done = {eid for what, eid in _log(log) if what == "done"}
    assert set(written) <= done  # none lost
    if mode == "raise":
        # Leaving the loop committed what was handled, and not the failed event: the
        # restart begins exactly with it.
        handled_before = {eid for what, eid in first_run if what == "done"}
        assert not handled_before & set(redelivered)
        assert len(redelivered) == len(written) - len(handled_before)


# -- where a watch starts ------------------------------------------------------------------


async def test_start_by_time_begins_there(client: EvstateClient) -> None:
    scope = Scope("app", "timed")
    for i in range(4):
        await _set(client, scope, f"old{i}", 0)
    await asyncio.sleep(1.2)
    since = datetime.now(UTC)
    await asyncio.sleep(0.2)
    for i in range(3):
        await _set(client, scope, f"new{i}", 0)
    history = [e async for e in client.history(scope)]
    expected = [e.event_id for e in history if e.key.startswith("new")]
    async with client.watch(scope, start=since) as plain:
        assert [e.event_id for e in await _collect(plain, 3)] == expected
        await _nothing_more(plain, 1.0)
    async with client.watch("app", group="from-time", start=since) as grouped:
        assert [e.event_id for e in await _collect(grouped, 3)] == expected
        await _nothing_more(grouped, 1.0)
    with pytest.raises(ValidationError, match="timezone-aware"):
        client.watch(scope, start=datetime.now())


async def test_start_by_position_begins_there(client: EvstateClient) -> None:
    scope = Scope("app", "positioned")
    for i in range(6):
        await _set(client, scope, "k", i)
    history = [e async for e in client.history(scope)]
    at = history[2].position
    assert at is not None
    async with client.watch(scope, start=at) as w:
        got = await _collect(w, 4)
        assert [e.change for e in got] == history[2:]
        await _nothing_more(w, 1.0)
    async with client.watch(scope, start="earliest") as w:
        assert [e.change for e in await _collect(w, 6)] == history
    # A later event is seen live; "latest" skips the six before it.
    async with client.watch(scope, group="late", start="latest") as w:
        await _set(client, scope, "k", 6)
        (live,) = await _collect(w, 1)
        assert live.version == 7
    elsewhere = Position((at.partition + 1) % client.settings.partitions, 0)
    with pytest.raises(ValidationError, match="partition"):
        async with client.watch(scope, start=elsewhere):
            pass


async def test_a_prefix_sees_its_nested_scopes_and_nothing_else(client: EvstateClient) -> None:
    inside = [Scope("app", "prod"), Scope("app", "prod", "eu"), Scope("app", "prod", "eu", "db")]
    outside = [Scope("app", "prod2"), Scope("app"), Scope("other", "prod"), Scope("app", "pro")]
    for s in inside + outside:
        await _set(client, s, "k", 0)
        await _set(client, s, "k/with/slash", 0)
    async with client.watch("app/prod", start="earliest") as w:
        got = await _collect(w, 6)
        assert {e.scope for e in got} == {s.chain for s in inside}
        await _nothing_more(w)
    async with client.watch(Scope("app", "prod"), start="earliest") as w:
        got = await _collect(w, 2)
        assert {e.scope for e in got} == {("app", "prod")}
        await _nothing_more(w, 1.0)
        assert w.stats.delivered == 2
    async with client.watch(start="earliest") as w:
        assert len(await _collect(w, 14)) == 14
        await _nothing_more(w, 1.0)


async def test_poison_records_are_skipped_and_counted(
    client: EvstateClient, bootstrap_servers: str
) -> None:
    from aiokafka import AIOKafkaProducer

    scope = Scope("app", "poisoned")
    partition = client.partition_of(scope)
    async with client.watch("app") as w:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
        await producer.start()
        try:
            topic = client.settings.history_topic
            await producer.send_and_wait(
                topic, b"garbage", key=b"app/poisoned:x", partition=partition
            )
            await producer.send_and_wait(topic, b"no key", partition=partition)
        finally:
            await producer.stop()
        await _set(client, scope, "fine", 0)
        (event,) = await _collect(w, 1)
        assert event.key == "fine"
        assert w.stats.poison == 2


async def test_watch_refuses_bad_arguments_and_a_closed_client(client: EvstateClient) -> None:
    for bad in ({"start": "yesterday"}, {"group": ""}, {"scope": "app/"}, {"scope": "a:b"}):
        with pytest.raises(ValidationError):
            client.watch(**bad)  # type: ignore[arg-type]
    closed = EvstateClient(bootstrap_servers=client.settings.bootstrap_servers)
    await closed.close()
    with pytest.raises(ClosedError):
        closed.watch()
    w = client.watch()
    await w.close()
    with pytest.raises(ClosedError):
        await w.start()


# -- the command line -------------------------------------------------------------------


def _cli_env(bootstrap_servers: str, topic_prefix: str) -> dict[str, str]:
    return subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, PYTHONIOENCODING="utf-8"
    )


async def _wait_for_line(stream: asyncio.StreamReader, needle: str, timeout: float = 60) -> str:
    async with asyncio.timeout(timeout):
        while line := (await stream.readline()).decode():
            if needle in line:
                return line
    raise AssertionError(f"stream ended before {needle!r}")


async def test_cli_prints_a_change_made_by_another_process(
    client: EvstateClient, bootstrap_servers: str, topic_prefix: str
) -> None:
    env = _cli_env(bootstrap_servers, topic_prefix)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evstate.cli",
            "watch",
            "app",
            *extra,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for extra in (["--json"], ["--group", "cli"])
    ]
    try:
        for proc in procs:
            assert proc.stderr is not None
            await _wait_for_line(proc.stderr, "watching")
        scope = Scope("app", "cli", password=PASSWORD)
        store = client.store(scope)
        state = _state(scope, "api", 0, token=Secret(PLAINTEXT), memory=256)
        await store.set("api", state, reason="deploy")
        assert procs[0].stdout is not None
        assert procs[1].stdout is not None
        line = await _wait_for_line(procs[0].stdout, '"api"')
        shown = json.loads(line)
        assert shown["op"] == "SET"
        assert shown["scope"] == ["app", "cli"]
        assert shown["reason"] == "deploy"
        assert shown["state"]["props"]["token"] == "********"
        readable = await _wait_for_line(procs[1].stdout, "api")
        assert "app/cli" in readable
        assert "SET" in readable
        assert "deploy" in readable
        await store.delete("api")
        assert "DELETE" in await _wait_for_line(procs[1].stdout, "api")
        assert PLAINTEXT not in line + readable
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            assert "Traceback" not in err.decode()


# -- the example ------------------------------------------------------------------------


async def test_example_keeps_an_inventory_and_posts_to_a_webhook(
    client: EvstateClient, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    notices: list[dict[str, Any]] = []
    failures = {"left": 1}  # the first post gets a 503: the example must retry

    async def hook(request: web.Request) -> web.Response:
        if failures["left"]:
            failures["left"] -= 1
            return web.Response(status=503)
        notices.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/hook"
    inventory = tmp_path / "inventory.md"

    async def run_example() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "react_to_changes.py"),
            "--webhook",
            url,
            "--inventory",
            str(inventory),
            "--scope",
            "app",
            "--idle-exit",
            "3",
            env=_cli_env(bootstrap_servers, topic_prefix),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    try:
        prod = Scope("app", "prod", password=PASSWORD)
        for key in ("api", "bucket", "queue"):
            await client.store(prod).set(key, _state(prod, key, 0, token=Secret(PLAINTEXT)))
        await client.store(prod).set("api", _state(prod, "api", 1, memory=512))
        await client.store(prod).delete("queue")
        await _set(client, Scope("ops"), "not-watched", 0)

        out = await run_example()
        assert "handled 5 change(s)" in out
        assert [(n["op"], n["id"]) for n in notices] == [
            ("SET", "api"),
            ("SET", "bucket"),
            ("SET", "queue"),
            ("SET", "api"),
            ("DELETE", "queue"),
        ]
        assert notices[0]["changes"] == ["created"]
        assert "memory" in " ".join(notices[3]["changes"])
        text = inventory.read_text()
        assert "| api |" in text
        assert "| bucket |" in text
        assert "queue" not in text
        assert "not-watched" not in text
        assert PLAINTEXT not in text + json.dumps(notices)

        # A second run of the same group resumes: only the new change is posted.
        await client.store(Scope("app", "dev")).set("db", _state(Scope("app", "dev"), "db", 0))
        out = await run_example()
        assert "handled 1 change(s)" in out
        assert [(n["scope"], n["id"]) for n in notices[5:]] == [("app/dev", "db")]
        assert "## app/dev" in inventory.read_text()
    finally:
        await runner.cleanup()


async def _group_members(bootstrap_servers: str, group: str) -> int:
    """How many members the broker counts in ``group`` now."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
        return sum(len(g[5]) for r in responses for g in r.groups if g[1] == group)
    finally:
        await admin.close()


async def _until_no_member(bootstrap_servers: str, group: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (members := await _group_members(bootstrap_servers, group)) > 0:
        assert asyncio.get_running_loop().time() < deadline, f"{group} still has {members}"
        await asyncio.sleep(0.25)


async def test_closing_the_client_closes_a_watcher_whose_loop_raised(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    scope = Scope("app", "ops")

    def client(name: str) -> EvstateClient:
        return EvstateClient(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            view_dir=str(tmp_path / name),
        )

    async with client("writer") as writer:
        await writer.store(scope).set("a", _state(scope, "a", 0))

    async def crash() -> None:
        async with client("first") as first:
            async for _ in first.watch(scope, group="ops", start="earliest"):
                raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await crash()
    await _until_no_member(bootstrap_servers, "ops")
    # The unhandled event goes to the next member at once, not after a session timeout.
    async with (
        client("second") as second,
        second.watch(scope, group="ops", start="earliest") as changes,
    ):
        [event] = await _collect(changes, 1, timeout=20)
    assert event.key == "a"


async def test_an_abandoned_watcher_leaves_its_group(
    bootstrap_servers: str, client: EvstateClient
) -> None:
    import gc

    scope = Scope("app", "abandon")
    await client.store(scope).set("a", _state(scope, "a", 0))

    async def handle_one() -> None:
        async for _ in client.watch(scope, group="abandon", start="earliest"):
            # A member while it delivers (once the loop is left, the collector may end it
            # at any moment: asking after the return raced it).
            assert await _group_members(bootstrap_servers, "abandon") == 1
            return  # leaves the loop without closing the watcher

    await handle_one()
    gc.collect()
    await _until_no_member(bootstrap_servers, "abandon")
