"""Migration: a folder written by a real Alchemy app imports into evstate and exports back.

The folder comes from tests/node/alchemy_app.mjs (Alchemy 0.94.0 from npm, ``alchemy/fs``
``File`` resources, a secret in props, a nested scope, an id with ``/``). Needs Node.js,
npm and the broker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from evstate import EvstateClient, Scope, State
from evstate.alchemy.fs import file_name, id_of, read_states, write_state
from evstate.alchemy.migrate import export_alchemy, import_alchemy
from evstate.cli.alchemy import register
from evstate.errors import InvalidKeyError, InvalidStateError, SecretError, ValidationError
from evstate.serde import Secret
from tests._alchemy import run_node

PASSWORD = "migrate-pw"
APP = ("interop-app", "dev")


@pytest.fixture(scope="module")
def alchemy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose .alchemy a real Alchemy app wrote."""
    project = tmp_path_factory.mktemp("alchemy-project")
    run_node("alchemy_app.mjs", str(project), PASSWORD)
    return project


@pytest.fixture
def client(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(view_dir), topic_prefix=topic_prefix
    )


def a_state(key: str, **fields: object) -> State:
    values: dict[str, object] = {
        "status": "created",
        "kind": "test::Thing",
        "id": key,
        "fqn": key,
        "seq": 0,
        "data": {},
        "props": {},
        "output": {},
    }
    values.update(fields)
    return State(**values)  # type: ignore[arg-type]


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.json"))
        if len(p.relative_to(root).parts) > 2
    }


def test_the_folder_is_what_alchemy_writes(alchemy_folder: Path) -> None:
    names = set(files_of(alchemy_folder / ".alchemy"))
    assert names == {
        "interop-app/dev/config.json",
        "interop-app/dev/logs:app.log.json",
        "interop-app/dev/nested.json",
        "interop-app/dev/nested/inner.json",
    }
    assert [(f.chain, f.id) for f in read_states(alchemy_folder)] == [
        (APP, "config"),
        (APP, "logs/app.log"),
        (APP, "nested"),
        ((*APP, "nested"), "inner"),
    ]


async def test_import_then_export_is_lossless(
    client: EvstateClient, alchemy_folder: Path, tmp_path: Path
) -> None:
    async with client:
        result = await import_alchemy(client, alchemy_folder, password=PASSWORD)
        assert sorted(result.written) == [
            "interop-app/dev/nested:inner",
            "interop-app/dev:config",
            "interop-app/dev:logs/app.log",
            "interop-app/dev:nested",
        ]
        assert result.unchanged == []

        store = client.store(Scope(*APP, password=PASSWORD))
        state = await store.get("config")
        assert state is not None
        assert state.props is not None
        assert state.props["token"] == Secret("s3cr3t-token ☃")
        assert state.props["apiKey"] == Secret({"user": "bob", "scopes": ["read", "write"]})
        assert state.props["created"] == datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
        assert await store.list() == ["config", "logs/app.log", "nested"]
        assert await client.store(Scope(*APP, "nested")).list() == ["inner"]

        out = tmp_path / "exported"
        written = await export_alchemy(client, "interop-app/dev", out)
        assert len(written) == 4

    original = files_of(alchemy_folder / ".alchemy")
    exported = files_of(out)
    assert set(exported) == set(original)
    for name, data in original.items():
        assert json.loads(exported[name]) == json.loads(data), name
        assert exported[name] == data, name  # key order is kept too


async def test_importing_twice_writes_nothing(
    client: EvstateClient, alchemy_folder: Path, tmp_path: Path
) -> None:
    async with client:
        first = await import_alchemy(client, alchemy_folder)
        assert len(first.written) == 4
        second = await import_alchemy(client, alchemy_folder)
        assert second.written == []
        assert len(second.unchanged) == 4

        # One changed file: only that state is written again.
        copy = tmp_path / "copy"
        await export_alchemy(client, "interop-app", copy)
        changed = copy / "interop-app" / "dev" / "logs:app.log.json"
        tree = json.loads(changed.read_text())
        tree["props"]["content"] = "line 2\n"
        changed.write_text(json.dumps(tree, indent=2))
        third = await import_alchemy(client, copy)
        assert third.written == ["interop-app/dev:logs/app.log"]
        history = [e async for e in client.history(Scope(*APP), "logs/app.log")]
        assert [e.version for e in history] == [1, 2]


async def test_wrong_password_writes_nothing(client: EvstateClient, alchemy_folder: Path) -> None:
    async with client:
        with pytest.raises(SecretError, match=r"props\.token"):
            await import_alchemy(client, alchemy_folder, password="not the password")
        assert await client.store(Scope(*APP)).list() == []


