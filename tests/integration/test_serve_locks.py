"""``evstate serve``'s locks, compare-and-set and idempotent retries, over HTTP, against the
real broker: ``lock``/``renew``/``unlock``/``locks``, ``context.lockToken`` on writes,
``expectedVersion`` and ``idempotencyKey`` in the options of ``set`` and ``delete``, 409
answers that carry the refusal's data, 400 for bad values."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evstate import Scope, Settings
from evstate.serde import serialize_state
from tests._util import committed_records, running_server, wait_ready
from tests.contract import make_state
from tests.integration.test_serve_contract import TOKEN, server_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STAGE = Scope("web", "prod")
CHAIN = list(STAGE.chain)


@pytest.fixture
async def settings(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
    return server_settings(bootstrap_servers, topic_prefix, view_dir)


@pytest.fixture
async def url(settings: Settings) -> AsyncIterator[str]:
    async with running_server(settings) as url:
        await wait_ready(url, TOKEN)
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Http:
    """Posts requests to one server; answers are ``(status, envelope)``."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(
        self, method: str, params: list[Any], chain: list[str] | None = None, **context: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {"method": method, "params": params, "context": {"chain": chain or CHAIN}}
        body["context"].update(context)
        async with self.session.post(self.url, data=json.dumps(body), headers=AUTH) as r:
            assert r.content_type == "application/json"
            answer = await r.json()
        assert answer["status"] == r.status
        assert answer["success"] is (r.status == 200)
        return r.status, answer

    async def ok(self, method: str, params: list[Any], **context: Any) -> Any:
        status, answer = await self.post(method, params, **context)
        assert status == 200, answer
        return answer["result"]

    async def set(self, key: str, *options: dict[str, Any], **context: Any) -> Any:
        tree = serialize_state(STAGE, make_state(STAGE, key, n=1))
        return await self.post("set", [key, tree, *options], **context)


@pytest.fixture
def http(session: aiohttp.ClientSession, url: str) -> Http:
    return Http(session, url)


async def history_of(settings: Settings, key: str) -> list[bytes]:
    """The history topic's committed records of ``key`` in STAGE (their values)."""
    records = await committed_records(settings.bootstrap_servers, settings.history_topic)
    wanted = f"{STAGE.path}:{key}".encode()
    return [r.value or b"" for r in records if r.key == wanted]


async def test_lock_renew_unlock_and_locks(http: Http) -> None:
    before = time.time() * 1000
    lease = await http.ok("lock", [{"ttl": 20, "info": {"job": "deploy-7", "pid": 42}}])
    assert set(lease) == {"scope", "holder", "info", "acquiredAt", "expiresAt", "token"}
    assert lease["scope"] == "web/prod"
    assert lease["info"] == {"job": "deploy-7", "pid": 42}
    assert isinstance(lease["token"], int)
    assert before - 5000 < lease["acquiredAt"] <= time.time() * 1000 + 5000
    assert abs(lease["expiresAt"] - lease["acquiredAt"] - 20_000) < 1000
    assert await http.ok("locks", []) == [lease]
    assert await http.ok("locks", [], chain=["web", "prod", "api"]) == [lease]  # it covers it

    renewed = await http.ok("renew", [lease["token"], {"ttl": 60}])
    assert renewed["token"] == lease["token"]
    assert renewed["expiresAt"] > lease["expiresAt"] + 30_000
    assert await http.ok("renew", [lease["token"]]) is not None  # ttl defaults to 30 s

    assert await http.ok("unlock", [lease["token"]]) is None
    assert await http.ok("locks", []) == []
    for method, params in (("renew", [lease["token"]]), ("unlock", [lease["token"]])):
        status, answer = await http.post(method, params)
        assert status == 409, answer
        assert answer["code"] == "fenced"
        assert answer["token"] == lease["token"]
        assert answer["scope"] == "web/prod"

    # Released, the stage can be locked again; a lease without options lasts 30 s.
    again = await http.ok("lock", [])
    assert again["token"] > lease["token"]
    assert abs(again["expiresAt"] - again["acquiredAt"] - 30_000) < 1000
    assert again["info"] == {}


