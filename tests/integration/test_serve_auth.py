"""``evstate serve --auth``: principals, per-scope grants, the actor the server vouches for,
tokens rotated without a restart, path tricks, against the real broker.

Every refusal (401, 403, 400) is checked to have written nothing: the history and state
topics hold as many records after it as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evstate import Scope, Settings, events
from evstate.principals import hash_token
from evstate.serde import serialize_state
from tests._util import (
    committed_records,
    run_cli,
    running_server,
    spawn_serve,
    subprocess_env,
    wait_ready,
)
from tests.contract import make_state
from tests.integration.test_serve_contract import server_settings

TOKENS = {name: f"tok-{name}-0123456789" for name in ("ci", "reader", "devreader", "ops")}
UNKNOWN = "tok-nobody-0123456789"
DEV = ["app", "dev"]
PROD = ["app", "prod"]
OTHER = ["other", "x"]


def principals_toml(tokens: dict[str, list[str]] | None = None) -> str:
    """The test's principals file; ``tokens`` overrides each principal's token list."""
    tokens = tokens or {}

    def hashes(name: str) -> str:
        return json.dumps([hash_token(t) for t in tokens.get(name, [TOKENS[name]])])

    return f"""
[[principal]]
name = "ci-dev"
tokens_sha256 = {hashes("ci")}
read = ["app"]
write = ["app/dev"]
lock = ["app/dev"]

[[principal]]
name = "reader"
tokens_sha256 = {hashes("reader")}
read = ["app"]

[[principal]]
name = "dev-reader"
tokens_sha256 = {hashes("devreader")}
read = ["app/dev"]

[[principal]]
name = "ops"
tokens_sha256 = {hashes("ops")}
admin = ["*"]
"""


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "principals.toml"
    path.write_text(principals_toml())
    return path


@pytest.fixture
async def settings(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
    return server_settings(bootstrap_servers, topic_prefix, view_dir)


@pytest.fixture
async def url(settings: Settings, auth_file: Path) -> AsyncIterator[str]:
    async with running_server(settings, auth_file=str(auth_file), auth_poll_interval=0.1) as url:
        await wait_ready(url, TOKENS["ci"])
        yield url


class Caller:
    """Posts requests as one token; answers are ``(status, envelope)``."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(
        self, token: str, method: str, params: list[Any], chain: list[str], **context: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {"method": method, "params": params, "context": {"chain": chain, **context}}
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.post(self.url, data=json.dumps(body), headers=headers) as r:
            answer = await r.json()
        assert answer["status"] == r.status
        return r.status, answer


@pytest.fixture
async def caller(url: str) -> AsyncIterator[Caller]:
    async with aiohttp.ClientSession() as session:
        yield Caller(session, url)


def tree(chain: list[str], key: str) -> dict[str, Any]:
    scope = Scope(*chain)
    return serialize_state(scope, make_state(scope, key, n=1))


Count = Callable[[], Awaitable[int]]


