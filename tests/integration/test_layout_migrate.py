"""Topics of the old partition rule: refused until ``evstate migrate`` rewrites them.

The old topics are written by real evstate in a subprocess whose partition rule is set
back to the full path and whose layout check is off (``procs/legacy_writer.py``): real
Avro events, one transaction over both topics, no marker. (``tests/unit/test_layout.py``
is about the package's module layout; this is about the topics' partition layout.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evstate import EvstateClient, Scope, Settings, keys, layout
from evstate.errors import LayoutError
from evstate.history import record_event
from evstate.kafka import Admin, Record
from evstate.relayout import PROGRESS_KEY, Step, plan
from evstate.view import View
from tests._util import cli_env, committed_records, run_cli

PROCS = Path(__file__).parent / "procs"
NESTED = Scope("app", "prod", "db")


async def _write_legacy(
    bootstrap: str, prefix: str, view_dir: Path, *, history: bool = True
) -> dict[str, Any]:
    """Old-layout topics, written by evstate as it was; returns what it wrote."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "legacy_writer.py"),
        bootstrap,
        prefix,
        str(view_dir),
        "1" if history else "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    written: dict[str, Any] = json.loads(out)
    # The point of it all: some nested scopes' events are where the new rule does not look.
    records = await committed_records(bootstrap, f"{prefix}.state")
    misplaced = {
        r.key.split(b":")[0]
        for r in records
        if r.key and r.partition != layout.partition_of_record(r.key, r.partition, 12)
    }
    assert misplaced, "the legacy writer put every scope where the new rule looks"
    return written


def _client(bootstrap: str, prefix: str, view_dir: Path, **more: Any) -> EvstateClient:
    return EvstateClient(
        bootstrap_servers=bootstrap, topic_prefix=prefix, view_dir=str(view_dir), **more
    )


def _settings(bootstrap: str, prefix: str, view_dir: Path) -> Settings:
    return Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, view_dir=str(view_dir))


def _events(records: list[Record]) -> dict[str, list[tuple[str, str, int]]]:
    by_scope: dict[str, list[tuple[str, str, int]]] = {}
    for record in records:
        event = record_event(record)
        by_scope.setdefault("/".join(event.scope), []).append((event.op, event.key, event.version))
    return by_scope


async def _assert_states(client: EvstateClient, written: dict[str, Any]) -> None:
    for path, states in written["states"].items():
        store = client.store(Scope.parse(path))
        assert sorted(await store.list()) == sorted(states), path
        for key, props in states.items():
            got = await store.get(key)
            assert got is not None, (path, key)
            assert got.props == props


async def _assert_placed_by_stage(bootstrap: str, topic: str) -> list[Record]:
    records = await committed_records(bootstrap, topic)
    for r in records:
        assert r.key is not None
        path = r.key.split(b":")[0].decode()
        assert r.partition == keys.partition_for(path, 12), (topic, r.key, r.partition)
    return records