async def test_a_non_holders_writes_are_409_naming_the_holder_and_write_nothing(
    http: Http, settings: Settings
) -> None:
    assert (await http.set("k"))[0] == 200  # before the lock
    lease = await http.ok("lock", [{"info": {"holder": "alice@laptop", "pid": 4242}}])
    token = lease["token"]
    written = await history_of(settings, "k")

    status, answer = await http.set("k")
    assert status == 409, answer
    assert answer["code"] == "lockHeld"
    assert answer["holder"] == lease["holder"]
    assert lease["holder"] in answer["error"]
    assert "pid=4242" in answer["error"]
    assert answer["info"] == {"holder": "alice@laptop", "pid": 4242}
    assert answer["token"] == token
    assert answer["expiresAt"] == lease["expiresAt"]
    assert answer["scope"] == "web/prod"

    # Nested scopes are covered; deletes and deinit are refused the same way.
    status, answer = await http.post(
        "set",
        ["n", serialize_state(STAGE.child("api"), make_state(STAGE.child("api"), "n"))],
        chain=[*CHAIN, "api"],
    )
    assert (status, answer["code"]) == (409, "lockHeld")
    assert (await http.post("delete", ["k"]))[1]["code"] == "lockHeld"
    assert (await http.post("deinit", []))[1]["code"] == "lockHeld"
    # A token that is not the lease's is fenced; a second lock is refused.
    status, answer = await http.set("k", lockToken=token + 1000)
    assert (status, answer["code"], answer["token"]) == (409, "fenced", token + 1000)
    status, answer = await http.post("lock", [])
    assert (status, answer["code"], answer["token"]) == (409, "lockHeld", token)

    assert await history_of(settings, "k") == written  # nothing was written
    assert await http.ok("version", ["k"]) == 1
    assert await http.ok("list", []) == ["k"]

    # The holder's writes, with its token, are accepted: set, delete, deinit.
    assert (await http.set("k", lockToken=token))[0] == 200
    assert (await http.set("j", lockToken=token))[0] == 200
    assert await http.ok("version", ["k"]) == 2
    await http.ok("delete", ["j"], lockToken=token)
    await http.ok("deinit", [], lockToken=token)
    assert await http.ok("list", []) == []
    # Reads need no token.
    assert await http.ok("count", []) == 0

    # Once released, anyone writes again; the old token is fenced.
    await http.ok("unlock", [token])
    assert (await http.set("k"))[0] == 200
    assert (await http.set("k", lockToken=token))[1]["code"] == "fenced"


async def test_compare_and_set_over_http(http: Http, settings: Settings) -> None:
    assert await http.ok("version", ["cas"]) == 0
    assert (await http.set("cas", {"expectedVersion": 0}))[0] == 200
    assert await http.ok("version", ["cas"]) == 1
    status, answer = await http.set("cas", {"expectedVersion": 0})
    assert status == 409, answer
    assert answer["code"] == "conflict"
    assert (answer["key"], answer["expected"], answer["actual"]) == ("cas", 0, 1)
    assert answer["scope"] == "web/prod"
    assert "not 0 as expected" in answer["error"]
    assert (await http.set("cas", {"expectedVersion": 1}))[0] == 200

    status, answer = await http.post("delete", ["cas", {"expectedVersion": 1}])
    assert (status, answer["code"], answer["actual"]) == (409, "conflict", 2)
    await http.ok("delete", ["cas", {"expectedVersion": 2}])
    assert await http.ok("version", ["cas"]) == 0
    assert len(await history_of(settings, "cas")) == 3


