"""The store commands of `evstate`, run as a subprocess against a real broker.

A writer (an EvstateClient in the test process, with its own view dir) puts states in the
topic; the CLI, with a view dir of its own, must show them, delete them, rebuild and
verify its view.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from evstate import EvstateClient, Scope, Settings, State, events, keys
from evstate.model import ChangeEvent
from evstate.view import View, encode_value
from tests._util import subprocess_env

APP_DEV = Scope("app", "dev")
CHILD = APP_DEV.child("child")
OTHER = Scope("other", "prod")


@dataclass(frozen=True)
class Cli:
    """Runs `python -m evstate.cli` with the test's broker, topics and the CLI's view dir."""

    env: dict[str, str]
    view_dir: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "evstate.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def cli(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> Cli:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "cli-view",
        COLUMNS="200",  # rich tables: no wrapped keys
    )
    return Cli(env, tmp_path / "cli-view")


@pytest.fixture
def writer(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    """Settings of the writing client (its view dir differs from the CLI's)."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "topic_prefix": topic_prefix,
        "view_dir": str(tmp_path / "writer-view"),
    }


def _state(scope: Scope, key: str, seq: int) -> State:
    return State(
        status="created",
        kind="test::Thing",
        id=key,
        fqn="/".join((*scope.chain, key)),
        seq=seq,
        data={"d": seq},
        props={"size": seq},
        old_props={"size": seq - 1},
        output={"url": f"https://{key}"},
    )


SEEDED = {APP_DEV: ["web", "db/primary"], CHILD: ["inner"], OTHER: ["queue"]}


def _seed(settings: dict[str, str]) -> int:
    """Write SEEDED; return how many records went to the state topic."""

    async def main() -> int:
        written = 0
        async with EvstateClient(**settings) as client:
            for scope, ids in SEEDED.items():
                store = client.store(scope)
                for seq, key in enumerate(ids):
                    await store.set(key, _state(scope, key, seq))
                    written += 1
        return written

    return asyncio.run(main())


def _ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_scopes_lists_parent_and_nested_scopes(cli: Cli, writer: dict[str, str]) -> None:
    _seed(writer)
    assert _ok(cli("scopes")).splitlines() == ["app/dev", "app/dev/child", "other/prod"]
    table = _ok(cli("scopes", "--counts"))
    rows = {line.split()[1]: line.split()[3] for line in table.splitlines() if "/" in line}
    assert rows == {"app/dev": "2", "app/dev/child": "1", "other/prod": "1"}


def test_ls_lists_ids_of_one_scope_only(cli: Cli, writer: dict[str, str]) -> None:
    _seed(writer)
    assert _ok(cli("ls", "app/dev")).splitlines() == ["db/primary", "web"]
    assert _ok(cli("ls", "app/dev/child")).splitlines() == ["inner"]
    assert _ok(cli("ls", "app")) == ""
    long = _ok(cli("ls", "app/dev", "--long"))
    assert "db/primary" in long
    assert "test::Thing" in long
    assert "created" in long
    assert "inner" not in long


def test_get_prints_alchemy_json_and_missing_exits_1(cli: Cli, writer: dict[str, str]) -> None:
    _seed(writer)
    tree = json.loads(_ok(cli("get", "app/dev", "db/primary")))
    assert tree == {
        "status": "created",
        "kind": "test::Thing",
        "id": "db/primary",
        "fqn": "app/dev/db/primary",
        "seq": 1,
        "data": {"d": 1},
        "props": {"size": 1},
        "oldProps": {"size": 0},
        "output": {"url": "https://db/primary"},
    }
    missing = cli("get", "app/dev", "nope")
    _ok(missing, 1)
    assert missing.stdout == ""
    assert "nope" in missing.stderr