@pytest.fixture
async def records(settings: Settings) -> AsyncIterator[Count]:
    """How many offsets the state and history topics hold, asked of one consumer kept
    open for the test (refusals are checked by the hundred)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    tps = [
        TopicPartition(topic, p)
        for topic in (settings.state_topic, settings.history_topic)
        for p in range(settings.partitions)
    ]

    async def count() -> int:
        if consumer.partitions_for_topic(settings.history_topic) is None:
            await consumer._client.force_metadata_update()
        if consumer.partitions_for_topic(settings.history_topic) is None:
            return 0
        return sum((await consumer.end_offsets(tps)).values())

    try:
        yield count
    finally:
        await consumer.stop()


def params_of(method: str, chain: list[str]) -> list[Any]:
    return {
        "get": ["k"],
        "getBatch": [["k"]],
        "version": ["k"],
        "set": ["k2", tree(chain, "k2")] if chain else [],
        "delete": ["k"],
        "renew": [999_999],
        "unlock": [999_999],
        "breakLock": [999_999],
        "lock": [{"ttl": 600}],  # outlives the table: deinit below needs it broken
    }.get(method, [])


READS = ("get", "getBatch", "all", "list", "count", "version", "locks", "listScopes")
WRITES = ("set", "delete", "deinit", "init")
LOCKS = ("lock", "renew", "unlock")
# (principal, scope) -> the methods it may call there; everything else is 403.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("ci", "dev"): {*READS, *WRITES, *LOCKS},
    ("ci", "prod"): set(READS),
    ("ci", "other"): set(),
    ("reader", "dev"): set(READS),
    ("reader", "prod"): set(READS),
    ("reader", "other"): set(),
    ("devreader", "dev"): set(READS),
    ("devreader", "prod"): set(),
    ("devreader", "other"): set(),
    ("ops", "dev"): {"breakLock"},
    ("ops", "prod"): {"breakLock"},
    ("ops", "other"): {"breakLock"},
}
CHAINS = {"dev": DEV, "prod": PROD, "other": OTHER}


async def test_principals_by_methods_by_scopes(
    caller: Caller, settings: Settings, records: Count
) -> None:
    # Something to read, delete and list in every scope, written with the Python API.
    await seed(settings, *CHAINS.values())
    assert await records() >= 2 * 2 * len(CHAINS)  # the count sees the seeds (two topics)
    methods = (*READS, *WRITES, *LOCKS, "breakLock")
    wrong: list[str] = []
    for (who, where), allowed in ALLOWED.items():
        chain = CHAINS[where]
        for method in methods:
            if method in ("deinit",) and method in allowed:
                continue  # it would empty the scope the other rows read; run below
            before = await records() if method not in allowed else None
            status, answer = await caller.post(TOKENS[who], method, params_of(method, chain), chain)
            if method in allowed:
                if status not in (200, 409):  # 409: renew/unlock/breakLock of no lease
                    wrong.append(f"{who} {method} {where}: {status} {answer.get('error')}")
                continue
            if status != 403:
                wrong.append(f"{who} {method} {where}: {status}, wanted 403")
                continue
            permission = answer["permission"]
            assert answer["code"] == "forbidden"
            assert answer["principal"] in answer["error"]
            assert permission in answer["error"]
            assert answer["scope"] == "/".join(chain)
            assert before == await records(), f"{who} {method} {where} wrote"
    assert not wrong, "\n".join(wrong)
    # An unknown token, or none, is 401 for every method, and writes nothing.
    before = await records()
    for method in methods:
        for token in (UNKNOWN, ""):
            status, answer = await caller.post(token, method, params_of(method, DEV), DEV)
            assert status == 401, (method, answer)
            assert UNKNOWN not in json.dumps(answer)
    assert before == await records()
    # deinit, allowed for ci-dev in app/dev only, once ops broke the lease ci-dev took.
    (lease,) = (await caller.post(TOKENS["ci"], "locks", [], DEV))[1]["result"]
    assert (await caller.post(TOKENS["ops"], "breakLock", [lease["token"]], DEV))[0] == 200
    status, answer = await caller.post(TOKENS["ci"], "deinit", [], DEV)
    assert status == 200, answer
    assert (await caller.post(TOKENS["ci"], "list", [], DEV))[1]["result"] == []


async def seed(settings: Settings, *chains: list[str]) -> None:
    """A state ``k`` in each scope, written with the Python API (no principal involved)."""
    from evstate import EvstateClient

    seeding = Settings(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=settings.view_dir + "-seed",
    )
    async with EvstateClient(seeding) as client:
        for chain in chains:
            store = client.store(Scope(*chain))
            await store.init()
            await store.set("k", make_state(Scope(*chain), "k", n=1))


async def test_listings_show_only_what_the_principal_may_read(
    caller: Caller, settings: Settings
) -> None:
    await seed(settings, DEV, PROD, ["app", "staging", "db"], OTHER)
    for who, wanted in (("devreader", ["dev"]), ("reader", ["dev", "prod", "staging"])):
        status, answer = await caller.post(TOKENS[who], "listScopes", [], ["app"])
        assert (status, answer["result"]) == (200, wanted), who
    status, answer = await caller.post(TOKENS["devreader"], "listScopes", [], ["other"])
    assert status == 403
    status, answer = await caller.post(TOKENS["devreader"], "list", [], ["app"])
    assert status == 403
    status, answer = await caller.post(TOKENS["devreader"], "list", [], DEV)
    assert (status, answer["result"]) == (200, ["k"])


async def test_the_actor_is_the_principal_whatever_the_client_claims(
    caller: Caller, settings: Settings, records: Count
) -> None:
    status, answer = await caller.post(
        TOKENS["ci"],
        "set",
        ["web", tree(DEV, "web")],
        DEV,
        actor="mallory",  # not a field of the protocol: ignored
        reason="deploy #42",
        correlationId="run-7f3a",
        onBehalfOf="alice@example.com",
    )
    assert status == 200, answer
    status, answer = await caller.post(TOKENS["ci"], "lock", [{"ttl": 5}], DEV)
    assert status == 200, answer
    assert answer["result"]["holder"] == "ci-dev"
    token = answer["result"]["token"]
    status, _ = await caller.post(TOKENS["ops"], "breakLock", [token], DEV)
    assert status == 200
    status, _ = await caller.post(TOKENS["ci"], "delete", ["web"], DEV, lockToken=None)
    assert status == 200
    found = [
        events.decode(r.value, r.headers)
        for r in await committed_records(settings.bootstrap_servers, settings.history_topic)
        if r.value is not None
    ]
    by_op = {e.op: e for e in found}
    assert set(by_op) == {"SET", "LOCK", "BREAK", "DELETE"}
    assert by_op["SET"].actor == "ci-dev"
    assert by_op["SET"].reason == "deploy #42"
    assert by_op["SET"].correlation_id == "run-7f3a"
    assert by_op["SET"].on_behalf_of == "alice@example.com"
    assert by_op["LOCK"].actor == "ci-dev"
    assert by_op["BREAK"].actor == "ops"
    assert by_op["DELETE"].actor == "ci-dev"
    assert by_op["DELETE"].on_behalf_of is None
    # A bad note is a 400, and writes nothing.
    before = await records()
    for note in ({"reason": ""}, {"onBehalfOf": "a\x1bb"}, {"correlationId": 7}):
        status, _ = await caller.post(TOKENS["ci"], "set", ["w", tree(DEV, "w")], DEV, **note)
        assert status == 400
    assert before == await records()


# Chains that try to leave app/dev, where ci-dev may write: refused by the name rule (400)
# or outside the grant (403); either way nothing is written.
TRICKS: list[tuple[list[str], int]] = [
    (["app", "dev/../prod"], 400),
    (["app/dev", "..", "prod"], 400),
    (["app", "dev", ""], 400),
    (["app//dev"], 400),
    (["/app/dev"], 400),
    (["app/dev/"], 400),
    (["app", "dev", "."], 400),
    (["app", "dev\x00"], 400),
    (["app", "dev:x"], 400),
    (["app", "devx"], 403),
    (["app"], 403),
    (["\u0430pp", "dev"], 403),  # Cyrillic a
    (["\uff41pp", "dev"], 403),  # fullwidth a
    (["app", "de\u0301v"], 403),  # a combining accent
    (["app", "dev\u200b"], 403),  # zero-width space
    (["app\uff0fdev"], 403),  # fullwidth solidus: a name, not a separator
    (["APP", "dev"], 403),
    (["app", "%2e%2e", "prod"], 403),
    (["app", "prod", "..", "dev"], 400),
]


async def test_path_tricks_are_refused_and_write_nothing(
    caller: Caller, settings: Settings, records: Count
) -> None:
    status, _ = await caller.post(TOKENS["ci"], "init", [], DEV)
    assert status == 200
    before = await records()
    for chain, wanted in TRICKS:
        body_tree = tree(DEV, "k")  # the state's own scope does not matter to the check
        for method, params in (("set", ["k", body_tree]), ("delete", ["k"]), ("lock", [])):
            status, answer = await caller.post(TOKENS["ci"], method, params, chain)
            assert status == wanted, (chain, method, answer)
    assert before == await records()
    # The same scope spelled as one name with '/' is the same scope, and allowed.
    status, answer = await caller.post(TOKENS["ci"], "set", ["k", tree(DEV, "k")], ["app/dev"])
    assert status == 200, answer
    # A SET in both topics, and its commit markers (written just after the commit is
    # acknowledged, so they may take a moment to count).
    await _until(lambda: _is(records(), before + 2 + 2))


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)


async def test_tokens_rotate_without_a_restart_and_a_bad_file_keeps_the_rules(
    caller: Caller, auth_file: Path
) -> None:
    old, new = TOKENS["ci"], "tok-ci-rotated-9876543210"

    async def status_of(token: str) -> int:
        return (await caller.post(token, "list", [], DEV))[0]

    assert await status_of(old) == 200
    assert await status_of(new) == 401
    # Requests keep flowing with the old token through both swaps below: none may fail.
    seen: list[int] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            seen.append(await status_of(old))

    flowing = asyncio.create_task(steady())
    _replace(auth_file, principals_toml({"ci": [old, new]}))
    await _until(lambda: _is(status_of(new), 200))
    assert await status_of(old) == 200
    # A broken file is logged and ignored: both still work.
    _replace(auth_file, "[[principal]\nname = ")
    await asyncio.sleep(0.5)
    assert await status_of(old) == 200
    assert await status_of(new) == 200
    stop.set()
    await flowing
    assert len(seen) > 10
    assert set(seen) == {200}
    _replace(auth_file, principals_toml({"ci": [new]}))
    await _until(lambda: _is(status_of(old), 401))
    assert await status_of(new) == 200


def _replace(path: Path, text: str) -> None:
    """Write a new file and move it over ``path``, as editors and config tools do."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite ``path`` keeping its inode, size and mtime (a change no poll can see)."""
    stat = path.stat()
    assert len(text) == stat.st_size
    with path.open("r+") as f:
        f.write(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


async def _is(value: Any, wanted: Any) -> bool:
    return await value == wanted


async def test_sighup_rereads_the_file_of_a_serve_process(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, auth_file: Path
) -> None:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=tmp_path / "v"
    )
    old, new = TOKENS["ci"], "tok-ci-hupped-0123456789"
    proc = await spawn_serve(env, "--auth", str(auth_file))
    assert proc.stdout is not None
    assert proc.stderr is not None
    drain = asyncio.create_task(proc.stderr.read())
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = line.split()[-1] + "/"
        await wait_ready(url, old)
        async with aiohttp.ClientSession() as session:
            caller = Caller(session, url)

            async def status_of(token: str) -> int:
                return (await caller.post(token, "list", [], DEV))[0]

            assert await status_of(old) == 200
            # Same size, inode and mtime: only SIGHUP can tell that the file changed.
            _rewrite_in_place(auth_file, principals_toml({"ci": [new]}))
            await asyncio.sleep(1.5)  # the watcher looked (every second) and saw nothing
            assert await status_of(new) == 401
            proc.send_signal(signal.SIGHUP)
            await _until(lambda: _is(status_of(new), 200))
            assert await status_of(old) == 401
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        log = (await drain).decode()
    assert proc.returncode == 0, log
    assert old not in log
    assert new not in log