async def test_an_idempotent_retry_over_http_adds_exactly_one_event(
    http: Http, settings: Settings
) -> None:
    first = await http.set("idem", {"idempotencyKey": "call-1"})
    retry = await http.set("idem", {"idempotencyKey": "call-1"})
    assert first == retry
    assert first[0] == 200
    assert len(await history_of(settings, "idem")) == 1
    assert await http.ok("version", ["idem"]) == 1

    gone = await http.ok("delete", ["idem", {"idempotencyKey": "call-2"}])
    assert await http.ok("delete", ["idem", {"idempotencyKey": "call-2"}]) == gone
    # A retry of the set after the delete answers the set's position and writes nothing.
    assert await http.set("idem", {"idempotencyKey": "call-1"}) == first
    assert len(await history_of(settings, "idem")) == 2
    assert await http.ok("get", ["idem"]) is None
    # Both options together, and with a lock token.
    lease = await http.ok("lock", [])
    both = {"idempotencyKey": "call-3", "expectedVersion": 0}
    done = await http.set("idem", both, lockToken=lease["token"])
    assert await http.set("idem", both, lockToken=lease["token"]) == done
    assert len(await history_of(settings, "idem")) == 3


@pytest.mark.parametrize(
    ("method", "params", "context", "needle"),
    [
        ("set", ["k", "TREE", {"expectedVersion": -1}], {}, "expectedVersion of 'set' must"),
        ("set", ["k", "TREE", {"expectedVersion": "1"}], {}, "expectedVersion of 'set' must"),
        ("set", ["k", "TREE", {"expectedVersion": True}], {}, "expectedVersion of 'set' must"),
        ("delete", ["k", {"expectedVersion": 1.5}], {}, "expectedVersion of 'delete' must"),
        ("set", ["k", "TREE", {"idempotencyKey": 5}], {}, "idempotencyKey of 'set' must"),
        ("set", ["k", "TREE", {"idempotencyKey": ""}], {}, "invalid idempotency key"),
        ("delete", ["k", {"idempotencyKey": "a\nb"}], {}, "invalid idempotency key"),
        ("set", ["k", "TREE", {"expected_version": 1}], {}, "unknown option"),
        ("set", ["k", "TREE", "opts"], {}, "must be an object of options"),
        ("set", ["k", "TREE", {}, {}], {}, "'set' takes params [a string, a state object, "),
        ("get", ["k", {}], {}, "'get' takes params [a string]"),
        ("set", ["k", "TREE"], {"lockToken": "7"}, "context.lockToken must be"),
        ("set", ["k", "TREE"], {"lockToken": -1}, "context.lockToken must be"),
        ("delete", ["k"], {"lockToken": True}, "context.lockToken must be"),
        ("lock", [{"ttl": "30"}], {}, "option ttl of 'lock' must be seconds"),
        ("lock", [{"ttl": 0}], {}, "ttl must be seconds between 0.5 and 86400"),
        ("lock", [{"ttl": 100_000}], {}, "ttl must be seconds between"),
        ("lock", [{"info": ["x"]}], {}, "option info of 'lock' must be an object"),
        ("lock", [{"wait": 5}], {}, "unknown option"),
        ("lock", [], {"chain": ["web"]}, "one-name scope"),
        ("renew", [], {}, "'renew' takes params [a lock token (an int >= 0), {options}?]"),
        ("renew", ["7"], {}, "param 0 of 'renew' must be a lock token"),
        ("renew", [7, {"info": {}}], {}, "unknown option"),
        ("unlock", [-3], {}, "must be a lock token"),
        ("unlock", [3, {}], {}, "'unlock' takes params"),
        ("locks", [{}], {}, "'locks' takes params []"),
        ("version", [], {}, "'version' takes params [a string]"),
    ],
)
async def test_bad_values_are_400(
    http: Http, method: str, params: list[Any], context: dict[str, Any], needle: str
) -> None:
    tree = serialize_state(STAGE, make_state(STAGE, "k"))
    params = [tree if p == "TREE" else p for p in params]
    chain = context.pop("chain", None)
    status, answer = await http.post(method, params, chain=chain, **context)
    assert status == 400, answer
    assert needle in answer["error"]
    assert "code" not in answer
