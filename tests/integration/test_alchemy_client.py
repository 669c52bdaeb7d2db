"""The npm client (``clients/alchemy``) and Alchemy apps against a running ``evstate serve``,
with the real ``alchemy@0.94.0`` from npm: the example app, every method, errors, retries
that write once (idempotency keys), and the stage's lock (``lock: true``, ``evstate run
--lock``) with two apps deploying one stage at once.

The project the scripts run in has ``node_modules/alchemy`` (a link to the cached
install) and ``node_modules/@evstate/alchemy`` (a copy of ``clients/alchemy``, as npm
installs it), so the client's ``import "alchemy"`` is the app's own Alchemy.
Needs Node.js and npm.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from evstate import EvstateClient, Scope, Secret, Settings
from evstate.model import ChangeEvent
from tests._alchemy import client_project
from tests._util import committed_records, free_port_block, serve_process, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "node-token"
PASSWORD = "example pässword ☃"
API_KEY = "sk-live-0123456789"
APP = "evstate-example"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Node project holding the example app, the test script and both packages."""
    project = client_project(tmp_path_factory.mktemp("alchemy-project"))
    for name in ("alchemy.run.mjs", "package.json"):
        shutil.copy(ROOT / "examples" / "alchemy-app" / name, project / name)
    return project


@dataclass
class Server:
    url: str
    settings: Settings


@pytest.fixture
async def server(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Server]:
    """``evstate serve`` as a process, on a free port, with this test's topics."""
    settings = Settings(
        bootstrap_servers=bootstrap_servers,
        view_dir=str(tmp_path / "serve-view"),
        topic_prefix=topic_prefix,
    )
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=settings.view_dir
    )
    async with serve_process(env, token=TOKEN) as url:
        yield Server(url, settings)


async def node(project: Path, *args: str, stdin: Any = None, env: dict[str, str]) -> Any:
    """Run ``node *args`` in ``project``; return stdout parsed as JSON (or its text)."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        *args,
        cwd=project,
        env=subprocess_env(ALCHEMY_TELEMETRY_DISABLED="1", DO_NOT_TRACK="1", **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = None if stdin is None else json.dumps(stdin).encode()
    out, err = await asyncio.wait_for(proc.communicate(data), 180)
    if proc.returncode != 0:
        raise RuntimeError(f"node {' '.join(args)} failed ({proc.returncode}):\n{err.decode()}")
    text = out.decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


@pytest.fixture
async def reader(server: Server, tmp_path: Path) -> AsyncIterator[EvstateClient]:
    """A Python client of its own (own view), on the server's topics."""
    async with EvstateClient(
        bootstrap_servers=server.settings.bootstrap_servers,
        view_dir=str(tmp_path / "reader-view"),
        topic_prefix=server.settings.topic_prefix,
        password=PASSWORD,
    ) as client:
        yield client


def statuses(events: list[ChangeEvent]) -> list[str]:
    """The lifecycle an event list shows: each status once per run, DELETE as "DELETE"."""
    seen: list[str] = []
    for event in events:
        step = "DELETE" if event.op == "DELETE" else str((event.state or {}).get("status"))
        if not seen or seen[-1] != step:
            seen.append(step)
    return seen


