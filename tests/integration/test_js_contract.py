"""The StateStore contract through the JavaScript client (``clients/alchemy``) against a
real ``evstate serve`` process, with the real ``alchemy@0.94.0`` from npm.

Each call goes to one long-lived Node process (``tests/node/store_bridge.mjs``), which
makes an ``EvstateStateStore`` for the call's scope and calls it; states cross as
Alchemy's serialized JSON. Needs Node.js and npm.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from evstate import Scope, State
from evstate.serde import deserialize_state, serialize_state
from tests._alchemy import client_project
from tests._util import serve_process, subprocess_env, topic_record_count
from tests.contract import OpenStore, RecordsWritten, StoreContract

TOKEN = "js-contract-token"


class JsStoreError(Exception):
    """What EvstateStateStore threw."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class JsInvalidInput(JsStoreError):
    """EvstateStateStore threw for a 400: the server refused the input."""


class NodeBridge:
    """One Node process running ``store_bridge.mjs``: a JSON line in, a JSON line out."""

    def __init__(self, project: Path, stderr: IO[str]) -> None:
        self._lock = threading.Lock()
        self._stderr = stderr
        self._proc = subprocess.Popen(
            ["node", "store_bridge.mjs"],
            cwd=project,
            env=subprocess_env(ALCHEMY_TELEMETRY_DISABLED="1", DO_NOT_TRACK="1", NO_COLOR="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
        )

    def call(self, request: dict[str, Any]) -> Any:
        """Send one request and wait for its answer (called off the event loop)."""
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"store_bridge.mjs exited:\n{self._stderr.read()}")
        answer = json.loads(line)
        if "error" in answer:
            error = answer["error"]
            kind = JsInvalidInput if error["status"] == 400 else JsStoreError
            raise kind(error["status"], error["message"])
        return answer["result"]

    def close(self) -> None:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.close()  # the bridge's loop ends with its input
        self._proc.wait(30)
        self._proc.stdout.close()


class JsStore:
    """The store of one scope, through the JavaScript client; the Python API's names."""

    def __init__(self, bridge: NodeBridge, url: str, scope: Scope) -> None:
        self._bridge = bridge
        self._url = url
        self.scope = scope

    async def _call(self, method: str, *params: Any) -> Any:
        request = {
            "url": self._url,
            "token": TOKEN,
            "chain": list(self.scope.chain),
            "password": self.scope.password,
            "method": method,
            "params": list(params),
        }
        return await asyncio.to_thread(self._bridge.call, request)

    def _state(self, tree: Any) -> State:
        return deserialize_state(self.scope, tree)

    async def init(self) -> None:
        await self._call("init")

    async def deinit(self) -> None:
        await self._call("deinit")

    async def list(self) -> list[str]:
        result: list[str] = await self._call("list")
        return result

    async def count(self) -> int:
        result: int = await self._call("count")
        return result

    async def get(self, key: str) -> State | None:
        tree = await self._call("get", key)
        return None if tree is None else self._state(tree)

    async def get_batch(self, ids: Sequence[str]) -> dict[str, State]:
        trees = await self._call("getBatch", list(ids))
        return {i: self._state(t) for i, t in trees.items()}

    async def all(self) -> dict[str, State]:
        trees = await self._call("all")
        return {i: self._state(t) for i, t in trees.items()}

    async def set(self, key: str, state: State) -> None:
        await self._call("set", key, serialize_state(self.scope, state))

    async def delete(self, key: str) -> None:
        await self._call("delete", key)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeBridge]:
    project = client_project(tmp_path_factory.mktemp("js-contract"))
    with open(project / "bridge.stderr", "w+", encoding="utf-8") as stderr:
        bridge = NodeBridge(project, stderr)
        try:
            yield bridge
        finally:
            bridge.close()


class TestJsClientContract(StoreContract):
    """Every contract test, through EvstateStateStore and ``evstate serve``."""

    invalid_input = JsInvalidInput

    @pytest.fixture
    async def url(
        self, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
    ) -> AsyncIterator[str]:
        env = subprocess_env(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            view_dir=tmp_path / "serve-view",
        )
        async with serve_process(env, token=TOKEN) as url:
            yield url

    @pytest.fixture
    def open_store(self, bridge: NodeBridge, url: str) -> OpenStore:
        def open_(scope: Scope) -> JsStore:
            return JsStore(bridge, url, scope)

        return open_

    @pytest.fixture
    def records_written(self, bootstrap_servers: str, topic_prefix: str) -> RecordsWritten:
        async def count() -> int:
            return await topic_record_count(bootstrap_servers, f"{topic_prefix}.state")

        return count
