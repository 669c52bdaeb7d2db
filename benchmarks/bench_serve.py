"""``evstate serve`` (HTTP) against the Python API, side by side in one run.

    python benchmarks/bench_serve.py [--quick] [--bootstrap HOST:PORT]

``set`` and ``get`` through a running ``evstate serve`` process (on a free port, with a
bearer token), called by an ``aiohttp.ClientSession`` that keeps its connection alive,
vs the same calls on a ``KafkaStateStore`` in this process, alternating the two (AB BA
...) on the same broker, each with topics and a view of its own.

The state is a typical Alchemy resource (an AWS Lambda function, ~1.7 KB of JSON): the
HTTP side sends and receives its serialized tree, as Alchemy's remote store does; the
Python side sets and gets the ``State``. Also shown: the Python API's tree methods
(``set_tree``, ``get_tree``), which do what the server does per request, so the rest is
HTTP, JSON and the hop between processes; and ``HEAD /``, a request that calls no store.

No goal is set for those ratios: they say what the hop costs. One more server runs with a
principals file of 50 principals (``--auth``, so with the access log on): its ``get`` and
``set`` p50 against the single-token server's, goal <= 1.1x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    BrokerInfo,
    Row,
    at_most,
    base_parser,
    broker_for,
    interleave,
    note,
    percentiles,
    print_report,
    resource_state,
    timed,
    unique_name,
)

from evstate import EvstateClient, Scope, Settings
from evstate.serde import serialize_state

MS = 1e3
SCOPE = Scope("billing-api", "prod")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to measure."""

    label: str
    rounds: int  # interleaved rounds
    calls: int  # calls per side per round


QUICK = Plan(label="quick", rounds=6, calls=40)
FULL = Plan(label="full", rounds=12, calls=150)


@dataclass
class Server:
    """A running ``evstate serve`` and a session talking to it."""

    url: str
    session: aiohttp.ClientSession

    async def call(self, method: str, *params: Any) -> Any:
        """One request; its result, or AssertionError with the server's message."""
        body = {"method": method, "params": list(params), "context": {"chain": SCOPE.chain}}
        async with self.session.post(self.url, json=body) as response:
            answer = await response.json()
        if not answer.get("success"):
            raise AssertionError(f"evstate serve answered {answer}")
        return answer["result"]


PRINCIPALS = 50


def principals_file(path: Path, token: str) -> None:
    """A principals file of ``PRINCIPALS`` principals, each with two tokens and grants on
    scopes of their own; ``token`` is the one in the middle, allowed to write SCOPE."""
    from evstate.principals import hash_token

    lines = []
    for i in range(PRINCIPALS):
        mine = token if i == PRINCIPALS // 2 else secrets.token_urlsafe(24)
        hashes = [hash_token(mine), hash_token(secrets.token_urlsafe(24))]
        write = [SCOPE.path] if mine == token else [f"team-{i}/prod", f"team-{i}/dev"]
        lines += [
            "[[principal]]",
            f'name = "team-{i}"',
            f"tokens_sha256 = {json.dumps(hashes)}",
            f'read = ["team-{i}", "shared/docs"]',
            f"write = {json.dumps(write)}",
            f"lock = {json.dumps(write)}",
            "",
        ]
    path.write_text("\n".join(lines))


@contextlib.asynccontextmanager
async def serving(bootstrap: str, tmp: Path, *, auth: bool = False) -> AsyncIterator[Server]:
    """``evstate serve`` as a subprocess on a free port, with topics of its own; with
    ``auth``, a 50-principal file (and so the access log) instead of the single token."""
    token = secrets.token_urlsafe(24)
    name = "auth" if auth else "token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVSTATE_")}
    env.update(
        EVSTATE_BOOTSTRAP_SERVERS=bootstrap,
        EVSTATE_VIEW_DIR=str(tmp / f"serve-view-{name}"),
        EVSTATE_TOPIC_PREFIX=unique_name(f"bench-serve-http-{name}"),
        EVSTATE_ACTOR="bench",
    )
    if auth:
        principals_file(tmp / "principals.toml", token)
        env.update(EVSTATE_AUTH_FILE=str(tmp / "principals.toml"))
    else:
        env.update(EVSTATE_TOKEN=token)  # not on the command line, where others could read it
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evstate.cli",
        "serve",
        "--port",
        "0",  # a free port, printed once bound
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"evstate serve did not start: {line!r}")
        url = line.split()[-1] + "/"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await _wait_ready(session, url)
            yield Server(url, session)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.head(url) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"evstate serve at {url} not ready after {timeout:g} s")
        await asyncio.sleep(0.2)