async def test_example_app_deploy_update_destroy(
    project: Path, server: Server, reader: EvstateClient
) -> None:
    stage = f"t{uuid.uuid4().hex[:8]}"
    out = project / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = {
        "EVSTATE_URL": server.url,
        "EVSTATE_TOKEN": TOKEN,
        "ALCHEMY_PASSWORD": PASSWORD,
        "API_KEY": API_KEY,
    }
    root = Scope(APP, stage, password=PASSWORD)
    docs = root.child("docs")

    # 1. deploy
    await node(project, "alchemy.run.mjs", "--stage", stage, env=env)
    assert (out / "index.html").read_text() == "<h1>hello, world</h1>\n"
    assert json.loads((out / "config.json").read_text()) == {"greeting": "hello"}
    assert (out / "docs" / "start.md").read_text().startswith("# hello")
    store = reader.store(root)
    assert await store.list(consistency="strong") == ["config", "docs", "index.html"]
    assert await reader.store(docs).list(consistency="strong") == ["guides/start"]
    config = await store.get("config")
    assert config is not None
    assert config.status == "created"
    assert config.props is not None
    assert config.props["apiKey"] == Secret(API_KEY)  # Alchemy's encryption, our decryption
    tree = await store.get_tree("config")
    assert tree is not None
    assert set(tree["props"]["apiKey"]["@secret"]) >= {"ciphertext", "iv", "salt", "tag"}
    assert API_KEY not in json.dumps(tree)

    # 2. change a prop
    await node(project, "alchemy.run.mjs", "--stage", stage, env={**env, "GREETING": "hi"})
    assert (out / "index.html").read_text() == "<h1>hi, world</h1>\n"
    index = await store.get("index.html", consistency="strong")
    assert index is not None
    assert index.status == "updated"
    assert index.props is not None
    assert index.props["content"] == "<h1>hi, world</h1>\n"

    # 3. destroy
    await node(project, "alchemy.run.mjs", "--stage", stage, "--destroy", env=env)
    assert not (out / "index.html").exists()
    assert not (out / "config.json").exists()
    assert not (out / "docs" / "start.md").exists()
    assert await store.list(consistency="strong") == []
    assert await reader.store(docs).list(consistency="strong") == []

    # The history holds the whole lifecycle, deletes included.
    lifecycle = ["creating", "created", "updating", "updated", "DELETE"]
    for scope, key in ((root, "index.html"), (root, "config"), (docs, "guides/start")):
        events = [e async for e in reader.history(scope, key)]
        assert statuses(events) == lifecycle, (key, statuses(events))
    scope_events = [e async for e in reader.history(root, "docs")]
    assert scope_events[-1].op == "DELETE"  # the nested scope's own entry, on deinit


async def test_client_methods_and_nested_scopes(
    project: Path, server: Server, reader: EvstateClient
) -> None:
    chain = ["js-app", f"s{uuid.uuid4().hex[:8]}"]
    request = {"url": server.url, "token": TOKEN, "password": PASSWORD, "chain": chain}
    got = await node(project, "serve_client.mjs", stdin={**request, "op": "methods"}, env={})
    assert got["list"] == ["bucket/main", "other"]
    assert got["count"] == 2
    assert got["get"]["props"] == {
        "name": "main",
        "apiKey": {"$secret": "js-secret ☃"},
        "at": {"$date": "2024-01-02T03:04:05.678Z"},
    }
    assert got["scopeAttached"] is True
    assert got["missing"] is True
    assert got["batch"] == ["bucket/main"]
    assert got["emptyBatch"] == {}
    assert got["all"] == ["bucket/main", "other"]
    assert got["listScopes"] == ["child"]
    assert got["afterDelete"] == ["bucket/main"]
    assert got["childAfterDeinit"] == []
    assert got["parentAfterChildDeinit"] == ["bucket/main"]
    assert got["tokenHidden"] is True

    # The Python API reads what the JS client wrote, secret included ...
    scope = Scope(*chain, password=PASSWORD)
    state = await reader.store(scope).get("bucket/main", consistency="strong")
    assert state is not None
    assert state.props is not None
    assert state.props["apiKey"] == Secret("js-secret ☃")
    # ... and the JS client reads what the Python API wrote.
    written = state.props | {"apiKey": Secret("from python")}
    state.props = written
    await reader.store(scope).set("bucket/main", state)
    read = await node(project, "serve_client.mjs", stdin={**request, "op": "read"}, env={})
    assert read["all"]["bucket/main"]["props"]["apiKey"] == {"$secret": "from python"}