def test_auth_hash_and_check(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "evstate.cli", "auth", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**subprocess_env(), "COLUMNS": "200"},
            check=False,
            timeout=60,
        )

    hashed = cli("hash", stdin="s3cret-token\n")
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.strip() == hash_token("s3cret-token")
    assert cli("hash", stdin="").returncode == 2
    path = tmp_path / "p.toml"
    path.write_text(principals_toml())
    checked = cli("check", str(path))
    assert checked.returncode == 0, checked.stderr
    for name in ("ci-dev", "reader", "dev-reader", "ops", "app/dev", "*"):
        assert name in checked.stdout
    path.write_text('[[principal]]\nname = "x"\ntokens_sha256 = ["s3cret-token"]\n')
    bad = cli("check", str(path))
    assert bad.returncode == 2
    assert "64 lowercase hex" in bad.stderr
    assert "s3cret-token" not in bad.stderr + bad.stdout


async def test_the_access_log_records_reads_writes_and_refusals(
    caller: Caller, settings: Settings, url: str
) -> None:
    from evstate.access import read_access

    started = time.time()
    assert (await caller.post(TOKENS["ci"], "set", ["k", tree(DEV, "k")], DEV))[0] == 200
    status, _ = await caller.post(
        TOKENS["ci"], "get", ["k"], DEV, onBehalfOf="alice", correlationId="c-1"
    )
    assert status == 200
    assert (await caller.post(TOKENS["reader"], "set", ["k", tree(PROD, "k")], PROD))[0] == 403
    assert (await caller.post(UNKNOWN, "get", ["k"], DEV))[0] == 401
    async with caller.session.head(url, headers={"Authorization": f"Bearer {TOKENS['ops']}"}):
        pass

    async def logged() -> list[Any]:
        try:
            return [r async for r in read_access(settings)]
        except Exception:  # the topic is made by the first batch
            return []

    wanted = {
        ("ci-dev", "set", "app/dev", "k", 200),
        ("ci-dev", "get", "app/dev", "k", 200),  # reads are in it too
        ("reader", "set", "app/prod", "k", 403),
        (None, "POST /", None, None, 401),  # an unknown caller's body is never read
        ("ops", "HEAD /", None, None, 200),
    }
    found: list[Any] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = await logged()
        if wanted <= {(r.principal, r.method, r.scope, r.key, r.status) for r in found}:
            break
        await asyncio.sleep(0.2)
    assert wanted <= {(r.principal, r.method, r.scope, r.key, r.status) for r in found}
    for r in found:
        assert started * 1000 - 5000 < r.time < time.time() * 1000 + 5000
        assert r.duration_ms >= 0
        assert r.remote == "127.0.0.1"
    (get,) = [r for r in found if r.method == "get" and r.status == 200]
    assert (get.on_behalf_of, get.correlation_id) == ("alice", "c-1")
    # Over HTTP, for admins only: the newest entries on a scope.
    status, answer = await caller.post(TOKENS["ops"], "accessLog", [{"limit": 50}], ["app"])
    assert status == 200, answer
    assert {(e["principal"], e["method"], e["scope"]) for e in answer["result"]} >= {
        ("ci-dev", "set", "app/dev"),
        ("reader", "set", "app/prod"),
    }
    assert all(e["scope"].startswith("app/") for e in answer["result"])
    status, answer = await caller.post(
        TOKENS["ops"], "accessLog", [{"principal": "reader"}], ["app", "prod"]
    )
    assert {e["principal"] for e in answer["result"]} == {"reader"}
    for who in ("ci", "reader"):
        status, answer = await caller.post(TOKENS[who], "accessLog", [], ["app"])
        assert (status, answer["permission"]) == (403, "admin")
    status, _ = await caller.post(TOKENS["ops"], "accessLog", [{"limit": 0}], ["app"])
    assert status == 400
    # The command line: filters by principal and scope; never a token.
    env = subprocess_env(
        bootstrap_servers=settings.bootstrap_servers, topic_prefix=settings.topic_prefix
    )
    shown = await run_cli("access-log", "--principal", "ci-dev", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {(x["method"], x["status"]) for x in lines} >= {("set", 200), ("get", 200)}
    assert {x["principal"] for x in lines} == {"ci-dev"}
    shown = await run_cli("access-log", "--scope", "app/prod", "--since", "-1h", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "reader" in shown.stdout
    assert "ci-dev" not in shown.stdout
    for token in (*TOKENS.values(), UNKNOWN):
        assert token not in shown.stdout


async def test_the_js_client_states_reason_correlation_and_end_user(
    url: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests._alchemy import client_project
    from tests.integration.test_alchemy_client import PASSWORD, node

    project = client_project(tmp_path_factory.mktemp("notes-js"))
    request = {"url": url, "token": TOKENS["ci"], "password": PASSWORD, "chain": DEV}
    got = await node(project, "serve_client.mjs", stdin={**request, "op": "notes"}, env={})
    assert got["ok"] is True
    assert got["badOption"]["isStoreError"] is True
    assert "reason" in got["badOption"]["message"]
    (event,) = [
        events.decode(r.value, r.headers)
        for r in await committed_records(settings.bootstrap_servers, settings.history_topic)
        if r.value is not None and r.key == b"app/dev:noted"
    ]
    assert event.actor == "ci-dev"  # the principal, not the client's EVSTATE_ACTOR or user
    assert event.reason == "deploy #42"
    assert event.correlation_id == "ci-run-7"
    assert event.on_behalf_of == "alice@example.com"


async def test_serve_refuses_a_bad_principals_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[principal]]\nname = "x"\ntokens_sha256 = ["plain-secret-token"]\n')
    env = subprocess_env(EVSTATE_VIEW_DIR=str(tmp_path / "v"))
    for args in (("--auth", str(path)), ("--auth", str(tmp_path / "missing.toml"))):
        done = await run_cli("serve", "--port", "0", *args, env=env)
        assert done.returncode == 2, done.stderr
        assert "principals file" in done.stderr
        assert "plain-secret-token" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
    # Without a token or a file, serve says what it needs.
    done = await run_cli("serve", "--port", "0", env=env)
    assert done.returncode == 2
    assert "EVSTATE_AUTH_FILE" in done.stderr


def _reader_reads_other(path: Path) -> None:
    """The test's file, with the principal ``reader`` reading ``other`` instead of ``app``."""
    head, name, tail = principals_toml().partition('name = "reader"')
    path.write_text(head + name + tail.replace('read = ["app"]', 'read = ["other"]', 1))


async def test_the_console_signs_in_with_the_principals(
    caller: Caller, url: str, auth_file: Path
) -> None:
    # The console is on with a principals file: a principal's token signs in, an unknown
    # one does not, and the API's bearer header is no console session.
    async with caller.session.get(url + "ui/", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"].startswith("/ui/sign-in")
    bearer = {"Authorization": f"Bearer {TOKENS['ops']}"}
    async with caller.session.get(url + "ui/", headers=bearer, allow_redirects=False) as r:
        assert r.status == 303
    async with caller.session.post(
        url + "ui/sign-in", data={"token": UNKNOWN}, allow_redirects=False
    ) as r:
        assert r.status == 401
        assert "Set-Cookie" not in r.headers
    async with caller.session.post(
        url + "ui/sign-in", data={"token": TOKENS["reader"]}, allow_redirects=False
    ) as r:
        assert r.status == 303
        cookie = r.cookies["evstate_console"].value
    assert TOKENS["reader"] not in cookie
    async with aiohttp.ClientSession(cookies={"evstate_console": cookie}) as signed_in:
        async with signed_in.get(url + "ui/scope?path=app/prod") as r:
            assert r.status == 200
            assert "Signed in as <strong>reader</strong>" in await r.text()
        async with signed_in.get(url + "ui/scope?path=other/x") as r:
            assert r.status == 403
            assert "principal &#39;reader&#39; may not read scope &#39;other/x&#39;" in (
                await r.text()
            )
        # A grant changed in the file applies to the signed-in session at once.
        _reader_reads_other(auth_file)

        async def status_of(path: str) -> int:
            async with signed_in.get(url + "ui/scope", params={"path": path}) as r:
                return r.status

        await _until(lambda: _is(status_of("app/prod"), 403))
        assert await status_of("other/x") == 200
