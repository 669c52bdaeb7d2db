"""``evstate serve`` beyond the contract: auth, bad requests, limits, a broker that is down,
stored trees kept as they are (secrets included), consistency, and the CLI process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evstate import EvstateClient, Scope, Secret, Settings
from evstate.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    ConsistencyTimeout,
    EventTooLargeError,
    FencedError,
    InvalidKeyError,
    LockHeldError,
    MalformedEventError,
    NoSuchLeaseError,
    SecretError,
    TopicMismatchError,
    ViewLockedError,
    WriteFailedError,
)
from evstate.serde import serialize_state
from evstate.serve import create_app, details_of, status_of
from evstate.store import KafkaStateStore
from tests._util import (
    free_port_block,
    running_server,
    serve_process,
    spawn_serve,
    subprocess_env,
    wait_ready,
)
from tests.contract import make_state
from tests.integration.test_serve_contract import (
    TOKEN,
    HttpStore,
    InvalidInput,
    ServeError,
    server_settings,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = Scope("web", "prod")


def body(method: str, params: list[Any], chain: list[str] | None = None, **ctx: Any) -> Any:
    return {
        "method": method,
        "params": params,
        "context": {"chain": ["web", "prod"] if chain is None else chain, **ctx},
    }


@pytest.fixture
async def settings(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
    return server_settings(bootstrap_servers, topic_prefix, view_dir)


@pytest.fixture
async def url(settings: Settings) -> AsyncIterator[str]:
    async with running_server(settings, max_body=64 * 1024) as url:
        await wait_ready(url, TOKEN)
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    session: aiohttp.ClientSession, url: str, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    raw = data if isinstance(data, bytes | str) else json.dumps(data)
    async with session.post(url, data=raw, headers=AUTH if headers is None else headers) as r:
        assert r.content_type == "application/json"
        answer = await r.json()
        assert answer["status"] == r.status
        assert answer["success"] is (r.status == 200)
        return r.status, answer, r


# -- auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_missing_or_wrong_token_is_401(
    url: str, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, answer, response = await post(session, url, body("list", []), headers)
    assert status == 401
    assert "bearer token" in answer["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    async with session.head(url, headers=headers) as r:
        assert r.status == 401
    async with session.get(url + "anything", headers=headers) as r:
        assert r.status == 401  # no probing of paths without the token


async def test_head_answers_200_when_ready(url: str, session: aiohttp.ClientSession) -> None:
    async with session.head(url, headers=AUTH) as r:
        assert r.status == 200
        assert r.content_type == "application/json"


def test_a_token_is_required(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="EVSTATE_TOKEN"):
        create_app(settings)
    with pytest.raises(ConfigError, match="max_body"):
        create_app(settings, token="t", max_body=0)


async def test_token_from_settings(
    bootstrap_servers: str, topic_prefix: str, view_dir: Path, session: aiohttp.ClientSession
) -> None:
    settings = Settings(
        bootstrap_servers=bootstrap_servers,
        view_dir=str(view_dir),
        topic_prefix=topic_prefix,
        token="from-settings",
    )
    async with running_server(settings, token=None) as url:
        await wait_ready(url, "from-settings")
        status, _, _ = await post(session, url, body("count", []))
        assert status == 401
        ok = {"Authorization": "Bearer from-settings"}
        assert (await post(session, url, body("count", []), ok))[1]["result"] == 0


# -- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ('{"method": "count", "params": [], "context": {"chain": ["a"]}, "x": NaN}', "not JSON"),
        ("[1, 2]", "JSON object"),
        ("[" * 50_000, "not JSON"),
        (body("nope", []), "unknown method 'nope'"),
        (body("__init__", []), "unknown method"),
        ({"params": []}, "unknown method None"),
        (body("get", []), "'get' takes params [a string]"),
        (body("get", ["a", "b"]), "'get' takes params"),
        (body("get", [1]), "param 0 of 'get' must be a string"),
        (body("getBatch", ["a"]), "must be a list of strings"),
        (body("getBatch", [["a", 2]]), "must be a list of strings"),
        (body("set", ["a", "not a state"]), "must be a state object"),
        (body("set", ["a", {"id": "a"}]), "missing"),
        (body("list", {"a": 1}), "'list' takes params []"),
        ({"method": "list", "params": []}, "context"),
        (body("list", [], chain=[]), "context.chain"),
        (body("list", [], chain=["a:b"]), "invalid scope name"),
        (body("list", [], chain=["ok", 3]), "invalid scope name"),
        (body("list", [], consistency="linearizable"), "context.consistency"),
        (body("list", [], minPosition="x"), "invalid position token"),
        (body("get", ["a:b"]), "':'"),
        (body("get", [""]), "key"),
    ],
)
async def test_bad_requests_are_400(
    url: str, session: aiohttp.ClientSession, data: Any, needle: str
) -> None:
    status, answer, _ = await post(session, url, data)
    assert status == 400
    assert needle in answer["error"]
    assert "Traceback" not in answer["error"]


async def test_body_over_the_limit_is_413(url: str, session: aiohttp.ClientSession) -> None:
    big = body("set", ["a", {"pad": "x" * 70_000}])
    status, answer, _ = await post(session, url, big)
    assert status == 413
    assert "limit is 65536" in answer["error"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        for _ in range(70):
            yield b"x" * 1024

    async with session.post(url, data=chunked(), headers=AUTH) as r:
        assert r.status == 413
        assert (await r.json())["success"] is False


async def test_other_paths_and_verbs_answer_json(url: str, session: aiohttp.ClientSession) -> None:
    html = {**AUTH, "Accept": "text/html"}
    async with session.get(url, headers=html) as r:
        assert (r.status, r.content_type) == (405, "application/json")
        assert "POST" in r.headers["Allow"]
        assert (await r.json())["error"] == "Method Not Allowed"
    async with session.post(url + "state", headers=html, json={}) as r:
        assert (r.status, r.content_type) == (404, "application/json")
        assert await r.json() == {"success": False, "status": 404, "error": "Not Found"}


async def test_unexpected_errors_are_500_without_a_trace(
    url: str, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("internal detail /etc/secret")

    monkeypatch.setattr(KafkaStateStore, "count", boom)
    status, answer, _ = await post(session, url, body("count", []))
    assert status == 500
    assert answer["error"] == "internal error in evstate serve (see its log)"


def test_error_statuses() -> None:
    assert status_of(InvalidKeyError("k")) == 400
    assert status_of(SecretError("s")) == 400
    assert status_of(EventTooLargeError("big", size=2, limit=1)) == 413
    assert status_of(BrokerUnavailableError("down")) == 503
    assert status_of(WriteFailedError("nack")) == 503
    assert status_of(ConsistencyTimeout(partition=0, wanted=2, reached=1, timeout=1)) == 503
    assert status_of(TopicMismatchError("policy")) == 500
    assert status_of(MalformedEventError("bytes")) == 500
    assert status_of(ViewLockedError("locked", path="/v")) == 500
    assert status_of(ConflictError(scope="a/b", key="k", expected=0, actual=1)) == 409
    assert status_of(FencedError("lost", scope="a/b", token=3)) == 409
    assert status_of(NoSuchLeaseError("none", scope="a/b", token=3)) == 409
    held = LockHeldError(
        scope="a/b",
        holder="me",
        info={"pid": 1},
        token=3,
        expires_at=datetime(2030, 1, 2, tzinfo=UTC),
        wanted="a/b/c",
        action="set",
    )
    assert status_of(held) == 409
    assert details_of(held) == {
        "code": "lockHeld",
        "scope": "a/b",
        "holder": "me",
        "info": {"pid": 1},
        "token": 3,
        "expiresAt": 1893542400000,
    }
    assert details_of(WriteFailedError("nack")) == {}


# -- a broker that is down ---------------------------------------------------------------


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_broker_down_is_503_then_served_once_it_is_back(
    bootstrap_servers: str, view_dir: Path, topic_prefix: str, session: aiohttp.ClientSession
) -> None:
    port = free_port_block(1)
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{port}",
        view_dir=str(view_dir),
        topic_prefix=topic_prefix,
        connect_timeout=0.5,
    )
    async with running_server(settings) as url:
        await asyncio.sleep(1.5)  # let the first connection attempts fail
        async with session.head(url, headers=AUTH) as r:
            assert r.status == 503
        status, answer, response = await post(session, url, body("list", []))
        assert status == 503
        assert "evstate serve is not ready" in answer["error"]
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in answer["error"]
        assert response.headers["Retry-After"] == "1"
        assert (await post(session, url, body("list", []), {}))[0] == 401  # auth first

        # The "broker comes back": a TCP forwarder to the real one on the dead port (the
        # broker's metadata then points the client at the real address).
        host, real_port = bootstrap_servers.split(",")[0].rsplit(":", 1)

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, int(real_port))
            await asyncio.gather(_forward(reader, up_writer), _forward(up_reader, writer))

        proxy = await asyncio.start_server(relay, "127.0.0.1", port)
        try:
            await wait_ready(url, TOKEN)
            status, answer, _ = await post(session, url, body("count", []))
            assert (status, answer["result"]) == (200, 0)
        finally:
            proxy.close()


# -- what is stored ---------------------------------------------------------------------


async def test_trees_are_stored_as_sent_and_secrets_stay_encrypted(
    url: str, session: aiohttp.ClientSession, settings: Settings, tmp_path: Path
) -> None:
    password = "app password"
    secret_scope = Scope(*APP.chain, password=password)
    state = make_state(secret_scope, "db", token=Secret("hunter2"), size=3)
    tree = serialize_state(secret_scope, state)  # encrypted here, as Alchemy would
    http = HttpStore(session, url, APP)
    await http.call("set", ["db", tree])
    got = await http.call("get", ["db"])
    assert got == tree
    assert "hunter2" not in json.dumps(got)
    assert (await http.call("getBatch", [["db", "nope"]])) == {"db": tree}
    assert (await http.call("all", [])) == {"db": tree}

    # The Python API, in another client, reads the same state and opens the secret.
    other = Settings(
        bootstrap_servers=settings.bootstrap_servers,
        view_dir=str(tmp_path / "reader-view"),
        topic_prefix=settings.topic_prefix,
    )
    async with EvstateClient(other) as client:
        store = client.store(secret_scope)
        read = await store.get("db", consistency="strong")
        assert read is not None
        assert read.props == {"token": Secret("hunter2"), "size": 3}
        assert await store.get_tree("db") == tree


async def test_a_get_after_a_set_sees_it(url: str, session: aiohttp.ClientSession) -> None:
    async def one(i: int) -> None:
        scope = Scope("ryw", f"s{i}")
        http = HttpStore(session, url, scope)
        for seq in range(1, 4):
            await http.set("k", make_state(scope, "k", seq=seq))
            got = await http.get("k")
            assert got is not None
            assert got.seq == seq

    await asyncio.gather(*(one(i) for i in range(8)))


async def test_consistency_and_min_position(
    url: str, session: aiohttp.ClientSession, settings: Settings, tmp_path: Path
) -> None:
    async with EvstateClient(
        bootstrap_servers=settings.bootstrap_servers,
        view_dir=str(tmp_path / "writer-view"),
        topic_prefix=settings.topic_prefix,
    ) as writer:
        position = await writer.store(APP).set("w", make_state(APP, "w"))
    http = HttpStore(session, url, APP)
    assert await http.call("get", ["w"], minPosition=position.token) is not None
    assert await http.call("count", [], consistency="strong") == 1
    assert await http.call("list", [], consistency="eventual") in ([], ["w"])
    token = await http.set("h", make_state(APP, "h"))
    partition, offset = (int(x) for x in token.split(":"))
    assert partition == position.partition
    assert offset > position.offset


async def test_list_scopes_and_deinit_of_nested_scopes(
    url: str, session: aiohttp.ClientSession
) -> None:
    root = HttpStore(session, url, APP)
    api = HttpStore(session, url, APP.child("api"))
    deep = HttpStore(session, url, APP.child("jobs").child("nightly"))
    await root.set("r", make_state(APP, "r"))
    await api.set("a", make_state(api.scope, "a"))
    await deep.set("d", make_state(deep.scope, "d"))
    assert await root.call("listScopes", [], consistency="strong") == ["api", "jobs"]
    assert await api.call("listScopes", []) == []
    await api.deinit()
    assert await api.list() == []
    assert await root.list() == ["r"]
    assert await root.call("listScopes", []) == ["jobs"]


async def test_write_errors_name_the_problem(url: str, session: aiohttp.ClientSession) -> None:
    http = HttpStore(session, url, APP)
    with pytest.raises(InvalidInput, match="differs"):
        await http.set("a", make_state(APP, "b"))
    bad = serialize_state(APP, make_state(APP, "a"))
    bad["status"] = "exploded"
    with pytest.raises(InvalidInput, match="status"):
        await http.call("set", ["a", bad])
    with pytest.raises(ServeError) as info:
        await HttpStore(session, url, APP, token="wrong").list()
    assert info.value.status == 401


# -- the command ------------------------------------------------------------------------


def _cli_env(settings: Settings) -> dict[str, str]:
    return subprocess_env(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=settings.view_dir,
    )


async def test_cli_serves_until_sigterm(settings: Settings, session: aiohttp.ClientSession) -> None:
    # serve_process stops it with SIGTERM and checks that it exits 0
    async with serve_process(_cli_env(settings), token=TOKEN) as url:
        http = HttpStore(session, url, APP)
        await http.init()
        await http.set("cli", make_state(APP, "cli"))
        assert await http.list() == ["cli"]
        # a second server on the same view dir refuses to start, and says why
        second = await spawn_serve({**_cli_env(settings), "EVSTATE_TOKEN": TOKEN})
        _, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 2
        assert "view" in err.decode().lower()


async def test_cli_refuses_to_start_without_a_token(settings: Settings) -> None:
    proc = await spawn_serve(_cli_env(settings))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "EVSTATE_TOKEN" in err.decode()
    assert out == b""