async def compare(plan: Plan, broker: BrokerInfo, tmp: Path) -> list[Row]:
    """set and get over HTTP vs the Python API, and the Python API's tree methods."""
    bootstrap = broker.bootstrap_servers
    name = unique_name("bench-serve-py")
    settings = Settings(
        bootstrap_servers=bootstrap, view_dir=str(tmp / name), topic_prefix=name, actor="bench"
    )
    states = [resource_state(SCOPE, i) for i in range(plan.calls)]
    trees = [serialize_state(SCOPE, s) for s in states]
    size = len(json.dumps(trees[0], separators=(",", ":")))
    note(f"state tree: {size:,} bytes of JSON")
    async with (
        serving(bootstrap, tmp) as server,
        serving(bootstrap, tmp, auth=True) as guarded,
        EvstateClient(settings) as client,
    ):
        store = client.store(SCOPE)
        await store.init()
        await server.call("init")
        await guarded.call("init")

        def setter(on: Server) -> Any:
            async def measure() -> list[float]:
                return [await timed(on.call("set", t["id"], t)) for t in trees]

            return measure

        def getter(on: Server) -> Any:
            async def measure() -> list[float]:
                out = []
                for t in trees:
                    start = time.perf_counter()
                    got = await on.call("get", t["id"])
                    out.append(time.perf_counter() - start)
                    _check(got is not None and got["id"] == t["id"], t["id"])
                return out

            return measure

        async def http_head() -> list[float]:
            out = []
            for _ in trees:
                start = time.perf_counter()
                async with server.session.head(server.url) as response:
                    _check(response.status == 200, "HEAD /")
                out.append(time.perf_counter() - start)
            return out

        async def py_set() -> list[float]:
            return [await timed(store.set(s.id, s)) for s in states]

        async def py_set_tree() -> list[float]:
            return [await timed(store.set_tree(t["id"], t)) for t in trees]

        def py_getter(tree: bool) -> Any:
            async def measure() -> list[float]:
                out = []
                for s in states:
                    start = time.perf_counter()
                    got = await (store.get_tree(s.id) if tree else store.get(s.id))
                    out.append(time.perf_counter() - start)
                    _check(got is not None, s.id)
                return out

            return measure

        measures = {
            "py_set": py_set,
            "http_set": setter(server),
            "auth_set": setter(guarded),
            "py_set_tree": py_set_tree,
            "py_get": py_getter(False),
            "http_get": getter(server),
            "auth_get": getter(guarded),
            "py_get_tree": py_getter(True),
            "http_head": http_head,
        }
        await interleave(1, **measures)  # warm-up; also makes every key exist for the gets
        got = await interleave(plan.rounds, **measures)
    p = {name: percentiles(samples) for name, samples in got.items()}
    rows = []
    for op, py in (("set", "py_set"), ("get", "py_get")):
        for q in (50, 99):
            rows.append(
                Row(
                    f"{op} p{q}: HTTP vs Python API",
                    p[py][q] * MS,
                    p[f"http_{op}"][q] * MS,
                    "ms",
                    note=""
                    if (op, q) != ("set", 50)
                    else "raw column: store.set(State) / store.get -> State in-process; "
                    "evstate column: POST / to evstate serve (keep-alive session, JSON "
                    "envelope parsed)",
                )
            )
    for op in ("set", "get"):
        rows.append(
            Row(
                f"{op} p50: HTTP vs Python {op}_tree",
                p[f"py_{op}_tree"][50] * MS,
                p[f"http_{op}"][50] * MS,
                "ms",
                note=f"raw column: store.{op}_tree, what the server does per request: the "
                "rest is HTTP, JSON and the hop between processes"
                if op == "set"
                else "",
            )
        )
    for op in ("set", "get"):
        rows.append(
            Row(
                f"{op} p50: 50 principals + access log vs one token",
                p[f"http_{op}"][50] * MS,
                p[f"auth_{op}"][50] * MS,
                "ms",
                goal=at_most(1.1),
                note="raw column: evstate serve with EVSTATE_TOKEN; evstate column: with "
                "--auth (50 principals, 100 token hashes) and the access log; goal <= 1.1x"
                if op == "set"
                else "",
            )
        )
    rows.append(
        Row(
            "get p50: HTTP get vs HTTP HEAD /",
            p["http_head"][50] * MS,
            p["http_get"][50] * MS,
            "ms",
            note="raw column: HEAD / (token checked, an envelope answered, no store call): "
            "the floor of a request to evstate serve",
        )
    )
    return rows


def _check(ok: bool, key: str) -> None:
    if not ok:
        raise AssertionError(f"read-your-write lost {key}")


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="evstate-bench-serve-"))
    try:
        async with broker_for(args.bootstrap) as broker:
            start = time.perf_counter()
            note("set and get: HTTP vs the Python API ...")
            rows = await compare(plan, broker, tmp)
            note(f"done in {time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(f"evstate serve (HTTP) vs the Python API ({plan.label} mode)", rows, broker)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