async def test_client_errors_carry_the_servers_message(project: Path, server: Server) -> None:
    request = {
        "url": server.url,
        "token": TOKEN,
        "password": PASSWORD,
        "chain": ["js-app", "errors"],
        "deadUrl": f"http://127.0.0.1:{free_port_block(1)}/",
        "op": "errors",
    }
    got = await node(project, "serve_client.mjs", stdin=request, env={})
    wrong = got["wrongToken"]
    assert wrong["isStoreError"] is True
    assert (wrong["status"], wrong["method"]) == (401, "list")
    assert "missing or wrong bearer token" in wrong["message"]
    assert got["badKey"]["status"] == 400
    assert "':'" in got["badKey"]["message"]
    assert "missing token" in got["noToken"]["message"]
    assert "cannot reach evstate serve" in got["unreachable"]["message"]
    assert got["unreachable"]["status"] is None
    assert "no answer from" in got["timeout"]["message"]
    assert "within 300ms (2 tries)" in got["timeout"]["message"]


async def test_a_token_with_a_newline_is_refused_at_construction_and_never_echoed(
    project: Path,
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    request = {
        "url": f"http://127.0.0.1:{free_port_block(1)}/",
        "token": token,
        "password": PASSWORD,
        "chain": ["js-app", "tokens"],
        "op": "badTokens",
    }
    got = await node(project, "serve_client.mjs", stdin=request, env={})
    assert got["tokenEchoed"] is False, got
    for name in ("trailing", "inner"):
        refused = got[name]["construct"]
        assert refused is not None, got  # at once, not on a call after five retries
        assert refused["isStoreError"] is True
        assert "invalid token" in refused["message"]
        assert "trailing newline" in refused["message"]


# -- retries write once ---------------------------------------------------------------


@dataclass
class FlakyProxy:
    """What :func:`flaky_proxy` saw: every request body, in order."""

    url: str
    requests: list[dict[str, Any]]

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]


@asynccontextmanager
async def flaky_proxy(upstream: str, fail: set[str], mode: str) -> AsyncIterator[FlakyProxy]:
    """A proxy to ``upstream`` that passes the first request of each method in ``fail`` on,
    then loses its answer: a 503 instead (``mode="503"``), or no answer in time
    (``mode="timeout"``). Yields the proxy's record of what it saw."""
    seen = FlakyProxy(url="", requests=[])

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        call = json.loads(body)
        seen.requests.append(call)
        headers = {"Authorization": request.headers["Authorization"]}
        async with (
            aiohttp.ClientSession() as session,
            session.post(upstream, data=body, headers=headers) as answer,
        ):
            status, text = answer.status, await answer.text()
        if call["method"] in fail:
            fail.discard(call["method"])
            if mode == "timeout":
                await asyncio.sleep(30)  # the client gave up long ago
            lost = {"success": False, "status": 503, "error": "injected: answer lost"}
            return web.json_response(lost, status=503, headers={"Retry-After": "1"})
        return web.Response(status=status, text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["503", "timeout"])
async def test_a_write_retried_after_a_lost_answer_writes_one_event(
    project: Path, server: Server, mode: str
) -> None:
    chain = ["js-app", f"r{uuid.uuid4().hex[:8]}"]
    async with flaky_proxy(server.url, {"set", "delete"}, mode) as proxy:
        request = {
            "url": proxy.url,
            "token": TOKEN,
            "password": PASSWORD,
            "chain": chain,
            "timeoutMs": 2000,
        }
        got = await node(project, "retry_client.mjs", stdin=request, env={})
    sets, deletes = proxy.calls("set"), proxy.calls("delete")
    # set k (lost, retried), delete k (lost, retried), set k, the refused compare-and-set
    assert len(sets) == 4
    assert len(deletes) == 2
    keys = [call["params"][-1]["idempotencyKey"] for call in (*sets, *deletes)]
    assert keys[0] == keys[1]  # a retry carries its call's key
    assert deletes[0]["params"][-1] == deletes[1]["params"][-1]
    assert len({keys[0], keys[2], keys[3], keys[4]}) == 4  # every call has its own
    assert sets[3]["params"][-1]["expectedVersion"] == 0

    records = await committed_records(
        server.settings.bootstrap_servers, server.settings.history_topic
    )
    written = [r for r in records if r.key == f"{'/'.join(chain)}:k".encode()]
    assert len(written) == 3  # SET, DELETE, SET: each once, though two were sent twice
    assert got["version"] == 1  # a set after a delete starts again at 1
    conflict = got["conflict"]
    assert (conflict["status"], conflict["code"]) == (409, "conflict")
    assert (conflict["details"]["expected"], conflict["details"]["actual"]) == (0, 1)


