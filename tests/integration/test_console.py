"""The audit console (``/ui/``) in a real browser: Debian's chromium driven by Playwright,
against a real ``evstate serve`` process and the real broker.

Writes come from this process (another process than the server), through the Python API.
Each test saves a screenshot of the page it looks at under ``docs/`` (shown in the README).
The ``browser`` fixture is in ``conftest.py``; the console with a principals file is
``test_console_auth.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from evstate import EvstateClient, FencedError, Scope, Secret, Settings, State
from tests._util import free_port_block, running_server, serve_process, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TOKEN = "console-token-0123456789"
PASSWORD = "console-test-password"
APP = Scope("shop", "prod")


def bucket(key: str, **props: Any) -> State:
    return State(
        status="created",
        kind="aws::s3::Bucket",
        id=key,
        fqn=f"shop/prod/{key}",
        seq=1,
        data={},
        props={"name": key, **props},
        output={"arn": f"arn:aws:s3:::{key}"},
    )


@dataclass
class Console:
    url: str  # the server's base URL, ending in /
    page: Page
    client: EvstateClient  # another process's view of the same topics: this test's

    def at(self, path: str) -> str:
        return self.url.rstrip("/") + path

    async def sign_in(self, token: str = TOKEN) -> None:
        await self.page.goto(self.at("/ui/"))
        await self.page.get_by_label("Token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)


@asynccontextmanager
async def console(
    browser: Browser, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Console]:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "serve-view",
    )
    async with (
        EvstateClient(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            view_dir=str(tmp_path / "view"),
            password=PASSWORD,
            actor="alice@laptop",
        ) as client,
    ):
        await client.ensure_topics()
        async with serve_process(env, token=TOKEN) as url:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            try:
                yield Console(url, await context.new_page(), client)
            finally:
                await context.close()


@pytest.fixture
async def ui(
    browser: Browser, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Console]:
    async with console(browser, bootstrap_servers, topic_prefix, tmp_path) as made:
        yield made


async def test_sign_in_with_the_token_shows_the_scopes(ui: Console) -> None:
    store = ui.client.store(APP)
    await store.set("assets", bucket("assets"))
    await store.set("logs", bucket("logs"))
    await ui.client.store(APP.child("db")).set("main", bucket("main"))
    page = ui.page
    await page.goto(ui.at("/ui/"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await ui.shot("sign-in")
    await ui.sign_in()
    await expect(page.get_by_role("heading", name="Scopes")).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="shop/prod", exact=True))
    await expect(row.get_by_role("cell").first).to_have_text("2")
    await expect(page.get_by_role("link", name="shop/prod/db", exact=True)).to_be_visible()
    await expect(row).to_contain_text("alice@laptop", timeout=10_000)  # the last change
    cookie = next(c for c in await page.context.cookies() if c["name"] == "evstate_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    # The filter box, without script: a GET form.
    await page.get_by_label("Filter").fill("db")
    await page.get_by_role("button", name="Apply filter").click()
    await expect(page.get_by_role("link", name="shop/prod/db", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="shop/prod", exact=True)).to_have_count(0)
    await page.goto(ui.at("/ui/"))
    await ui.shot("scopes")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.goto(ui.at("/ui/scope?path=shop%2Fprod"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_a_wrong_token_is_refused(ui: Console) -> None:
    page = ui.page
    await ui.sign_in("not-the-token")
    await expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert not [c for c in await page.context.cookies() if c["name"] == "evstate_console"]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            ui.at("/ui/sign-in"), data={"token": "wrong"}, allow_redirects=False
        ) as response:
            assert response.status == 401
            assert "Set-Cookie" not in response.headers
        # A forged or stretched cookie is no session; neither is the API's bearer header.
        for cookie in ("9999999999.abc.def", "1.abc.def", ""):
            async with http.get(
                ui.at("/ui/"), cookies={"evstate_console": cookie}, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert response.headers["Location"].startswith("/ui/sign-in")
        async with http.get(ui.at("/ui/events?scope=shop/prod")) as response:
            assert response.status == 401


async def test_a_scopes_table_nested_scopes_and_a_lock_broken_from_the_console(
    ui: Console, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    store = ui.client.store(APP)
    for key in ("assets", "logs", "media"):
        await store.set(key, bucket(key))
    await ui.client.store(APP.child("db")).set("main", bucket("main"))
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=str(tmp_path / "holder-view"),
        actor="ci-job-7",
    ) as holder:
        lease = await holder.lock(APP, ttl=60, info={"job": "https://ci.example/7"})
        page = ui.page
        await ui.sign_in()
        await page.get_by_role("link", name="shop/prod", exact=True).click()
        await expect(page.get_by_role("heading", name="shop/prod", exact=True)).to_be_visible()
        table = page.get_by_role("table").filter(has=page.get_by_role("columnheader", name="Kind"))
        headers = table.get_by_role("columnheader")
        await expect(headers).to_have_text(
            ["Resource", "Kind", "Status", "Version", "Last changed", "By"]
        )
        await expect(table.get_by_role("row")).to_have_count(4)
        logs = table.get_by_role("row").filter(has=page.get_by_role("link", name="logs"))
        await expect(logs).to_contain_text("aws::s3::Bucket")
        await expect(logs).to_contain_text("created")
        await expect(logs).to_contain_text("v1")
        await expect(page.get_by_role("link", name="shop/prod/db", exact=True)).to_be_visible()
        locks = page.get_by_role("table").filter(
            has=page.get_by_role("columnheader", name="Holder")
        )
        await expect(locks).to_contain_text("ci-job-7")
        await expect(locks).to_contain_text("job=https://ci.example/7")
        await expect(locks).to_contain_text(str(lease.token))
        await ui.shot("scope")
        # A form posted without the session's CSRF token is refused.
        cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
        async with (
            aiohttp.ClientSession(cookies=cookies) as http,
            http.post(
                ui.at("/ui/locks/break"),
                data={"scope": "shop/prod", "token": str(lease.token), "confirm": "shop/prod"},
            ) as response,
        ):
            assert response.status == 403
        assert [x.token for x in await ui.client.locks(APP)] == [lease.token]
        # Not confirmed: nothing broken.
        await page.get_by_label("Type shop/prod to confirm").fill("shop/pro")
        await page.get_by_role("button", name="Break lock").click()
        await expect(page.get_by_role("alert")).to_contain_text("type the scope's path")
        assert [x.token for x in await ui.client.locks(APP)] == [lease.token]
        await page.go_back()
        await page.get_by_label("Type shop/prod to confirm").fill("shop/prod")
        await page.get_by_role("button", name="Break lock").click()
        await expect(page.get_by_role("status")).to_have_text("The lock was broken.")
        await expect(page.get_by_role("columnheader", name="Holder")).to_have_count(0)
        assert await ui.client.locks(APP) == []
        with pytest.raises(FencedError):
            await lease.release()


async def test_a_resource_timeline_and_diff_after_an_update_with_a_reason(ui: Console) -> None:
    store = ui.client.store(APP)
    await store.set("assets", bucket("assets", versioning=False))
    await store.set(
        "assets",
        bucket("assets", versioning=True),
        reason="turn on versioning (CHG-42)",
        correlation_id="deploy-42",
    )
    await store.set("logs", bucket("logs"), correlation_id="deploy-42")
    page = ui.page
    await ui.sign_in()
    await page.goto(ui.at("/ui/scope?path=shop%2Fprod"))
    await page.get_by_role("link", name="assets", exact=True).click()
    await expect(page.get_by_role("heading", name="assets", level=1)).to_be_visible()
    await expect(page.get_by_role("heading", name=re.compile(r"^v\d$"))).to_have_text(["v2", "v1"])
    v2 = page.get_by_role("article").filter(has=page.get_by_role("heading", name="v2"))
    await expect(v2).to_contain_text("turn on versioning (CHG-42)")
    await expect(v2).to_contain_text("deploy-42")
    await expect(v2).to_contain_text("alice@laptop")
    change = v2.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="props.versioning")
    )
    await expect(change.get_by_role("cell")).to_have_text(["false", "true"])
    await ui.shot("resource")
    await page.get_by_role("link", name="shop", exact=True).click()
    await page.goto(ui.at("/ui/history?path=shop%2Fprod"))
    deploy = page.locator("summary").filter(has_text="Deploy deploy-42")
    await expect(deploy).to_contain_text("1 added, 1 changed, 0 removed")
    await deploy.click()  # expands it
    await expect(page.get_by_role("rowheader", name="props.versioning")).to_be_visible()
    await ui.shot("history")


async def test_time_travel_to_before_a_delete_shows_the_deleted_resource(ui: Console) -> None:
    store = ui.client.store(APP)
    await store.set("assets", bucket("assets"))
    await store.set("old-logs", bucket("old-logs"))
    await asyncio.sleep(1.2)
    before = datetime.now(UTC).replace(microsecond=0)
    await asyncio.sleep(1.2)
    await store.delete("old-logs")
    page = ui.page
    await ui.sign_in()
    await page.goto(ui.at("/ui/scope?path=shop%2Fprod"))
    await expect(page.get_by_role("link", name="assets", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="old-logs", exact=True)).to_have_count(0)
    await page.get_by_label("As of (UTC)").fill(before.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.get_by_role("button", name="Show scope as of then").click()
    await expect(page.get_by_role("heading", name=re.compile("Resources as of"))).to_be_visible()
    await expect(page.get_by_role("link", name="old-logs", exact=True)).to_be_visible()
    then = page.get_by_role("row").filter(has=page.get_by_role("link", name="old-logs"))
    await expect(then).to_contain_text("v1")  # its version and last change as of then
    await expect(then).to_contain_text("alice@laptop")
    await ui.shot("time-travel")
    await page.get_by_label("From (UTC)").fill(before.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.get_by_role("button", name="Compare").click()
    await expect(page.get_by_text("0 added, 0 changed, 1 removed.")).to_be_visible()
    removed = page.get_by_role("heading", name="Removed", exact=True)
    await expect(removed).to_be_visible()


async def test_a_change_by_another_process_appears_live(ui: Console) -> None:
    store = ui.client.store(APP)
    await store.set("assets", bucket("assets"))
    page = ui.page
    await ui.sign_in()
    await page.goto(ui.at("/ui/scope?path=shop%2Fprod"))
    await expect(page.locator("#live-state")).to_have_text(re.compile("Connected"))
    await store.set("fresh", bucket("fresh"))
    await expect(page.get_by_role("link", name="fresh", exact=True)).to_be_visible(timeout=2000)
    await page.get_by_role("link", name="fresh", exact=True).click()
    await expect(page.locator("#live-state")).to_have_text(re.compile("Connected"))
    await store.set("fresh", bucket("fresh", tier="cold"), reason="archive")
    v2 = page.get_by_role("heading", name="v2")
    await expect(v2).to_be_visible(timeout=2000)
    await expect(page.locator("#live-list")).to_contain_text("SET fresh v2")


async def test_secrets_never_reach_a_page(ui: Console) -> None:
    scope = Scope("shop", "prod", password=PASSWORD)
    store = ui.client.store(scope)
    state = bucket("db", password=Secret("hunter2-plain"))
    state.output = {"connection": Secret("postgres://u:hunter2-plain@db")}
    await store.set("db", state)
    state2 = bucket("db", password=Secret("hunter3-plain"))
    state2.output = {"connection": Secret("postgres://u:hunter3-plain@db")}
    await store.set("db", state2, reason="rotate")
    tree = await store.get_tree("db")
    assert tree is not None
    ciphertext = tree["props"]["password"]["@secret"]
    ciphertext = ciphertext if isinstance(ciphertext, str) else str(ciphertext)
    page = ui.page
    await ui.sign_in()
    sources = []
    for path in (
        "/ui/",
        "/ui/scope?path=shop%2Fprod",
        "/ui/resource?scope=shop%2Fprod&key=db",
        "/ui/history?path=shop%2Fprod",
    ):
        response = await page.goto(ui.at(path))
        assert response is not None
        assert response.status == 200
        sources += [await response.text(), await page.content()]
    await page.goto(ui.at("/ui/resource?scope=shop%2Fprod&key=db"))
    await expect(page.get_by_text("••••").first).to_be_visible()
    for source in sources:
        for needle in ("hunter2-plain", "hunter3-plain", "@secret", ciphertext[:24]):
            assert needle not in source, needle


async def test_names_with_markup_are_shown_as_text(ui: Console) -> None:
    scope = Scope("shop", "prod", "<b>\"quoted\"</b> & 'co'")
    key = '<img src=x onerror="alert(1)">'
    state = bucket("x")
    state.id = key
    state.props = {"note": "<script>alert(2)</script>"}
    await ui.client.store(scope).set(key, state)
    dialogs: list[str] = []
    ui.page.on("dialog", lambda d: dialogs.append(d.message))
    page = ui.page
    await ui.sign_in()
    await page.get_by_role("link", name=scope.path, exact=True).click()
    await expect(page.get_by_role("heading", name=scope.path, exact=True)).to_be_visible()
    await page.get_by_role("link", name=key, exact=True).click()
    await expect(page.get_by_role("heading", name=key, level=1)).to_be_visible()
    await expect(page.get_by_text("<script>alert(2)</script>").first).to_be_visible()
    assert await page.locator("img").count() == 0
    assert await page.locator("main script").count() == 0
    assert dialogs == []


async def test_over_plain_http_headers_redirects_paging_and_forms(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "serve-view",
    )
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=str(tmp_path / "v")
    ) as client:
        store = client.store(APP)
        await asyncio.gather(*(store.set(f"b{i:03d}", bucket(f"b{i:03d}")) for i in range(150)))
        async with (
            serve_process(env, token=TOKEN) as url,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            base = url.rstrip("/")
            async with http.get(base + "/ui", allow_redirects=False) as response:
                assert response.status == 308
                assert response.headers["Location"] == "/ui/"
            # Only a path of the console is a place to go after signing in.
            for target in ("//evil.example/", "https://evil.example/", "/ui\\x"):
                async with http.post(
                    base + "/ui/sign-in", data={"token": TOKEN, "next": target},
                    allow_redirects=False,
                ) as response:  # fmt: skip
                    assert response.status == 303
                    assert response.headers["Location"] == "/ui/"
                    cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert "Path=/ui/" in cookie
            async with http.get(base + "/ui/scope?path=shop/prod") as response:
                assert response.status == 200
                csp = response.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp
                assert "frame-ancestors 'none'" in csp
                assert response.headers["Cache-Control"] == "no-store"
                text = await response.text()
            assert "150 resources." in text
            assert "Page 1 of 2" in text
            assert ">b099<" in text
            assert ">b100<" not in text
            async with http.get(base + "/ui/scope?path=shop/prod&page=2") as response:
                text = await response.text()
            assert ">b100<" in text
            assert ">b149<" in text
            async with http.get(base + "/ui/scope?path=shop/prod&page=3") as response:
                assert response.status == 400
                assert "past the last page" in await response.text()
            async with http.get(base + "/ui/no-such-page") as response:
                assert response.status == 404
                assert response.content_type == "text/html"
            # Forms that change something want the session's CSRF token, from this site.
            async with http.post(base + "/ui/sign-out", data={}) as response:
                assert response.status == 403
            async with http.post(
                base + "/ui/sign-out", data={}, headers={"Origin": "https://evil.example"}
            ) as response:
                assert response.status == 403
            # The JSON API is unchanged: its bearer token, its envelope.
            async with http.post(base + "/", json={}) as response:
                assert response.status == 401
                assert (await response.json())["success"] is False


async def test_kafka_down_is_a_503_page_and_sign_in_still_works(
    view_dir: Path, topic_prefix: str
) -> None:
    port = free_port_block(1)
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{port}",
        view_dir=str(view_dir),
        topic_prefix=topic_prefix,
        connect_timeout=0.5,
    )
    async with (
        running_server(settings, token=TOKEN) as url,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        await asyncio.sleep(1.5)  # let the first connection attempts fail
        async with http.post(url + "ui/sign-in", data={"token": TOKEN}) as response:
            assert response.status == 503  # signed in, then the scopes page cannot be read
            assert response.content_type == "text/html"
            text = await response.text()
        assert "evstate serve is not ready" in text
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in text
        async with http.get(url + "ui/static/console.css") as response:
            assert response.status == 200  # what the error page wears needs no Kafka
