"""Hostile or careless input at the other doors: ``evstate serve`` and the CLI, as processes.

Each answer is a clear refusal (a JSON envelope, or one line on stderr with exit status
2), never a traceback, a hang or a 500; and nothing is written. The Python API's side is
in ``test_bad_input.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evstate import EvstateClient, Scope
from evstate.serde import serialize_state
from tests._util import cli_env, run_cli, topic_record_count
from tests.contract import make_state
from tests.faults.test_bad_input import produce_legacy

TOKEN = "surface-token"
APP = Scope("rt", "c")


# -- evstate serve, as a process ---------------------------------------------------------------


@dataclass
class Served:
    host: str
    port: int
    log: Path
    env: dict[str, str]
    topic_prefix: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _serve_env(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVSTATE_")}
    env.update(
        EVSTATE_BOOTSTRAP_SERVERS=bootstrap_servers,
        EVSTATE_VIEW_DIR=str(view_dir),
        EVSTATE_TOPIC_PREFIX=topic_prefix,
        EVSTATE_TOKEN=TOKEN,
    )
    return env


@pytest.fixture(scope="module")
def served(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``evstate serve`` for this module, with a 2 s header timeout; stderr to a file."""
    folder = tmp_path_factory.mktemp("surfaces")
    prefix = f"surf{os.getpid()}{int(time.time())}"
    env = _serve_env(bootstrap_servers, prefix, folder / "view")
    log = folder / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "evstate.cli", "serve", "--port", "0", "--header-timeout", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on http://127.0.0.1:"), line + log.read_text()
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        served = Served("127.0.0.1", port, log, env, prefix)
        asyncio.run(_wait_ready(served))
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


