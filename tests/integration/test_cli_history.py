"""The change-log commands of `evstate` (history, replay, diff, export), run as a subprocess.

A small deploy is written by EvstateClients in the test process (their own view dirs): a
first step by alice, then, after a remembered time, a second step by bob that updates,
deletes and adds. The CLI, with a view dir of its own, must tell the story back: who
changed what, when and why; the state as of a time or an offset; the diff between two
points; every event for auditors. No output ever holds a secret's plaintext.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from evstate import EvstateClient, Position, Scope, Secret, State
from evstate.model import Status
from tests._util import subprocess_env

PASSWORD = "correct horse"
APP = Scope("app", "dev", password=PASSWORD)
PLAINTEXT = "hunter2"


@dataclass(frozen=True)
class Cli:
    """Runs `python -m evstate.cli` with the test's broker, topics and the CLI's view dir."""

    env: dict[str, str]

    def __call__(self, *args: str, code: int = 0) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "evstate.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
            check=False,
        )
        assert result.returncode == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert PLAINTEXT not in result.stdout + result.stderr
        return result.stdout if code == 0 else result.stderr


@pytest.fixture
def cli(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> Cli:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        view_dir=tmp_path / "cli-view",
        COLUMNS="250",  # rich tables: no folded cells
        PYTHONIOENCODING="utf-8",
    )
    return Cli(env)


def _state(key: str, props: dict[str, Any], status: Status = "created") -> State:
    return State(
        status=status,
        kind="test::Thing",
        id=key,
        fqn=f"app/dev/{key}",
        seq=0,
        data={},
        props=props,
        output={"url": f"https://{key}"},
    )


@dataclass(frozen=True)
class Deploy:
    """What the writers did: the time between the two steps, and every event's position."""

    between: datetime
    positions: list[Position]


STEP1_KEYS = {"web", "db", "cache"}
STEP2_KEYS = {"web", "db", "queue"}


@pytest.fixture
def deploy(bootstrap_servers: str, topic_prefix: str, tmp_path: Path) -> Deploy:
    common: dict[str, Any] = {"bootstrap_servers": bootstrap_servers, "topic_prefix": topic_prefix}

    async def main() -> Deploy:
        async with EvstateClient(
            **common, view_dir=str(tmp_path / "w1"), actor="alice@laptop"
        ) as c:
            store = c.store(APP)
            web = {"memory": 256, "old": True, "token": Secret(PLAINTEXT)}
            await store.set("web", _state("web", web), reason="first deploy")
            await store.set("db", _state("db", {"size": 10}), reason="first deploy")
            await store.set("cache", _state("cache", {"ttl": 60}))
        await asyncio.sleep(0.5)
        between = datetime.now(UTC)
        await asyncio.sleep(0.5)
        async with EvstateClient(**common, view_dir=str(tmp_path / "w2"), actor="bob@ci") as c:
            await c.catch_up()
            store = c.store(APP)
            web = {"memory": 512, "name": "web-1", "token": Secret(PLAINTEXT)}
            await store.set("web", _state("web", web, "updated"), reason="scale up")
            await store.delete("cache", reason="retired")
            await store.set("queue", _state("queue", {"depth": 5}), reason="add queue")
            positions = [e.position async for e in c.history(APP) if e.position is not None]
        return Deploy(between, positions)

    return asyncio.run(main())


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_history_table_names_who_changed_what_and_why(cli: Cli, deploy: Deploy) -> None:
    table = cli("history", "app/dev")
    for expected in (
        "alice@laptop",
        "bob@ci",
        "first deploy",
        "scale up",
        "retired",
        "add queue",
        "DELETE",
        "memory: 256 → 512",
        "+name",
        "-old",
        "token: ******** → ********",
        "deleted",
        "created",
    ):
        assert expected in table, (expected, table)
    rows = [line for line in table.splitlines() if "│ SET" in line or "│ DELETE" in line]
    assert len(rows) == 6
    assert "2 │ updated" in next(r for r in rows if "scale up" in r)


def test_history_of_one_key_and_within_bounds(cli: Cli, deploy: Deploy) -> None:
    table = cli("history", "app/dev", "web")
    rows = [line for line in table.splitlines() if "│ SET" in line or "│ DELETE" in line]
    assert len(rows) == 2
    assert all("│ web " in row for row in rows)
    since = cli("history", "app/dev", "--since", deploy.between.isoformat(), "--json")
    assert [e["key"] for e in _lines(since)] == ["web", "cache", "queue"]
    until = cli("history", "app/dev", "--until", str(deploy.positions[1].offset), "--json")
    assert [e["key"] for e in _lines(until)] == ["web", "db"]