async def test_a_lock_whose_answer_was_lost_is_found_by_its_retry(
    project: Path, server: Server, reader: EvstateClient
) -> None:
    chain = ["js-app", f"x{uuid.uuid4().hex[:8]}"]
    async with flaky_proxy(server.url, {"lock"}, "503") as proxy:
        request = {"url": proxy.url, "token": TOKEN, "password": PASSWORD, "chain": chain}
        hold = {**request, "op": "hold", "ttl": 30, "holdMs": 100}
        got = await node(project, "serve_client.mjs", stdin=hold, env={})
    assert got == {"list": [], "childList": []}
    locks = proxy.calls("lock")
    assert len(locks) == 2  # the first took the lease; its retry was told so (409, ours)
    assert locks[0] == locks[1]
    # Writes went out with the lease's token, and it was released at exit.
    assert [call["context"].get("lockToken") for call in proxy.calls("list")] == [
        proxy.calls("unlock")[0]["params"][0]
    ] * 2
    assert await reader.locks(Scope(*chain)) == []


# -- the stage's lock -----------------------------------------------------------------


@dataclass
class Run:
    pid: int
    returncode: int
    stderr: str


async def start_app(
    project: Path,
    stage: str,
    env: dict[str, str],
    *args: str,
    under: tuple[str, ...] = (),
) -> asyncio.subprocess.Process:
    """Start ``alchemy_locked_app.mjs --stage STAGE ARGS`` (as ``UNDER... node ...``)."""
    argv = [*under, "node", "alchemy_locked_app.mjs", "--stage", stage, *args]
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=project,
        env=subprocess_env(ALCHEMY_TELEMETRY_DISABLED="1", DO_NOT_TRACK="1", NO_COLOR="1", **env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> Run:
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return Run(proc.pid, proc.returncode, err.decode())


def app_env(server: Server, project: Path, name: str, **extra: str) -> dict[str, str]:
    out = project / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    return {
        "EVSTATE_URL": server.url,
        "EVSTATE_TOKEN": TOKEN,
        "ALCHEMY_PASSWORD": PASSWORD,
        "OUT": str(out),
        "GREETING": f"from {name}",
        **extra,
    }


async def contents(reader: EvstateClient, stage: Scope) -> set[str]:
    """Every content the app's two files held in an event of the history."""
    seen = set()
    for scope, key in ((stage, "first"), (stage.child("nested"), "second")):
        async for event in reader.history(scope, key):
            props = (event.state or {}).get("props") or {}
            if "content" in props:  # a "creating" state has no props yet
                seen.add(props["content"])
    return seen


async def test_two_apps_deploying_one_stage_at_once_one_proceeds_the_other_fails_fast(
    project: Path, server: Server, reader: EvstateClient
) -> None:
    stage = f"l{uuid.uuid4().hex[:8]}"
    root = Scope("locked-app", stage)
    pause = {"PAUSE_MS": "8000"}  # the holder holds the lease this long, at least
    procs = {
        name: await start_app(project, stage, app_env(server, project, name, **pause))
        for name in ("a", "b")
    }
    runs = {name: await finish(proc) for name, proc in procs.items()}
    winners = [name for name, run in runs.items() if run.returncode == 0]
    assert len(winners) == 1, runs
    winner, loser = winners[0], "b" if winners[0] == "a" else "a"
    failed = runs[loser]
    assert f"locked-app/{stage} is locked by " in failed.stderr, failed.stderr
    assert f"pid {runs[winner].pid}, command node alchemy_locked_app.mjs" in failed.stderr
    assert "nothing was written" in failed.stderr
    assert "evstate lock break" in failed.stderr
    assert "Traceback" not in failed.stderr

    # The winner's deploy is whole; nothing of the loser reached evstate or the disk.
    assert not (project / f"out-{loser}").exists()
    assert (project / f"out-{winner}" / "second.txt").read_text() == f"from {winner} 2\n"
    assert await contents(reader, root) == {f"from {winner} 1\n", f"from {winner} 2\n"}
    assert await reader.store(root).list(consistency="strong") == ["first", "nested"]
    # The winner released the lease when it finished: the loser deploys now, at once.
    assert await reader.locks(root) == []
    again = await finish(await start_app(project, stage, app_env(server, project, loser)))
    assert again.returncode == 0, again.stderr
    assert f"from {loser} 1\n" in await contents(reader, root)
    # A destroy leaves through process.exit(): the lease is released all the same.
    gone = await finish(
        await start_app(project, stage, app_env(server, project, loser), "--destroy")
    )
    assert gone.returncode == 0, gone.stderr
    assert await reader.locks(root) == []
    assert await reader.store(root).list(consistency="strong") == []


async def test_a_stages_lease_is_shared_renewed_and_released_at_exit(
    project: Path, server: Server, reader: EvstateClient
) -> None:
    chain = ["js-app", f"h{uuid.uuid4().hex[:8]}"]
    root = Scope(*chain)
    request = {"url": server.url, "token": TOKEN, "password": PASSWORD, "chain": chain}
    ttl = 2.0
    holding = asyncio.create_task(
        node(
            project,
            "serve_client.mjs",
            stdin={**request, "op": "hold", "ttl": ttl, "holdMs": 7000},
            env={},
        )
    )
    async with asyncio.timeout(60):
        while not (leases := await reader.locks(root)):
            await asyncio.sleep(0.2)
    first = leases[0]
    await asyncio.sleep(3 * ttl)  # without renewals it would have lapsed twice over
    leases = await reader.locks(root)
    assert [lease.token for lease in leases] == [first.token]  # one lease for both stores
    lease = leases[0]
    assert lease.scope == root.path
    assert lease.info["job"] == "hold-test"
    assert {"holder", "pid", "command", "request"} <= set(lease.info)
    assert lease.expires_at > first.expires_at
    assert (lease.expires_at - datetime.now(UTC)).total_seconds() > 0
    got = await holding  # the script ends with process.exit(0)
    assert got == {"list": [], "childList": []}
    assert await reader.locks(root) == []


async def test_under_evstate_run_lock_the_app_writes_with_its_token(
    project: Path, server: Server, reader: EvstateClient, tmp_path: Path
) -> None:
    stage = f"r{uuid.uuid4().hex[:8]}"
    root = Scope("locked-app", stage)
    run_env = {
        "EVSTATE_BOOTSTRAP_SERVERS": server.settings.bootstrap_servers,
        "EVSTATE_TOPIC_PREFIX": server.settings.topic_prefix,
        "EVSTATE_VIEW_DIR": str(tmp_path / "run-view"),
        "EVSTATE_ACTOR": "ci-runner-7",
        **app_env(server, project, "run", PAUSE_MS="6000"),
    }
    evstate_run = (sys.executable, "-m", "evstate.cli", "run", "--lock", root.path, "--")
    held = await start_app(project, stage, run_env, under=evstate_run)
    assert held.stderr is not None
    # Once its first resource is written the app is mid-deploy, under evstate run's lease.
    async with asyncio.timeout(120):
        while (line := await held.stderr.readline()) and line.strip() != b"locked":
            pass
    # Another deploy of the stage (lock: true) is refused, naming evstate run's holder;
    # one without the option too, at its first write.
    for lock in ("1", "0"):
        other = await finish(
            await start_app(project, stage, app_env(server, project, f"other{lock}", LOCK=lock))
        )
        assert other.returncode != 0
        assert f"{root.path} is locked by ci-runner-7" in other.stderr, other.stderr
        assert not (project / f"out-other{lock}").exists()
    done = await finish(held)
    # The app took no lease of its own (evstate run holds the stage): its writes carried
    # EVSTATE_LOCK_TOKEN, or they would have been refused.
    assert done.returncode == 0, done.stderr
    assert await contents(reader, root) == {"from run 1\n", "from run 2\n"}
    assert await reader.locks(root) == []