async def _raw(served: Served, data: bytes, *, read_timeout: float = 15) -> bytes:
    """Send ``data`` on a fresh connection; return everything the server answers."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def _request(
    body: bytes, *, auth: bytes = b"Bearer " + TOKEN.encode(), extra: bytes = b""
) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + b"Authorization: "
        + auth
        + b"\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head, raw[:500]
    answer = json.loads(body)
    assert answer["status"] == status
    return status, answer


async def _wait_ready(served: Served) -> None:
    body = json.dumps({"method": "init", "params": [], "context": {"chain": list(APP.chain)}})
    for _ in range(300):
        status, _answer_body = _answer(await _raw(served, _request(body.encode())))
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("evstate serve did not get ready")


def _call(method: str, params: list[Any], chain: list[str] | None = None, **ctx: Any) -> bytes:
    context = {"chain": list(APP.chain) if chain is None else chain, **ctx}
    # ensure_ascii keeps a lone surrogate as the \ud800 escape a JS client would send
    return json.dumps({"method": method, "params": params, "context": context}).encode()


async def test_a_token_that_is_not_utf8_is_401(served: Served) -> None:
    status, answer = _answer(
        await _raw(served, _request(_call("list", []), auth=b"Bearer \xff\xfe"))
    )
    assert status == 401
    assert "bearer token" in answer["error"]


STATE = serialize_state(APP, make_state(APP, "k"))
REFUSED_WRITES = [
    (
        "key with a lone surrogate",
        _call("set", ["k\ud800", {**STATE, "id": "k\ud800"}]),
        "surrogate",
    ),
    (
        "chain name with a lone surrogate",
        _call("set", ["k", STATE], chain=["rt", "c\udc80"]),
        "surrogate",
    ),
    ("chain name '..'", _call("set", ["k", STATE], chain=["rt", ".."]), "'..'"),
    ("chain name '/abs'", _call("set", ["k", STATE], chain=["rt", "/abs"]), "empty"),
    ("key with ESC", _call("set", ["k\x1b]0;x\x07", {**STATE, "id": "k\x1b]0;x\x07"}]), "control"),
    (
        "@date that does not decode",
        _call("set", ["k", {**STATE, "props": {"at": {"@date": "garbage"}}}]),
        "@date",
    ),
    (
        "string @secret",
        _call("set", ["k", {**STATE, "props": {"pw": {"@secret": "str"}}}]),
        "libsodium",
    ),
    ("get with a lone surrogate", _call("get", ["\udfff"]), "surrogate"),
]


@pytest.mark.parametrize(
    ("body", "says"), [r[1:] for r in REFUSED_WRITES], ids=[r[0] for r in REFUSED_WRITES]
)
async def test_bad_names_and_markers_are_400_and_nothing_is_written(
    served: Served, bootstrap_servers: str, body: bytes, says: str
) -> None:
    before = await topic_record_count(bootstrap_servers, f"{served.topic_prefix}.state")
    status, answer = _answer(await _raw(served, _request(body)))
    assert status == 400, answer
    assert says in answer["error"]
    assert await topic_record_count(bootstrap_servers, f"{served.topic_prefix}.state") == before


async def test_min_position_in_a_partition_that_does_not_exist_is_400_at_once(
    served: Served,
) -> None:
    started = time.monotonic()
    status, answer = _answer(await _raw(served, _request(_call("list", [], minPosition="99:0"))))
    assert status == 400
    assert "partition 99" in answer["error"]
    assert time.monotonic() - started < 5


async def test_a_header_over_8_kib_gets_json_that_does_not_echo_it(served: Served) -> None:
    big = b"X-Big: " + b"Q" * 9000 + b"\r\n"
    raw = await _raw(served, _request(_call("list", []), extra=big))
    status, answer = _answer(raw)
    assert status == 400
    assert "malformed HTTP request" in answer["error"]
    assert b"QQQQ" not in raw


async def test_slow_headers_are_cut_off(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 15) == b""  # closed by the server
        assert time.monotonic() - started < 6
    finally:
        writer.close()


async def test_a_token_in_the_query_string_is_not_logged(served: Served) -> None:
    request = _request(_call("list", [])).replace(b"POST / ", b"POST /?token=QUERY-SECRET-42 ")
    await _raw(served, request)
    await asyncio.sleep(0.3)
    log = served.log_text()
    assert '"POST /"' in log  # the access log is on, and shows the path alone
    assert "QUERY-SECRET-42" not in log


async def test_a_client_leaving_mid_body_logs_no_traceback(served: Served) -> None:
    head = _request(b"x" * 1000)[: -1000 + 10]  # headers and 10 of 1000 bytes
    _reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(head)
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.5)
    assert "Traceback" not in served.log_text()
    # and the server still answers
    status, _ = _answer(await _raw(served, _request(_call("count", []))))
    assert status == 200


async def test_serve_on_a_locked_view_dir_never_says_listening(served: Served) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evstate.cli",
        "serve",
        "--port",
        "0",
        env=served.env,  # the same view dir as the running server
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert out == b""
    assert "view" in err.decode().lower()


# -- the CLI -----------------------------------------------------------------------------------


def _one_line_refusal(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0], lines[0]


@pytest.fixture
def env(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(bootstrap_servers, topic_prefix, tmp_path / "cli-view")


async def test_markup_in_user_text_is_shown_as_written(env: dict[str, str]) -> None:
    refused = await run_cli("get", "rt/c", "a:[/]", env=env)
    _one_line_refusal(refused, "'a:[/]'")
    missing = await run_cli("get", "rt/c", "[bold]k", env=env)
    assert missing.returncode == 1
    assert "'[bold]k'" in missing.stderr


@pytest.mark.parametrize("point", ["0001-01-01", "9999-12-31T23:59:59", "-99999999999d"])
async def test_points_out_of_range_are_one_line(env: dict[str, str], point: str) -> None:
    _one_line_refusal(await run_cli("replay", "rt/c", "--at", point, env=env), "out of range")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("ls", "rt/c", "--bootstrap-servers", "127.0.0.1:99999"), "ports 1-65535"),
        (("serve", "--port", "70000"), "--port"),
        (("serve", "--max-body-mib", "nan"), "--max-body-mib"),
        (("ls", "rt/.."), "'..'"),
        (("ls", "rt/\x1b[2J"), "control character"),
    ],
)
async def test_bad_options_are_one_line(
    env: dict[str, str], args: tuple[str, ...], says: str
) -> None:
    _one_line_refusal(await run_cli(*args, env={**env, "EVSTATE_TOKEN": "t"}), says)


async def test_export_to_an_unwritable_file_is_one_line(
    env: dict[str, str], bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(tmp_path / "w"), topic_prefix=topic_prefix
    ) as client:
        await client.store(APP).set("k", make_state(APP, "k"))
    _one_line_refusal(await run_cli("export", "rt/c", "--out", "/proc/version", env=env), "/proc")


async def test_import_of_deeply_nested_lists_is_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "dot" / "rt" / "c"
    folder.mkdir(parents=True)
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_refusal(await run_cli("import-alchemy", str(tmp_path / "dot"), env=env), "nested")


async def test_listing_keys_and_scopes_stored_before_names_were_checked(
    env: dict[str, str], bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(tmp_path / "w"), topic_prefix=topic_prefix
    ) as client:
        await client.store(APP).set("plain", make_state(APP, "plain"))
    tree = serialize_state(APP, make_state(APP, "x"))
    await produce_legacy(bootstrap_servers, topic_prefix, APP.chain, "k\x1b]0;pwned\x07", tree)
    await produce_legacy(bootstrap_servers, topic_prefix, ("rt", "/abs"), "x", tree)
    listed = await run_cli("ls", "rt/c", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout
    assert listed.stdout.split() == ["k\\x1b]0;pwned\\x07", "plain"]
    long = await run_cli("ls", "-l", "rt/c", env={**env, "COLUMNS": "400"})
    assert long.returncode == 0, long.stderr
    assert "k\\x1b]0;pwned\\x07" in long.stdout
    scopes = await run_cli("scopes", env=env)
    assert scopes.returncode == 0, scopes.stderr
    assert scopes.stdout.split() == ["rt//abs", "rt/c"]
    history = await run_cli("history", "rt/c", env={**env, "COLUMNS": "400"})
    assert history.returncode == 0, history.stderr
    assert "pwned" in history.stdout
    assert "\x1b" not in history.stdout