def test_history_json_lines_are_the_events(cli: Cli, deploy: Deploy) -> None:
    events = _lines(cli("history", "app/dev", "--json"))
    assert [(e["op"], e["key"], e["version"]) for e in events] == [
        ("SET", "web", 1),
        ("SET", "db", 1),
        ("SET", "cache", 1),
        ("SET", "web", 2),
        ("DELETE", "cache", 2),
        ("SET", "queue", 1),
    ]
    assert [e["position"] for e in events] == [p.token for p in deploy.positions]
    assert events[3]["actor"] == "bob@ci"
    assert events[3]["reason"] == "scale up"
    assert events[4]["state"] is None
    assert set(events[0]["state"]["props"]["token"]) == {"@secret"}


def test_replay_at_a_time_between_two_steps_gives_the_older_state(
    cli: Cli, deploy: Deploy, tmp_path: Path
) -> None:
    older = json.loads(cli("replay", "app/dev", "--at", deploy.between.isoformat()))
    assert set(older) == STEP1_KEYS
    assert older["web"]["props"]["memory"] == 256
    assert set(older["web"]["props"]["token"]) == {"@secret"}
    naive = deploy.between.replace(tzinfo=None).isoformat()  # naive means UTC
    out_file = tmp_path / "replay.json"
    cli("replay", "app/dev", "--at", naive, "--out", str(out_file))
    assert json.loads(out_file.read_text()) == older
    newer = json.loads(cli("replay", "app/dev", "--at", "now"))
    assert set(newer) == STEP2_KEYS
    assert newer["web"]["props"]["memory"] == 512
    assert json.loads(cli("replay", "app/dev", "--at", "-1d")) == {}


def test_replay_at_an_offset(cli: Cli, deploy: Deploy) -> None:
    third = deploy.positions[2]  # the last event of the first step
    by_offset = json.loads(cli("replay", "app/dev", "--at", str(third.offset)))
    assert set(by_offset) == STEP1_KEYS
    by_token = json.loads(cli("replay", "app/dev", "--at", third.token))
    assert by_token == by_offset
    first = json.loads(cli("replay", "app/dev", "--at", str(deploy.positions[0].offset)))
    assert set(first) == {"web"}


def test_diff_lists_exactly_the_changed_keys(cli: Cli, deploy: Deploy) -> None:
    start = str(deploy.positions[2].offset)
    table = cli("diff", "app/dev", "--from", start, "--to", "now")
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    rows = {row[0]: " ".join(row) for row in cells if len(row) == 3 and row[0] != "key"}
    assert set(rows) == {"web", "cache", "queue"}
    assert "changed" in rows["web"]
    assert "memory: 256 → 512" in rows["web"]
    assert "removed" in rows["cache"]
    assert "added" in rows["queue"]
    cli("diff", "app/dev", "--from", start, "--to", "now", "--exit-code", code=1)
    cli("diff", "app/dev", "--from", start, "--to", deploy.between.isoformat(), "--exit-code")


def test_export_emits_one_line_per_event_for_auditors(
    cli: Cli, deploy: Deploy, tmp_path: Path
) -> None:
    events = _lines(cli("export", "app/dev"))
    assert len(events) == len(deploy.positions) == 6
    assert [e["actor"] for e in events] == ["alice@laptop"] * 3 + ["bob@ci"] * 3
    assert [e["reason"] for e in events] == [
        "first deploy",
        "first deploy",
        None,
        "scale up",
        "retired",
        "add queue",
    ]
    wanted = {"position", "event_id", "op", "scope", "key", "version", "expected_version"}
    wanted |= {"timestamp", "actor", "reason", "correlation_id", "state"}
    assert all(set(e) == wanted for e in events)
    assert all(e["scope"] == ["app", "dev"] for e in events)
    assert len({e["event_id"] for e in events}) == 6
    assert datetime.fromisoformat(events[0]["timestamp"]) < deploy.between
    out_file = tmp_path / "audit.jsonl"
    cli("export", "app/dev", "--out", str(out_file))
    text = out_file.read_text()
    assert _lines(text) == events
    assert PLAINTEXT not in text


def test_bad_points_are_refused_with_a_clear_message(cli: Cli, deploy: Deploy) -> None:
    message = cli("replay", "app/dev", "--at", "yesterday", code=2)
    assert "invalid point 'yesterday'" in message
    assert "ISO-8601" in message
    assert "invalid point '-5'" in cli("diff", "app/dev", "--from", "-5", "--to", "now", code=2)
    assert "invalid point" in cli("history", "app/dev", "--since", "soon", code=2)
    other = 0 if deploy.positions[0].partition else 1
    assert "partition" in cli("replay", "app/dev", "--at", f"{other}:0", code=2)


def test_no_command_prints_a_secret(cli: Cli, deploy: Deploy) -> None:
    # Cli checks every output for the plaintext; here every command runs once more.
    cli("history", "app/dev")
    cli("history", "app/dev", "web", "--json")
    cli("replay", "app/dev", "--at", "now")
    cli("diff", "app/dev", "--from", deploy.between.isoformat(), "--to", "now")
    cli("export", "app/dev")