def test_secret_markers_are_masked(cli: Cli, writer: dict[str, str]) -> None:
    marker = {
        "@secret": {
            "version": "v1",
            "ciphertext": "Y2lwaGVydGV4dA==",
            "iv": "aXZpdml2aXZpdml2",
            "salt": "c2FsdHNhbHRzYWx0c2FsdA==",
            "tag": "dGFndGFndGFndGFndGFnIQ==",
        }
    }
    tree = _state(APP_DEV, "db", 0).to_json()
    tree["props"] = {"user": "admin", "password": marker, "more": [marker]}

    async def write_raw() -> None:
        # serde refuses "@secret" keys on serialize, so write the event itself.
        async with EvstateClient(**writer) as client:
            await client.ensure_topics()
            partition = keys.partition_for(APP_DEV, client.settings.partitions)
            event = ChangeEvent.new(
                op="SET", scope=APP_DEV, key="db", state=tree, version=1, actor="test"
            )
            value, headers = events.state_record(event)
            producer = AIOKafkaProducer(bootstrap_servers=writer["bootstrap_servers"])
            await producer.start()
            try:
                await producer.send_and_wait(
                    client.settings.state_topic,
                    value=value,
                    key=keys.record_key(APP_DEV, "db").encode(),
                    partition=partition,
                    headers=headers,
                )
            finally:
                await producer.stop()

    asyncio.run(write_raw())
    shown = _ok(cli("get", "app/dev", "db"))
    assert "Y2lwaGVydGV4dA" not in shown
    assert json.loads(shown)["props"] == {
        "user": "admin",
        "password": "********",
        "more": ["********"],
    }
    # No password: evstate refuses, in one line, without a traceback.
    revealed = cli("get", "app/dev", "db", "--reveal")
    _ok(revealed, 2)
    assert revealed.stderr.startswith("error:")
    assert "secret" in revealed.stderr


def test_rm_deletes_and_prints_a_position(cli: Cli, writer: dict[str, str]) -> None:
    _seed(writer)
    token = _ok(cli("rm", "app/dev", "db/primary")).strip()
    partition, _, offset = token.partition(":")
    assert partition == str(keys.partition_for(APP_DEV, Settings().partitions))
    assert offset.isdecimal()
    _ok(cli("get", "app/dev", "db/primary"), 1)
    assert _ok(cli("ls", "app/dev")).splitlines() == ["web"]
    again = cli("rm", "app/dev", "db/primary")
    _ok(again, 1)
    assert "nothing deleted" in again.stderr


def test_rebuild_replays_the_topic(cli: Cli, writer: dict[str, str]) -> None:
    written = _seed(writer)
    _ok(cli("rm", "other/prod", "queue"))
    out = _ok(cli("rebuild"))
    assert f"from {written + 1} records" in out
    assert _ok(cli("scopes")).splitlines() == ["app/dev", "app/dev/child"]


def test_verify_compares_view_with_topic(cli: Cli, writer: dict[str, str]) -> None:
    _seed(writer)
    assert _ok(cli("verify")).strip() == "view matches topic: 4 keys"
    # Tamper with the CLI's view while no client holds it: one wrong value, one stray key.
    with View.open(cli.view_dir, create=False) as view:
        partition = keys.partition_for(APP_DEV, Settings().partitions)
        at = view.applied_offsets()[partition]
        view.apply(
            partition,
            at,
            [
                (b"app/dev:web", encode_value(1, '{"tampered": true}')),
                (b"app/dev:ghost", encode_value(1, "{}")),
            ],
        )
    result = cli("verify")
    out = _ok(result, 1)
    assert "web" in out
    assert "different value" in out
    assert "ghost" in out
    assert "not in topic" in out
    assert "db/primary" not in out
    _ok(cli("rebuild"))
    assert _ok(cli("verify")).strip() == "view matches topic: 4 keys"


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "app:x/dev"),
        ("get", "app//dev", "web"),
        ("get", "app/dev", "we:b"),
        ("rm", "app/dev:", "web"),
    ],
)
def test_bad_scope_or_key_is_refused(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    _ok(result, 2)
    assert result.stderr.startswith("error:")
    assert "':'" in result.stderr or "empty" in result.stderr or "non-empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_broker_is_refused(cli: Cli) -> None:
    env = {**cli.env, "EVSTATE_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = Cli(env, cli.view_dir)("scopes")
    _ok(result, 2)
    assert result.stderr.startswith("error:")


@pytest.mark.parametrize("command", ["scopes", "ls", "get", "rm", "rebuild", "verify"])
def test_every_command_has_help(command: str) -> None:
    # Help text is rich markup: a stray "[...]" in it crashes --help.
    result = subprocess.run(
        [sys.executable, "-m", "evstate.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=subprocess_env(COLUMNS="200"),
    )
    assert result.returncode == 0, result.stderr
    assert "--view-dir" in result.stdout
    assert "(default: $EVSTATE_VIEW_DIR" in result.stdout