async def test_old_layout_is_refused_then_migrated_in_place(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap, prefix = bootstrap_servers, topic_prefix
    old_view = tmp_path / "legacy-view"
    written = await _write_legacy(bootstrap, prefix, old_view)
    old_history = await committed_records(bootstrap, f"{prefix}.history")
    env = cli_env(bootstrap, prefix, tmp_path / "cli-view")

    # -- refused: the library at start, lazily, a watcher; the CLI ---------------------
    with pytest.raises(LayoutError, match=f"evstate migrate --topic-prefix {prefix}"):
        async with _client(bootstrap, prefix, tmp_path / "a"):
            pass
    lazy = _client(bootstrap, prefix, tmp_path / "b")
    try:
        with pytest.raises(LayoutError, match="old partition rule"):
            await lazy.store(NESTED).get("k0")
        with pytest.raises(LayoutError):
            async with lazy.watch("app", start="earliest"):
                pass
    finally:
        await lazy.close()
    for command in (
        ("get", NESTED.path, "k0"),
        ("history", NESTED.path),
        ("ls", "app/prod"),
        ("watch", "app", "--from", "earliest"),
        ("serve", "--port", "0"),
    ):
        refused = await run_cli(*command, env={**env, "EVSTATE_TOKEN": "t"}, timeout=60)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "evstate migrate" in refused.stderr
        assert "old partition rule" in refused.stderr

    # -- a dry run says what it would do and changes nothing ---------------------------
    dry = await run_cli("migrate", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "uses the old partition rule" in dry.stdout
    assert "scopes in the state topic change partition" in dry.stdout
    assert f"{prefix}.state.pre-stage" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    # Not confirmed: nothing changed either.
    declined = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "evstate.cli", "migrate"],
        env=env,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert declined.returncode == 1, declined.stderr
    assert "nothing changed" in declined.stderr
    assert (await plan(_settings(bootstrap, prefix, tmp_path / "x"))).step is Step.BACKUP

    # -- migrated --------------------------------------------------------------------
    done = await run_cli("migrate", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert f"backed up 42 records to {prefix}.history.pre-stage" in done.stdout
    assert f"{prefix}.history: 42 events" in done.stdout
    assert f"{prefix}.state: 12 live records" in done.stdout
    assert "kept the backups" in done.stdout
    assert "rebuilt the view" in done.stdout

    # A fresh process reads every state of every scope, nested or not.
    async with _client(bootstrap, prefix, tmp_path / "fresh") as client:
        await _assert_states(client, written)
        await client.catch_up()
        assert sorted(client.scopes()) == sorted(written["states"])
        report = await client.verify()
        assert report.ok
        assert report.poison == []
        # Every event, in each scope's order, through the library.
        for path, events in written["events"].items():
            got = [(e.op, e.key, e.version) async for e in client.history(Scope.parse(path))]
            assert got == [tuple(e) for e in events], path
    got = await run_cli("get", NESTED.path, "k0", env=env)
    assert got.returncode == 0, got.stderr
    assert '"seq": 2' in got.stdout
    exported = await run_cli("export", "app/prod/db/replica", env=env)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [[e["op"], e["key"], e["version"]] for e in lines] == written["events"][
        "app/prod/db/replica"
    ]

    # Each record now in its stage's partition, copied byte for byte with its timestamp.
    new_history = await _assert_placed_by_stage(bootstrap, f"{prefix}.history")
    await _assert_placed_by_stage(bootstrap, f"{prefix}.state")
    assert _events(new_history) == _events(old_history)
    before = {(r.key, r.value, tuple(r.headers), r.timestamp_ms) for r in old_history}
    after = {(r.key, r.value, tuple(r.headers), r.timestamp_ms) for r in new_history}
    assert before == after

    # The backups are kept: the original records, where they were.
    backup = await committed_records(bootstrap, f"{prefix}.history.pre-stage")
    assert [(r.partition, r.key, r.value) for r in backup] == [
        (r.partition, r.key, r.value) for r in old_history
    ]
    state_backup = await committed_records(bootstrap, f"{prefix}.state.pre-stage")
    assert [r for r in state_backup if r.key == PROGRESS_KEY]

    # The old view (filled by the old evstate) is read again once, and serves right.
    caplog.set_level(logging.WARNING, logger="evstate.layout_check")
    async with _client(bootstrap, prefix, old_view) as client:
        await _assert_states(client, written)
        store = client.store(NESTED)
        k0 = await store.get("k0")
        assert k0 is not None
        position = await store.set("after", replace(k0, id="after", fqn="app/prod/db/after"))
        assert position.partition == keys.partition_for(NESTED, 12)
    assert any("filled by an older evstate" in r.getMessage() for r in caplog.records)
    async with _client(bootstrap, prefix, tmp_path / "fresh2") as client:
        assert "after" in await client.store(NESTED).list()

    # Once migrated, there is nothing to migrate.
    again = await run_cli("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout


async def test_new_topics_carry_the_marker_and_are_accepted(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view_dir = tmp_path / "view"
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        await client.store(NESTED).init()
        admin = Admin(client.settings)
        await admin.start()
        try:
            peek = await admin.peek(client.settings.state_topic, max_bytes=1024)
        finally:
            await admin.stop()
        assert peek is not None
        first = peek.head[0]
        assert (first.partition, first.offset, first.key) == (0, 0, layout.MARKER_KEY)
        assert layout.parse_marker(first.value) == ("stage", 2)
        assert (layout.MARKER_HEADER, layout.marker_value()) in first.headers
        assert client.applier is not None
        assert client.applier.stats.poison == []
    # Remembered in the view: a restart on it asks Kafka nothing about the layout.
    with View.open(view_dir) as view:
        assert view.meta(f"layout:{topic_prefix}.state".encode()) == layout.marker_value()

    async def no_peeking(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the layout was checked again")

    monkeypatch.setattr(Admin, "peek", no_peeking)
    async with _client(bootstrap_servers, topic_prefix, view_dir) as client:
        assert await client.store(NESTED).list() == []
    # Not remembered elsewhere: a fresh view checks (and accepts) the marked topic.
    monkeypatch.undo()
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "other") as client:
        assert await client.store(NESTED).count() == 0
    marked = await run_cli("migrate", env=cli_env(bootstrap_servers, topic_prefix, tmp_path / "c"))
    assert marked.returncode == 0, marked.stderr
    assert "already uses the stage layout: nothing to migrate" in marked.stdout


async def test_history_off_migrates_and_the_marker_stays_invisible(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    written = await _write_legacy(bootstrap_servers, topic_prefix, tmp_path / "old", history=False)
    env = cli_env(bootstrap_servers, topic_prefix, tmp_path / "cli")
    done = await run_cli("migrate", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "backed up 42 records" in done.stdout
    assert "history.pre-stage" not in done.stdout
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "v", history=False) as client:
        await _assert_states(client, written)
        assert (await client.verify()).poison == []
        # The history of the state topic: each key's last event (DELETEs were dropped).
        got = [(e.op, e.key) async for e in client.history(NESTED)]
        assert sorted(got) == [("SET", "k0"), ("SET", "k2/x")]
        # A watcher of everything on the state topic sees events only.
        async with client.watch(start="earliest") as watcher:
            seen = 0
            async for event in watcher:
                assert event.op == "SET"
                seen += 1
                if seen == 12:
                    break
            assert watcher.stats.poison == 0
            assert watcher.stats.skipped == 1  # the marker


async def test_migrate_resumes_after_a_crash(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evstate import relayout

    written = await _write_legacy(bootstrap_servers, topic_prefix, tmp_path / "old")
    settings = _settings(bootstrap_servers, topic_prefix, tmp_path / "v")

    # Crash 1: after backing up, before the progress record: the backups are unfinished.
    async def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash")

    monkeypatch.setattr(relayout, "_note", crash)
    with pytest.raises(RuntimeError, match="crash"):
        await relayout.migrate(settings, await plan(settings))
    resumed = await plan(settings)
    assert resumed.step is Step.BACKUP
    assert "unfinished backups" in resumed.reason
    monkeypatch.undo()

    # Crash 2: the originals deleted and made again, before the marker: rewrite from the
    # backups (the originals are gone, only the backups have the data).
    monkeypatch.setattr(relayout, "write_marker", crash)
    with pytest.raises(RuntimeError, match="crash"):
        await relayout.migrate(settings, resumed)
    monkeypatch.undo()
    assert await committed_records(bootstrap_servers, settings.state_topic) == []
    assert (await plan(settings)).step is Step.REWRITE

    env = cli_env(bootstrap_servers, topic_prefix, tmp_path / "cli")
    done = await run_cli("migrate", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "stopped before it finished" in done.stdout
    assert "backed up 42 records" not in done.stdout  # the backups were not made again
    async with _client(bootstrap_servers, topic_prefix, tmp_path / "fresh") as client:
        await _assert_states(client, written)
        for path, events in written["events"].items():
            got = [(e.op, e.key, e.version) async for e in client.history(Scope.parse(path))]
            assert got == [tuple(e) for e in events], path
    again = await run_cli("migrate", env=env)
    assert "nothing to migrate" in again.stdout
