"""The StateStore contract against ``evstate serve``, through a small HTTP client.

:class:`HttpStore` speaks the protocol as Alchemy's remote stores do: it serializes states
on the client side (with evstate's serde, as Alchemy would with its own), posts
``{"method", "params", "context": {"chain"}}`` and deserializes what comes back. The
server runs in this process on a free port (see :func:`tests._util.running_server`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evstate import Scope, Settings, State
from evstate.serde import deserialize_state, serialize_state
from tests._util import SERVE_TOKEN, running_server, topic_record_count, wait_ready
from tests.contract import OpenStore, RecordsWritten, StoreContract

TOKEN = SERVE_TOKEN


class ServeError(Exception):
    """A non-200 answer of ``evstate serve``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class InvalidInput(ServeError):
    """A 400: the server refused the input."""


class HttpStore:
    """The store of one scope, over ``evstate serve``; the Python API's method names."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, scope: Scope, token: str = TOKEN
    ) -> None:
        self.session = session
        self.url = url
        self.scope = scope
        self.token = token

    async def call(self, method: str, params: list[Any], **context: Any) -> Any:
        body = {"method": method, "params": params, "context": {"chain": list(self.scope.chain)}}
        body["context"].update(context)
        async with self.session.post(
            self.url, json=body, headers={"Authorization": f"Bearer {self.token}"}
        ) as response:
            answer = await response.json()
        assert answer["status"] == response.status
        if not answer["success"]:
            kind = InvalidInput if response.status == 400 else ServeError
            raise kind(response.status, answer["error"])
        return answer["result"]

    async def init(self) -> None:
        await self.call("init", [])

    async def deinit(self) -> None:
        await self.call("deinit", [])

    async def list(self) -> list[str]:
        result: list[str] = await self.call("list", [])
        return result

    async def count(self) -> int:
        result: int = await self.call("count", [])
        return result

    async def get(self, key: str) -> State | None:
        tree = await self.call("get", [key])
        return None if tree is None else deserialize_state(self.scope, tree)

    async def get_batch(self, ids: Sequence[str]) -> dict[str, State]:
        trees = await self.call("getBatch", [list(ids)])
        return {i: deserialize_state(self.scope, t) for i, t in trees.items()}

    async def all(self) -> dict[str, State]:
        trees = await self.call("all", [])
        return {i: deserialize_state(self.scope, t) for i, t in trees.items()}

    async def set(self, key: str, state: State) -> str:
        result: str = await self.call("set", [key, serialize_state(self.scope, state)])
        return result

    async def delete(self, key: str) -> str:
        result: str = await self.call("delete", [key])
        return result


def server_settings(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    )


class TestServeContract(StoreContract):
    """Every contract test, through HTTP."""

    invalid_input = InvalidInput

    @pytest.fixture
    async def settings(self, bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
        return server_settings(bootstrap_servers, topic_prefix, view_dir)

    @pytest.fixture
    async def url(self, settings: Settings) -> AsyncIterator[str]:
        async with running_server(settings) as url:
            await wait_ready(url, TOKEN)
            yield url

    @pytest.fixture
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession() as session:
            yield session

    @pytest.fixture
    def open_store(self, url: str, session: aiohttp.ClientSession) -> OpenStore:
        def open_(scope: Scope) -> HttpStore:
            return HttpStore(session, url, scope)

        return open_

    @pytest.fixture
    def records_written(self, bootstrap_servers: str, settings: Settings) -> RecordsWritten:
        async def count() -> int:
            return await topic_record_count(bootstrap_servers, settings.state_topic)

        return count