async def test_a_bad_file_writes_nothing(client: EvstateClient, tmp_path: Path) -> None:
    good = tmp_path / "app" / "dev" / "good.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(a_state("good").to_json()))
    (good.parent / "bad.json").write_text('{"kind": "x"}')
    async with client:
        with pytest.raises(InvalidStateError, match=r"bad\.json"):
            await import_alchemy(client, tmp_path)
        assert await client.store(Scope("app", "dev")).list() == []


async def test_alchemy_reads_what_evstate_exports(client: EvstateClient, tmp_path: Path) -> None:
    scope = Scope("py-app", "prod", password=PASSWORD)
    state = a_state(
        "db/main",
        fqn="py-app/prod/db/main",
        props={"password": Secret("from python ☃"), "opts": Secret({"port": 5432})},
        output={"at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "raw": b"\x01\x02"},
    )
    async with client:
        await client.store(scope).set("db/main", state)
        await export_alchemy(client, scope, tmp_path)
    assert (tmp_path / "py-app" / "prod" / "db:main.json").is_file()
    read = run_node("alchemy_read_state.mjs", str(tmp_path), PASSWORD, "py-app", "prod")
    assert read["db/main"]["props"] == {
        "password": {"$secret": "from python ☃"},
        "opts": {"$secret": {"port": 5432}},
    }
    assert read["db/main"]["output"]["at"] == {"$date": "2025-01-02T03:04:05.000Z"}
    assert read["db/main"]["output"]["raw"] == {"$buffer": "AQI="}


def test_cli_import_and_export(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, alchemy_folder: Path
) -> None:
    app = typer.Typer()
    register(app)
    common = [
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic-prefix",
        topic_prefix,
        "--view-dir",
        str(tmp_path / "cli-view"),
    ]
    runner = CliRunner()
    first = runner.invoke(app, ["import-alchemy", str(alchemy_folder / ".alchemy"), *common])
    assert first.exit_code == 0, first.output
    assert "written    interop-app/dev:config" in first.stdout
    again = runner.invoke(app, ["import-alchemy", str(alchemy_folder), *common])
    assert again.exit_code == 0, again.output
    assert "written" not in again.stdout
    assert again.stdout.count("unchanged") == 4
    out = tmp_path / "out"
    exported = runner.invoke(app, ["export-alchemy", "interop-app/dev", str(out), *common])
    assert exported.exit_code == 0, exported.output
    assert files_of(out) == files_of(alchemy_folder / ".alchemy")

    missing = runner.invoke(app, ["import-alchemy", str(tmp_path / "nope"), *common])
    assert missing.exit_code == 2
    assert "not a folder" in missing.stderr


class TestFolderLayout:
    """alchemy_fs on its own: no broker, no Node."""

    def test_names(self) -> None:
        assert file_name("logs/app.log") == "logs:app.log.json"
        assert id_of("logs:app.log.json") == "logs/app.log"
        with pytest.raises(InvalidKeyError):
            file_name("a:b")

    def test_tool_folders_and_shallow_files_are_skipped(self, tmp_path: Path) -> None:
        write_state(tmp_path, ("app", "dev"), "x/y", a_state("x/y").to_json())
        for junk in ("logs/app/dev/x.json", "pids/a/b/p.pid.json", "miniflare/v3/kv/m.json"):
            (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / junk).write_text("not json")
        (tmp_path / "app" / "top.json").write_text("not json")
        (tmp_path / "state.sqlite").write_bytes(b"\x00")
        assert [(f.chain, f.id) for f in read_states(tmp_path)] == [(("app", "dev"), "x/y")]

    def test_id_must_match_file_name(self, tmp_path: Path) -> None:
        write_state(tmp_path, ("app", "dev"), "one", a_state("two").to_json())
        with pytest.raises(InvalidStateError, match=r"one\.json.*'two'"):
            read_states(tmp_path)

    def test_written_like_json_stringify(self, tmp_path: Path) -> None:
        tree = {"a": "☃ \n \u0001", "b": [], "c": {}, "d": [1, {"e": None}], "f": 1.5}
        path = write_state(tmp_path, ("app", "dev"), "s", tree)
        assert path.read_text(encoding="utf-8") == (
            '{\n  "a": "☃ \\n \\u0001",\n  "b": [],\n  "c": {},\n  "d": [\n    1,\n'
            '    {\n      "e": null\n    }\n  ],\n  "f": 1.5\n}'
        )
        assert not list(path.parent.glob(".evstate-*"))

    def test_not_a_folder(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="not a folder"):
            read_states(tmp_path / "missing")
