"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from evstate.config import Settings
from evstate.kafka import Record

SERVE_TOKEN = "contract-token"
"""The bearer token of a server started by :func:`running_server` unless told otherwise."""


def free_port_block(count: int) -> int:
    """A first port such that ``count`` consecutive loopback ports are free right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")


async def topic_record_count(bootstrap_servers: str, topic: str) -> int:
    """How many offsets a topic's partitions hold in all (0 when it does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return 0
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def committed_records(bootstrap_servers: str, topic: str) -> list[Record]:
    """Every record a read_committed reader sees in ``topic``, all partitions, in order.

    The state topic's layout marker (:mod:`evstate.layout`) is left out: it is no event.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from evstate.layout import is_marker

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Record] = []
        # Transaction markers take offsets too: read until every position reaches its end.
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, recs in (await consumer.getmany(timeout_ms=2000)).items():
                out.extend(
                    Record(tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp)
                    for r in recs
                )
        return sorted(
            (r for r in out if not is_marker(r.key)), key=lambda r: (r.partition, r.offset)
        )
    finally:
        await consumer.stop()


async def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> CompletedProcess[str]:
    """Run ``evstate ARGS`` in a subprocess (off the event loop) and return what it did."""
    import subprocess
    import sys

    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "evstate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def subprocess_env(
    *,
    bootstrap_servers: str | None = None,
    topic_prefix: str | None = None,
    view_dir: str | Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment for a subprocess that runs evstate (or Node, or a test program).

    This process's environment without any ``EVSTATE_*`` variable a developer may have
    set (a test must not read their broker, topics or token), then the given settings
    and ``extra`` variables (``EVSTATE_TOKEN="..."``, ``COLUMNS="200"``, ...).
    """
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EVSTATE_")}
    given = {
        "EVSTATE_BOOTSTRAP_SERVERS": bootstrap_servers,
        "EVSTATE_TOPIC_PREFIX": topic_prefix,
        "EVSTATE_VIEW_DIR": None if view_dir is None else str(view_dir),
    }
    env.update({k: v for k, v in given.items() if v is not None})
    env.update(extra)
    return env


def cli_env(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> dict[str, str]:
    """The environment for a CLI subprocess reading this test's topics into ``view_dir``."""
    return subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=view_dir
    )


@asynccontextmanager
async def running_server(settings: Settings, **options: Any) -> AsyncIterator[str]:
    """``evstate serve``'s app in this process, on a free port: yields its URL.

    For tests that reach into the server (monkeypatching, this process's metrics); the
    command itself runs with :func:`serve_process`. ``options`` go to ``create_app``
    (``token`` defaults to ``"contract-token"``). Wait with :func:`wait_ready` before use.
    """
    from aiohttp import web

    from evstate.serve import create_app

    options.setdefault("token", SERVE_TOKEN)
    runner = web.AppRunner(create_app(settings, **options))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def spawn_serve(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``evstate serve --port 0 ARGS`` with ``env``; stdout and stderr piped."""
    import sys

    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evstate.cli",
        "serve",
        "--port",
        "0",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@asynccontextmanager
async def serve_process(
    env: dict[str, str],
    *args: str,
    token: str,
    ready_timeout: float = 60.0,
    ca_file: str | None = None,
    log: list[str] | None = None,
) -> AsyncIterator[str]:
    """``evstate serve`` as a process: yields its URL once ``HEAD /`` answers 200.

    On exit it is stopped with SIGTERM, and must exit 0. Its stderr (the log) is drained
    in the background, so a chatty server never blocks on a full pipe.

    Args:
        env: from :func:`subprocess_env`; ``token`` is added as ``EVSTATE_TOKEN``.
        *args: more ``evstate serve`` options.
        token: the bearer token (passed in the environment, as users are told to).
        ready_timeout: seconds to wait for the server to be ready.
        ca_file: the CA to trust when the server speaks HTTPS (``--tls-cert``).
        log: when given, the server's log lines are appended to it as they come.
    """
    import signal

    proc = await spawn_serve({**env, "EVSTATE_TOKEN": token}, *args)
    assert proc.stdout is not None
    assert proc.stderr is not None
    drain = asyncio.create_task(proc.stderr.read() if log is None else _lines(proc.stderr, log))
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), ready_timeout)).decode()
        assert line.startswith(("listening on http://", "listening on https://")), (
            line,
            await _early_exit(proc, drain),
        )
        url = line.split()[-1] + "/"
        await wait_ready(url, token, ready_timeout, ca_file=ca_file)
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await drain
    assert proc.returncode == 0, proc.returncode


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> bytes:
    async for line in stream:
        into.append(line.decode(errors="replace"))
    return "".join(into).encode()


async def _early_exit(proc: asyncio.subprocess.Process, drain: asyncio.Task[bytes]) -> str:
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        return "(still running)"
    return (await drain).decode(errors="replace")


async def wait_ready(
    url: str, token: str, timeout: float = 30.0, *, ca_file: str | None = None
) -> None:
    """Wait until ``HEAD /`` of an ``evstate serve`` answers 200 (over HTTPS trusting
    ``ca_file``, when given)."""
    import ssl

    import aiohttp

    tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

    deadline = asyncio.get_running_loop().time() + timeout
    status = None
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                headers = {"Authorization": f"Bearer {token}"}
                async with session.head(url, headers=headers, ssl=tls or True) as r:
                    status = r.status
                    if status == 200:
                        return
            except aiohttp.ClientConnectionError as exc:
                status = repr(exc)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout}s (last {status})")
            await asyncio.sleep(0.1)


def npm_install_once(
    prefix: Path,
    packages: Sequence[str],
    installed: Callable[[Path], bool],
    *,
    timeout: float,
    stamp: str | None = None,
) -> Path:
    """``npm install packages`` into ``prefix`` unless ``installed(prefix)``; return it.

    A file lock keeps two test processes from installing into the same dir at once.
    ``stamp``, if given, is written to ``prefix/.installed`` once the install is done (for
    an ``installed`` that checks what was asked for).
    """
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed(prefix):
            subprocess.run(
                [
                    "npm",
                    "install",
                    "--prefix",
                    str(prefix),
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--save-exact",
                    *packages,
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
                env=subprocess_env(),
            )
            if stamp is not None:
                (prefix / ".installed").write_text(stamp)
    return prefix
