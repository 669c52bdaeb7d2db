"""The npm client (``clients/alchemy``) and the example Alchemy app against a running
``evstate serve``, with the real ``alchemy@0.94.0`` from npm.

The project the scripts run in has ``node_modules/alchemy`` (a link to the cached
install) and ``node_modules/@evstate/alchemy`` (a copy of ``clients/alchemy``, as npm
installs it), so the client's ``import "alchemy"`` is the app's own Alchemy.
Needs Node.js and npm.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evstate import EvstateClient, Scope, Secret, Settings
from evstate.model import ChangeEvent
from tests._alchemy import client_project
from tests._util import free_port_block, serve_process, subprocess_env

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
    assert "within 300ms" in got["timeout"]["message"]


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
