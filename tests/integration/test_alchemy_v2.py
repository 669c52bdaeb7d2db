"""Alchemy v2 apps (the real ``alchemy@2.0.0-beta.79`` on Node 22, from npm) against
``evstate serve``'s REST state routes, on the real broker.

The app is ``examples/alchemy-v2-app`` (an ``Alchemy.Random`` secret; ``GROUP=1`` adds
``Group/Nested``). The server runs as a process with a principals file and a secret key
file, as an operator would run it. Installs Node 22 and Alchemy v2 once
(:mod:`tests._alchemy_v2`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from evstate import EvstateClient, Scope
from evstate.model import ChangeEvent
from evstate.principals import hash_token
from evstate.secrets import new_secret_key
from evstate.stacks import OUTPUT_KEY, SEALED, stage_scope
from tests._alchemy import client_project
from tests._alchemy_v2 import AlchemyV2, Run
from tests._util import committed_records, run_cli, serve_process, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
STACK = "evstate-v2-example"
DEPLOYER = "tok-deployer-0123456789"
V1_TOKEN = "tok-v1-app-0123456789"
PRINCIPALS = f"""
[[principal]]
name = "deployer"
tokens_sha256 = ["{hash_token(DEPLOYER)}"]
write = ["~v2.{STACK}"]

[[principal]]
name = "v1-app"
tokens_sha256 = ["{hash_token(V1_TOKEN)}"]
write = ["evstate-example"]
lock = ["evstate-example"]
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> AlchemyV2:
    return AlchemyV2.make(tmp_path_factory.mktemp("alchemy-v2") / "app")


@dataclass
class Server:
    url: str
    view_dir: Path
    bootstrap_servers: str
    topic_prefix: str
    log: list[str]

    def cli_env(self, view_dir: Path, **extra: str) -> dict[str, str]:
        return subprocess_env(
            bootstrap_servers=self.bootstrap_servers,
            topic_prefix=self.topic_prefix,
            view_dir=view_dir,
            **extra,
        )


@pytest.fixture
async def server(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Server]:
    """``evstate serve --auth … --secret-key-file …`` as a process (v2 on: keys are set)."""
    auth = tmp_path / "principals.toml"
    auth.write_text(PRINCIPALS)
    keys = tmp_path / "secret-keys"
    keys.write_text(f"# the first key seals\n{new_secret_key('k2')}\n{new_secret_key('k1')}\n")
    view_dir = tmp_path / "serve-view"
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=view_dir
    )
    log: list[str] = []
    args = ("--auth", str(auth), "--secret-key-file", str(keys))
    async with serve_process(env, *args, token=DEPLOYER, log=log) as url:
        yield Server(url.rstrip("/"), view_dir, bootstrap_servers, topic_prefix, log)


def deploy_env(app: AlchemyV2, url: str, token: str = DEPLOYER, **extra: str) -> dict[str, str]:
    return app.env(EVSTATE_STATE_URL=url, EVSTATE_TOKEN=token, **extra)


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\n{run.out}\n{run.err}"
    return run


async def reader(server: Server, tmp_path: Path) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=server.bootstrap_servers,
        view_dir=str(tmp_path / f"reader-{uuid.uuid4().hex[:6]}"),
        topic_prefix=server.topic_prefix,
    )


async def get(url: str, path: str, token: str = DEPLOYER) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.read()


def steps(events: list[ChangeEvent], key: str) -> list[str]:
    """One key's lifecycle in the history: each status once per run, DELETE as such."""
    seen: list[str] = []
    for event in events:
        if event.key != key:
            continue
        step = "DELETE" if event.op == "DELETE" else str((event.state or {}).get("status"))
        if not seen or seen[-1] != step:
            seen.append(step)
    return seen


