"""The console with a principals file (``evstate serve --auth``), in a real browser: each
principal sees what its read grants let it read, a typed URL outside them is 403, the
live stream carries nothing else, only an admin breaks a lock, and a token rotated out
or a principal removed ends its signed-in session. Against a real ``evstate serve``
process and the real broker; Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from evstate import EvstateClient, Scope, Settings, State
from evstate.principals import hash_token
from tests._util import serve_process, subprocess_env

TOKENS = {
    "dev-reader": "tok-dev-reader-0123456789",
    "dev-writer": "tok-dev-writer-0123456789",
    "ops": "tok-ops-0123456789abcdef",
}
ROTATED = "tok-dev-reader-rotated-9876543210"
DEV, DEV_DB, PROD, APP, OTHER = (
    Scope("app", "dev"),
    Scope("app", "dev", "db"),
    Scope("app", "prod"),
    Scope("app"),
    Scope("other", "x"),
)
FORBIDDEN_PROD = "principal 'dev-reader' may not read scope 'app/prod'"


def principals_toml(tokens: dict[str, list[str]] | None = None, *, without: str = "") -> str:
    """The test's principals file; ``tokens`` overrides a principal's token list, and
    ``without`` leaves one principal out."""
    tokens = tokens or {}
    grants = {
        "dev-reader": 'read = ["app/dev"]',
        "dev-writer": 'write = ["app/dev"]\nlock = ["app/dev"]',
        "ops": 'read = ["*"]\nadmin = ["*"]',
    }
    return "\n".join(
        f"[[principal]]\nname = {json.dumps(name)}\n"
        f"tokens_sha256 = {json.dumps([hash_token(t) for t in tokens.get(name, [TOKENS[name]])])}"
        f"\n{grant}\n"
        for name, grant in grants.items()
        if name != without
    )


def bucket(key: str, **props: Any) -> State:
    return State(
        status="created",
        kind="aws::s3::Bucket",
        id=key,
        fqn=key,
        seq=1,
        data={},
        props={"name": key, **props},
        output={},
    )


@dataclass
class Console:
    url: str  # the server's base URL, without the trailing /
    auth_file: Path
    client: EvstateClient  # writes as another process would
    settings: Settings
    browser: Browser

    async def page(self) -> Page:
        """A page in a browser context of its own (its own cookies)."""
        context = await self.browser.new_context(viewport={"width": 1280, "height": 800})
        return await context.new_page()

    async def sign_in(self, page: Page, token: str) -> None:
        await page.goto(self.url + "/ui/")
        await page.get_by_label("Token").fill(token)
        await page.get_by_role("button", name="Sign in").click()

    async def signed_in(self, name: str) -> Page:
        page = await self.page()
        await self.sign_in(page, TOKENS[name])
        await expect(page.get_by_role("heading", name="Scopes")).to_be_visible()
        await expect(page.locator(".who")).to_have_text(f"Signed in as {name}")
        return page

    def rewrite(self, text: str) -> None:
        # A new file in one rename: the server's poll (every second) sees a new inode.
        staged = self.auth_file.with_suffix(".new")
        staged.write_text(text)
        staged.replace(self.auth_file)


@asynccontextmanager
async def console(
    browser: Browser, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Console]:
    auth_file = tmp_path / "principals.toml"
    auth_file.write_text(principals_toml())
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "serve-view",
    )
    settings = Settings(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=str(tmp_path / "v")
    )
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=str(tmp_path / "view"),
        actor="alice@laptop",
    ) as client:
        await client.ensure_topics()
        # The server's EVSTATE_TOKEN is not used with --auth; ops' token answers HEAD /.
        async with serve_process(env, "--auth", str(auth_file), token=TOKENS["ops"]) as url:
            yield Console(url.rstrip("/"), auth_file, client, settings, browser)


@pytest.fixture
async def ui(
    browser: Browser, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Console]:
    async with console(browser, bootstrap_servers, topic_prefix, tmp_path) as made:
        yield made


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.1)


async def cookies_of(page: Page) -> dict[str, str]:
    return {c["name"]: c["value"] for c in await page.context.cookies()}


async def seed(client: EvstateClient) -> None:
    await client.store(APP).set("root-thing", bucket("root-thing"))  # app holds states too
    await client.store(DEV).set("dev-bucket", bucket("dev-bucket"))
    await client.store(DEV_DB).set("dev-db", bucket("dev-db"))
    await client.store(PROD).set("prod-bucket", bucket("prod-bucket", tier="hot"))
    await client.store(OTHER).set("other-thing", bucket("other-thing"))


async def test_a_reader_of_app_dev_sees_only_app_dev_and_403_elsewhere(ui: Console) -> None:
    await seed(ui.client)
    page = await ui.signed_in("dev-reader")
    scopes = page.get_by_role("table")
    await expect(page.get_by_role("link", name="app/dev", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="app/dev/db", exact=True)).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="app/dev", exact=True))
    await expect(row.get_by_role("cell").first).to_have_text("1")
    # app is only the way down: its path as text, no link, nothing of what it holds.
    app_row = scopes.locator('tr[data-path="app"]')
    await expect(app_row.get_by_role("rowheader")).to_have_text("app")
    await expect(app_row.get_by_role("link")).to_have_count(0)
    await expect(app_row).not_to_contain_text("1")
    await expect(page.get_by_role("link", name="app", exact=True)).to_have_count(0)
    await page.screenshot(path=str(Path(__file__).parents[2] / "docs/console-reader.png"))
    source = await page.content()
    for unreadable in ("app/prod", "other/x", "prod-bucket", "root-thing"):
        assert unreadable not in source, unreadable
    # The scope page of app/dev: its resources and its nested scope.
    await page.get_by_role("link", name="app/dev", exact=True).click()
    await expect(page.get_by_role("link", name="dev-bucket", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="app/dev/db", exact=True)).to_be_visible()
    crumbs = page.get_by_role("navigation", name="Breadcrumb")
    await expect(crumbs.get_by_role("link", name="dev", exact=True)).to_be_visible()
    await expect(crumbs.get_by_role("link", name="app", exact=True)).to_have_count(0)
    await expect(crumbs).to_contain_text("app")
    # Typed directly: every page of app/prod is 403, naming principal, permission, scope.
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    for path in (
        "/ui/scope?path=app%2Fprod",
        "/ui/scope?path=app/prod",
        f"/ui/scope?path=app/prod&at={hour_ago}",
        f"/ui/scope?path=app/prod&from={hour_ago}&to={hour_ago}",
        "/ui/history?path=app/prod",
        "/ui/resource?scope=app/prod&key=prod-bucket",
        "/ui/scope?path=app",
        "/ui/scope?path=other/x",
    ):
        response = await page.goto(ui.url + path)
        assert response is not None
        assert response.status == 403, path
        await expect(page.get_by_role("heading", name="Forbidden")).to_be_visible()
        text = await page.get_by_role("alert").text_content()
        assert text is not None
        assert "principal 'dev-reader' may not read scope" in text, path
        assert "prod-bucket" not in await page.content()
    await expect(page.get_by_role("alert")).to_contain_text("scope 'other/x'")
    await page.goto(ui.url + "/ui/history?path=app/prod")
    await expect(page.get_by_role("alert")).to_have_text(
        FORBIDDEN_PROD + ": no read grant covers it (see the principals file, `evstate auth check`)"
    )
    # Path tricks are refused as the API refuses them: a bad name is 400, a look-alike
    # is another scope (which no grant of this reader covers), an encoded / is a /.
    async with aiohttp.ClientSession(cookies=await cookies_of(page)) as http:

        async def status(where: str, /, **params: str) -> tuple[int, str]:
            async with http.get(ui.url + where, params=params, allow_redirects=False) as r:
                return r.status, await r.text()

        for trick in ("app/dev/../prod", "app/dev/./db", "app//prod", "app/dev/", "/app/dev"):
            code, text = await status("/ui/scope", path=trick)
            assert code == 400, trick
            assert "prod-bucket" not in text
        for look_alike in ("\u0430pp/dev", "\uff41pp/dev", "app/dev\u200b", "App/dev"):
            code, text = await status("/ui/scope", path=look_alike)
            assert code == 403, look_alike
            assert "may not read scope" in text
        # Decoded once: '%2E%2E' is a name (a scope nested in app/dev), '%2F' is no '/'.
        code, text = await status("/ui/scope", path="app/dev/%2E%2E/prod")
        assert code == 200
        assert "<h1>app/dev/%2E%2E/prod</h1>" in text
        assert "prod-bucket" not in text
        code, text = await status("/ui/scope", path="app%2Fprod")
        assert code == 403
        assert "scope &#39;app%2Fprod&#39;" in text
        assert (await status("/ui/scope?path=app%2Fdev"))[0] == 200
        assert (await status("/ui/events", scope="app/prod"))[0] == 403
        assert (await status("/ui/events", scope="app/dev/../prod"))[0] == 400


async def test_the_live_stream_of_a_reader_carries_nothing_it_may_not_read(ui: Console) -> None:
    await seed(ui.client)
    page = await ui.signed_in("dev-reader")
    await page.goto(ui.url + "/ui/scope?path=app%2Fdev")
    await expect(page.locator("#live-state")).to_have_text(re.compile("Connected"))
    async with (
        aiohttp.ClientSession(cookies=await cookies_of(page)) as http,
        http.get(ui.url + "/ui/events", params={"scope": "app/dev"}) as stream,
    ):
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")  # retry: the stream is open
        await ui.client.store(PROD).set("leak-prod", bucket("leak-prod"))
        await ui.client.store(APP).set("leak-app", bucket("leak-app"))
        await ui.client.store(DEV).set("fresh-dev", bucket("fresh-dev"))
        seen = b""
        while b"fresh-dev" not in seen:
            seen += await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
    await expect(page.get_by_role("link", name="fresh-dev", exact=True)).to_be_visible(timeout=3000)
    assert b"leak-prod" not in seen
    assert b"leak-app" not in seen
    await expect(page.locator("#live-list")).to_contain_text("SET fresh-dev v1")
    await expect(page.locator("#live-list")).not_to_contain_text("leak")


async def test_only_an_admin_breaks_a_lock_and_the_break_is_the_admins(
    ui: Console, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    await seed(ui.client)
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=str(tmp_path / "holder-view"),
        actor="ci-job-7",
    ) as holder:
        lease = await holder.lock(DEV, ttl=120, info={"job": "7"})
        # A writer of app/dev without admin: the lock shown, no break form.
        writer = await ui.signed_in("dev-writer")
        await writer.goto(ui.url + "/ui/scope?path=app%2Fdev")
        locks = writer.get_by_role("table").filter(
            has=writer.get_by_role("columnheader", name="Holder")
        )
        await expect(locks).to_contain_text("ci-job-7")
        await expect(writer.get_by_role("button", name="Break lock")).to_have_count(0)
        await expect(writer.get_by_role("columnheader", name="Break")).to_have_count(0)
        await expect(writer.get_by_label("Type app/dev to confirm")).to_have_count(0)
        # A forged POST, with the session's valid CSRF token (from its sign-out form).
        csrf = await writer.locator('input[name="csrf"]').first.get_attribute("value")
        assert csrf
        async with (
            aiohttp.ClientSession(cookies=await cookies_of(writer)) as http,
            http.post(
                ui.url + "/ui/locks/break",
                data={
                    "csrf": csrf,
                    "scope": "app/dev",
                    "token": str(lease.token),
                    "confirm": "app/dev",
                },
                allow_redirects=False,
            ) as response,  # fmt: skip
        ):
            assert response.status == 403
            text = await response.text()
        assert "principal &#39;dev-writer&#39; may not admin scope &#39;app/dev&#39;" in text
        assert [x.token for x in await ui.client.locks(DEV)] == [lease.token]
        # The admin sees the form and breaks it.
        ops = await ui.signed_in("ops")
        await ops.goto(ui.url + "/ui/scope?path=app%2Fdev")
        await ops.get_by_label("Type app/dev to confirm").fill("app/dev")
        await ops.screenshot(path=str(Path(__file__).parents[2] / "docs/console-break.png"))
        await ops.get_by_role("button", name="Break lock").click()
        await expect(ops.get_by_role("status")).to_have_text("The lock was broken.")
        assert await ui.client.locks(DEV) == []
    breaks = [e async for e in ui.client.history(DEV) if e.op == "BREAK"]
    assert [e.actor for e in breaks] == ["ops"]


async def test_a_token_rotated_out_or_a_principal_removed_ends_its_session(ui: Console) -> None:
    await seed(ui.client)
    reader = await ui.signed_in("dev-reader")
    ops = await ui.signed_in("ops")
    await expect(ops.get_by_role("link", name="app/prod", exact=True)).to_be_visible()
    # A wrong token is refused, and gets no cookie.
    stranger = await ui.page()
    await ui.sign_in(stranger, "tok-nobody-0123456789")
    await expect(stranger.get_by_role("alert")).to_have_text("Wrong token.")
    assert "evstate_console" not in await cookies_of(stranger)
    # Rotation: old and new both listed; the session signed in with the old one holds.
    ui.rewrite(principals_toml({"dev-reader": [TOKENS["dev-reader"], ROTATED]}))
    rotated = await ui.page()

    async def new_token_works() -> bool:
        await ui.sign_in(rotated, ROTATED)
        return await rotated.get_by_role("heading", name="Scopes").count() == 1

    await until(new_token_works)
    await reader.goto(ui.url + "/ui/scope?path=app%2Fdev")
    await expect(reader.get_by_role("heading", name="app/dev", exact=True)).to_be_visible()
    # The old token removed from the file: its session ends at the next request; the
    # session signed in with the new one goes on.
    ui.rewrite(principals_toml({"dev-reader": [ROTATED]}))

    async def signed_out(page: Page) -> bool:
        await page.goto(ui.url + "/ui/scope?path=app%2Fdev")
        return await page.get_by_role("heading", name="Sign in").count() == 1

    await until(lambda: signed_out(reader))
    await rotated.goto(ui.url + "/ui/scope?path=app%2Fdev")
    await expect(rotated.get_by_role("heading", name="app/dev", exact=True)).to_be_visible()
    await ui.sign_in(reader, TOKENS["dev-reader"])
    await expect(reader.get_by_role("alert")).to_have_text("Wrong token.")
    # A principal removed: its open live stream ends too, delivering nothing more.
    async with (
        aiohttp.ClientSession(cookies=await cookies_of(ops)) as http,
        http.get(ui.url + "/ui/events", params={"scope": "app/prod"}) as stream,
    ):
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")
        ui.rewrite(principals_toml({"dev-reader": [ROTATED]}, without="ops"))
        await until(lambda: signed_out(ops))
        await ui.client.store(PROD).set("after-removal", bucket("after-removal"))
        rest = await asyncio.wait_for(stream.content.read(), 10)  # the server ends it
    assert b"after-removal" not in rest
    async with (
        aiohttp.ClientSession(cookies=await cookies_of(ops)) as http,
        http.get(ui.url + "/ui/events", params={"scope": "app/prod"}) as again,
    ):
        assert again.status == 401


async def test_console_requests_are_in_the_access_log(ui: Console) -> None:
    from evstate.access import read_access

    await seed(ui.client)
    page = await ui.signed_in("dev-reader")
    await page.goto(ui.url + "/ui/resource?scope=app%2Fdev&key=dev-bucket")
    await page.goto(ui.url + "/ui/scope?path=app%2Fprod")
    stranger = await ui.page()
    await ui.sign_in(stranger, "tok-nobody-0123456789")
    wanted = {
        ("dev-reader", "POST /ui/sign-in", None, None, 303),
        ("dev-reader", "GET /ui/", None, None, 200),
        ("dev-reader", "GET /ui/resource", "app/dev", "dev-bucket", 200),
        ("dev-reader", "GET /ui/scope", "app/prod", None, 403),
        (None, "POST /ui/sign-in", None, None, 401),
    }

    async def logged() -> set[tuple[Any, ...]]:
        try:
            found = [r async for r in read_access(ui.settings)]
        except Exception:  # the topic is made by the first batch
            return set()
        for r in found:  # no token, no query string
            assert all(t.encode() not in r.to_json() for t in TOKENS.values())
            assert "?" not in r.method
        return {(r.principal, r.method, r.scope, r.key, r.status) for r in found}

    async def all_there() -> bool:
        return wanted <= await logged()

    await until(all_there, 20)
