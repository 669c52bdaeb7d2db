"""Alchemy v2's REST state routes of ``evstate serve``, called directly (no Node): what
each route answers, grants, secrets at rest, the lease in the URL, hostile input, and
the refusals at start. The real Alchemy v2 runs in ``test_alchemy_v2.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evstate import EvstateClient, Settings
from evstate.errors import ConfigError, ValidationError
from evstate.principals import hash_token
from evstate.secrets import SecretKeys, new_secret_key
from evstate.serve import create_app
from evstate.stacks import OUTPUT_KEY, SEALED, stage_scope
from tests._util import run_cli, running_server, subprocess_env, wait_ready

WRITER = "tok-writer-0123456789"
READER = "tok-reader-0123456789"
PRINCIPALS = f"""
[[principal]]
name = "writer"
tokens_sha256 = ["{hash_token(WRITER)}"]
write = ["~v2.app/dev"]
lock = ["~v2.app"]

[[principal]]
name = "reader"
tokens_sha256 = ["{hash_token(READER)}"]
read = ["~v2.app/dev"]
"""
STAGE = "/state/stacks/app/stages/dev"
RECORD = {
    "status": "created",
    "fqn": "Group/Nested",
    "resourceType": "Alchemy.Random",
    "attr": {"text": {"__redacted__": "plain-s3cret-value"}},
    "future": {"field": [1, 2]},
}


@pytest.fixture
async def settings(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=str(tmp_path / "serve-view"),
    )


@pytest.fixture
async def url(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    auth = tmp_path / "principals.toml"
    auth.write_text(PRINCIPALS)
    keys = SecretKeys.parse(new_secret_key("k1"), "test")
    async with running_server(
        settings, auth_file=str(auth), alchemy_v2=True, secret_keys=keys, access_log=False
    ) as url:
        await wait_ready(url, WRITER)
        yield url.rstrip("/")


class Http:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self, method: str, path: str, body: Any = None, token: str = WRITER, raw: bytes = b""
    ) -> tuple[int, Any]:
        data = raw or (b"" if body is None else json.dumps(body).encode())
        async with self.session.request(
            method,
            self.url + path,
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as r:
            text = await r.read()
            return r.status, json.loads(text) if text else text


@pytest.fixture
async def http(url: str) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, url)


async def test_each_route_answers_as_alchemy_v2_expects(
    http: Http, settings: Settings, tmp_path: Path
) -> None:
    path = STAGE + "/resources/Group%252FNested"
    assert await http.call("GET", path) == (200, None)  # missing: null, never 404
    assert await http.call("GET", STAGE + "/output") == (200, None)
    assert await http.call("PUT", path, RECORD) == (200, RECORD)  # echoed as sent
    assert await http.call("GET", path) == (200, RECORD)  # opened again, unknown fields kept
    assert await http.call("PUT", STAGE + "/output", {"url": "x"}) == (200, {"url": "x"})
    replaced = {**RECORD, "fqn": "Old", "status": "replaced"}
    assert (await http.call("PUT", STAGE + "/resources/Old", replaced))[0] == 200
    assert await http.call("GET", STAGE + "/resources") == (200, ["Group/Nested", "Old"])
    assert await http.call("GET", STAGE + "/replaced-resources") == (200, [replaced])
    assert await http.call("GET", "/state/stacks") == (200, ["app"])
    assert await http.call("GET", "/state/stacks/app/stages") == (200, ["dev"])
    assert await http.call("DELETE", STAGE + "/resources/Old") == (204, b"")
    assert await http.call("DELETE", STAGE + "/resources/Old") == (204, b"")  # a no-op

    async with EvstateClient(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=str(tmp_path / "reader"),
    ) as client:
        scope = stage_scope("app", "dev")
        stored = await client.store(scope).get_tree("Group/Nested", consistency="strong")
        assert stored is not None
        assert SEALED in stored["attr"]["text"]["__redacted__"]
        assert "plain-s3cret-value" not in json.dumps(stored)
        with pytest.raises(ValidationError, match="trees_at"):
            await client.state_at(scope, datetime.now(UTC))
        assert "Group/Nested" in await client.trees_at(scope, datetime.now(UTC), None)
        assert await http.call("DELETE", "/state/stacks/app?stage=dev") == (204, b"")
        assert await client.store(scope).list(consistency="strong") == []
        events = [e async for e in client.history(scope)]
    assert {e.actor for e in events} == {"writer"}
    assert {e.key for e in events if e.op == "DELETE"} == {OUTPUT_KEY, "Group/Nested", "Old"}
    assert await http.call("GET", "/state/stacks") == (200, [])
    async with http.session.get(http.url + "/metrics") as r:  # the same metrics
        scrape = await r.text()
    assert 'evstate_http_requests_total{method="PUT",status="200"}' in scrape
    assert 'evstate_http_requests_total{method="DELETE",status="204"}' in scrape


async def test_grants_and_tokens(http: Http) -> None:
    path = STAGE + "/resources/r"
    record = {"fqn": "r", "status": "created"}
    assert (await http.call("PUT", path, record, token=READER))[0] == 403
    assert (await http.call("PUT", "/state/stacks/app/stages/prod/resources/r", record))[0] == 403
    assert (await http.call("DELETE", "/state/stacks/app"))[0] == 403  # the whole stack
    assert (await http.call("PUT", path, record))[0] == 200
    assert await http.call("GET", path, token=READER) == (200, record)
    assert await http.call("GET", path, token="tok-nobody-0123456789") == (401, b"")
    async with http.session.get(http.url + "/version") as r:
        assert (r.status, await r.json()) == (200, {"version": 5})
    # A v1 chain may not reach into v2's namespace, whatever its grants.
    async with http.session.post(
        http.url + "/",
        json={"method": "get", "params": ["r"], "context": {"chain": ["~v2.app", "dev"]}},
        headers={"Authorization": f"Bearer {WRITER}"},
    ) as r:
        assert r.status == 400
        assert "Alchemy v2" in (await r.json())["error"]


async def test_writes_through_a_lease_url_carry_its_token(
    http: Http, settings: Settings, tmp_path: Path
) -> None:
    record = {"fqn": "r", "status": "creating"}
    async with EvstateClient(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=str(tmp_path / "locker"),
        actor="ci-job-7",
    ) as client:
        scope = stage_scope("app", "dev")
        async with client.lock(scope, ttl=30) as lease:
            status, answer = await http.call("PUT", STAGE + "/resources/r", record)
            assert status == 409
            assert answer["holder"] == "ci-job-7"
            leased = f"/lease/{lease.token}{STAGE}/resources/r"
            assert await http.call("PUT", leased, record) == (200, record)
            assert await http.call("GET", leased) == (200, record)
            assert (await http.call("PUT", f"/lease/{lease.token + 1}{STAGE}/resources/r", record))[
                0
            ] == 409
            assert (await http.call("DELETE", f"/lease/{lease.token}{STAGE}/resources/r"))[0] == 204
        events = [e async for e in client.history(scope, "r")]
    assert [(e.op, e.lock_token) for e in events] == [
        ("SET", lease.token),
        ("DELETE", lease.token),
    ]


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("PUT", STAGE + "/resources/r", b"[1, 2]", 400),  # not an object
        ("PUT", STAGE + "/resources/r", b'{"fqn": "other"}', 400),
        ("PUT", STAGE + "/resources/r", b'{"a": {"__evstate_sealed__": 1}}', 400),
        ("PUT", STAGE + "/resources/r", b"{not json", 400),
        ("PUT", STAGE + "/resources/r", b'{"a": NaN}', 400),
        ("PUT", STAGE + "/resources/r", b'{"a": ' * 5000 + b"1" + b"}" * 5000, 400),
        ("PUT", STAGE + "/resources/%25FF", b'{"a": 1}', 400),  # not UTF-8 once decoded
        ("PUT", "/state/stacks/app/stages/a%3Ab/resources/r", b'{"a": 1}', 400),
        ("PUT", "/state/stacks/app/stages/%2E%2E/resources/r", b'{"a": 1}', 404),
        ("PUT", "/lease/abc" + STAGE + "/resources/r", b'{"a": 1}', 400),
        ("PUT", "/lease/-1" + STAGE + "/resources/r", b'{"a": 1}', 400),
        ("PUT", STAGE + "/output", b'{"x": [{"__evstate_sealed__": 1}]}', 400),
        ("GET", "/state/stacks/app/stages/dev/resources/%2E%2E", b"", 404),
    ],
)
async def test_hostile_input_is_refused_and_writes_nothing(
    http: Http, settings: Settings, tmp_path: Path, method: str, path: str, raw: bytes, status: int
) -> None:
    got, answer = await http.call(method, path, raw=raw)
    assert got == status, answer
    if got != 404:
        assert answer["success"] is False
        assert "Traceback" not in answer["error"]
    async with EvstateClient(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=str(tmp_path / "reader"),
    ) as client:
        await client.catch_up()
        assert client.scopes() == []


def test_v2_without_keys_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="secret keys"):
        create_app(settings, token="t", alchemy_v2=True)
    create_app(settings, token="t", alchemy_v2=True, plaintext_secrets=True)


async def test_serve_refuses_an_exposed_address_without_tls(tmp_path: Path) -> None:
    env = subprocess_env(
        view_dir=tmp_path / "v", EVSTATE_TOKEN="t", EVSTATE_SECRET_KEYS=new_secret_key("k1")
    )
    done = await run_cli("serve", "--host", "0.0.0.0", "--port", "0", env=env, timeout=60)
    assert done.returncode == 2
    assert "needs TLS" in done.stderr
    assert env["EVSTATE_SECRET_KEYS"].split(":")[1] not in done.stderr + done.stdout
    done = await run_cli("serve", "--alchemy-v2", env={**env, "EVSTATE_SECRET_KEYS": ""})
    assert done.returncode == 2
    assert "secret keys" in done.stderr
    bad = subprocess_env(view_dir=tmp_path / "v", EVSTATE_TOKEN="t", EVSTATE_SECRET_KEYS="k1:AAAA")
    done = await run_cli("serve", env=bad)
    assert done.returncode == 2
    assert "32" in done.stderr


async def test_the_console_shows_v2_records_without_their_secrets(http: Http) -> None:
    path = STAGE + "/resources/Group%252FNested"
    assert (await http.call("PUT", path, {**RECORD, "status": "creating"}))[0] == 200
    assert (await http.call("PUT", path, RECORD))[0] == 200
    scope = "~v2.app/dev"
    pages = {
        "": {},  # the scopes
        "scope": {"path": scope},
        "history": {"path": scope},
        "resource": {"scope": scope, "key": "Group/Nested"},
    }
    # The console's cookie is for 127.0.0.1: a jar that keeps cookies of IP addresses.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(
            http.url + "/ui/sign-in", data={"token": READER, "next": "/ui/"}
        ) as r:
            assert r.status == 200
        shown = {}
        for page, params in pages.items():
            async with browser.get(http.url + f"/ui/{page}", params=params) as r:
                shown[page] = await r.text()
                assert r.status == 200, (page, shown[page][:500])
    for page, html in shown.items():
        assert "Sign in</button>" not in html, page
        assert "plain-s3cret-value" not in html, page
        assert SEALED not in html, page
        assert '"ct"' not in html, page
    assert "~v2.app" in shown[""]
    assert "Alchemy.Random" in shown["scope"]
    assert "Group/Nested" in shown["resource"]
    assert "writer" in shown["history"]  # who made the changes