async def test_deploy_redeploy_update_list_destroy(
    app: AlchemyV2, server: Server, tmp_path: Path
) -> None:
    stage = f"t{uuid.uuid4().hex[:8]}"
    env = deploy_env(app, server.url)
    scope = stage_scope(STACK, stage)

    ok(await app.run(*app.argv("deploy", "--stage", stage, "--yes"), env=env))
    status, body = await get(server.url, f"/state/stacks/{STACK}/stages/{stage}/resources/Secret")
    assert status == 200
    secret = json.loads(body)
    plaintext = secret["attr"]["text"]["__redacted__"]
    assert isinstance(plaintext, str)
    assert len(plaintext) == 64

    async with await reader(server, tmp_path) as client:
        before = await client.store(scope).version("Secret", consistency="strong")
        ok(await app.run(*app.argv("deploy", "--stage", stage, "--yes"), env=env))
        # Nothing changed: the record was not written again.
        assert await client.store(scope).version("Secret", consistency="strong") == before
    ok(await app.run(*app.argv("deploy", "--stage", stage, "--yes"), env={**env, "GROUP": "1"}))
    status, body = await get(
        server.url, f"/state/stacks/{STACK}/stages/{stage}/resources/Group%252FNested"
    )
    assert status == 200
    assert json.loads(body)["fqn"] == "Group/Nested"
    nested_plaintext = json.loads(body)["attr"]["text"]["__redacted__"]
    listed = ok(await app.run(*app.argv("state", "ls", "-r"), env=env))
    assert f"{STACK}/{stage}/Group/Nested" in listed.out
    assert f"{STACK}/{stage}/Secret" in listed.out

    # evstate's own CLI reads the same records: kind is the resourceType, secrets masked.
    cli_env = server.cli_env(tmp_path / "cli", COLUMNS="200")
    shown = await run_cli("ls", "--long", scope.path, env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert "Alchemy.Random" in shown.stdout
    assert "Group/Nested" in shown.stdout
    got = await run_cli("get", scope.path, "Secret", env=cli_env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["attr"]["text"] == "********"
    async with await reader(server, tmp_path) as client:
        last = [e async for e in client.history(scope)][-1].position
    assert last is not None

    ok(await app.run(*app.argv("destroy", "--stage", stage, "--yes"), env=env))

    replayed = await run_cli("replay", scope.path, "--at", last.token, env=cli_env)
    assert replayed.returncode == 0, replayed.stderr
    then = json.loads(replayed.stdout)
    assert sorted(then) == [OUTPUT_KEY, "Group/Nested", "Secret"]
    assert then["Secret"]["status"] == "created"
    assert plaintext not in replayed.stdout
    diffed = await run_cli("diff", scope.path, "--from", last.token, "--to", "now", env=cli_env)
    assert diffed.returncode == 0, diffed.stderr
    assert diffed.stdout.count("removed") == 3
    told = await run_cli("history", scope.path, env=cli_env)
    assert told.returncode == 0, told.stderr
    assert "deployer" in told.stdout
    assert "deleting" in told.stdout

    status, body = await get(server.url, f"/state/stacks/{STACK}/stages/{stage}/resources/Secret")
    assert (status, json.loads(body)) == (200, None)  # missing: null, not 404
    async with await reader(server, tmp_path) as client:
        assert await client.store(scope).list(consistency="strong") == []
        events = [e async for e in client.history(scope)]
    assert {e.actor for e in events} == {"deployer"}
    lifecycle = ["creating", "created", "deleting", "DELETE"]
    assert steps(events, "Secret") == lifecycle
    assert steps(events, "Group/Nested") == lifecycle
    assert [e.op for e in events if e.key == OUTPUT_KEY][-1] == "DELETE"

    # The plaintext of the secrets is nowhere at rest, nor in the server's log.
    for topic in (f"{server.topic_prefix}.state", f"{server.topic_prefix}.history"):
        raw = b"".join(
            (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers)
            for r in await committed_records(server.bootstrap_servers, topic)
        )
        assert SEALED.encode() in raw, topic
        for text in (plaintext, nested_plaintext):
            assert text.encode() not in raw, topic
    for path in server.view_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert plaintext.encode() not in data, path
            assert nested_plaintext.encode() not in data, path
    assert plaintext not in "".join(server.log)

    # The access log has the v2 calls, by principal, on the stage's scope.
    logged = await run_cli(
        "access-log",
        "--principal",
        "deployer",
        "--scope",
        scope.path,
        "--json",
        env=server.cli_env(tmp_path / "access"),
    )
    assert logged.returncode == 0, logged.stderr
    methods = {json.loads(line)["method"] for line in logged.stdout.splitlines()}
    assert {"v2.get", "v2.set", "v2.delete", "v2.setOutput"} <= methods
    assert plaintext not in logged.stdout


async def test_a_bad_token_fails_the_deploy_and_writes_nothing(
    app: AlchemyV2, server: Server, tmp_path: Path
) -> None:
    stage = f"t{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/state/stacks") as r:
            assert (r.status, await r.read()) == (401, b"")
        async with session.get(server.url + "/version") as r:  # needs no token
            assert (r.status, await r.json()) == (200, {"version": 5})
    run = await app.run(
        *app.argv("deploy", "--stage", stage, "--yes"),
        env=deploy_env(app, server.url, "tok-wrong-0123456789"),
    )
    assert run.code != 0
    assert "unauthorized" in (run.out + run.err).lower()
    async with await reader(server, tmp_path) as client:
        assert await client.store(stage_scope(STACK, stage)).list(consistency="strong") == []


async def test_two_deploys_under_evstate_run_lock_one_refused(
    app: AlchemyV2, server: Server, tmp_path: Path
) -> None:
    stage = f"t{uuid.uuid4().hex[:8]}"
    env = deploy_env(app, server.url)
    deploy = " ".join(app.argv("deploy", "--stage", stage, "--yes"))
    locked = ("run", "--lock", f"{STACK}/{stage}", "--state-url", server.url, "--")

    async def first() -> Run:
        # Holds the lease for a while before deploying through the URL it was handed.
        script = f'sleep 6 && echo "$EVSTATE_STATE_URL" >&2 && exec {deploy}'
        cli_env = server.cli_env(tmp_path / "cli-1", EVSTATE_ACTOR="ci-job-7")
        return await app_run(app, cli_env, env, *locked, "sh", "-c", script)

    async def second() -> Run:
        await asyncio.sleep(3)
        cli_env = server.cli_env(tmp_path / "cli-2", EVSTATE_ACTOR="ci-job-8")
        return await app_run(app, cli_env, env, *locked, *app.argv("deploy", "--stage", stage))

    async def unlocked() -> Run:
        await asyncio.sleep(3)
        return await app.run(*app.argv("deploy", "--stage", stage, "--yes"), env=env)

    one, two, three = await asyncio.gather(first(), second(), unlocked())
    ok(one)
    assert f"{server.url}/lease/" in one.err
    assert two.code == 75, two
    assert "ci-job-7" in two.err
    assert "locked" in two.err
    assert three.code != 0  # no lease in its URL: its writes were refused
    assert "HTTP 409" in three.out + three.err
    async with await reader(server, tmp_path) as client:
        scope = stage_scope(STACK, stage)
        events = [e async for e in client.history(scope)]
        assert await client.store(scope).list(consistency="strong") == [OUTPUT_KEY, "Secret"]
    writes = [e for e in events if e.op in ("SET", "DELETE")]
    assert writes
    assert all(e.lock_token is not None for e in writes)
    assert {e.actor for e in writes} == {"deployer"}
    assert [e.op for e in events if e.op in ("LOCK", "UNLOCK")] == ["LOCK", "UNLOCK"]


async def app_run(
    app: AlchemyV2, cli_env: dict[str, str], app_env: dict[str, str], *args: str
) -> Run:
    """``evstate ARGS`` with the app's environment too (the child is the app)."""
    import sys

    env = {**app_env, **{k: v for k, v in cli_env.items() if k.startswith("EVSTATE_")}}
    env["EVSTATE_TOKEN"] = app_env["EVSTATE_TOKEN"]
    return await app.run(sys.executable, "-m", "evstate.cli", *args, env=env)


async def test_v1_and_v2_apps_against_one_server_at_once(
    app: AlchemyV2, server: Server, tmp_path: Path
) -> None:
    stage = f"t{uuid.uuid4().hex[:8]}"
    v1 = client_project(tmp_path / "v1")
    (v1 / "alchemy.run.mjs").write_text(
        (ROOT / "examples" / "alchemy-app" / "alchemy.run.mjs").read_text()
    )
    v1_env = subprocess_env(
        ALCHEMY_TELEMETRY_DISABLED="1",
        DO_NOT_TRACK="1",
        EVSTATE_URL=server.url + "/",
        EVSTATE_TOKEN=V1_TOKEN,
        ALCHEMY_PASSWORD="v1 pässword",
    )

    async def v1_app() -> Run:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "alchemy.run.mjs",
            "--stage",
            stage,
            cwd=v1,
            env=v1_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    env = deploy_env(app, server.url, GROUP="1")
    one, two = await asyncio.gather(
        v1_app(), app.run(*app.argv("deploy", "--stage", stage, "--yes"), env=env)
    )
    ok(one)
    ok(two)
    async with await reader(server, tmp_path) as client:
        v1_keys = await client.store(Scope("evstate-example", stage)).list(consistency="strong")
        v2_keys = await client.store(stage_scope(STACK, stage)).list(consistency="strong")
    assert v1_keys == ["config", "docs", "index.html"]
    assert v2_keys == [OUTPUT_KEY, "Group/Nested", "Secret"]
    # A v1 chain may not reach into the v2 namespace.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/",
            json={"method": "list", "params": [], "context": {"chain": [f"~v2.{STACK}", stage]}},
            headers={"Authorization": f"Bearer {V1_TOKEN}"},
        ) as r,
    ):
        assert r.status == 400
    ok(await app.run(*app.argv("destroy", "--stage", stage, "--yes"), env=env))
    cli = await run_cli("get", f"~v2.{STACK}/{stage}", "Secret", env=server.cli_env(tmp_path / "c"))
    assert cli.returncode == 1  # destroyed
