"""The view dir: locked, read-only, impossible, or deleted under a running client."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from evstate import EvstateClient, Scope
from evstate.errors import ViewLockedError, ViewUnavailableError
from tests._util import cli_env, run_cli, subprocess_env
from tests.contract import make_state

APP = Scope("app", "prod")
PROCS = Path(__file__).parent.parent / "integration" / "procs"


def _client(bootstrap: str, prefix: str, view_dir: Path) -> EvstateClient:
    return EvstateClient(bootstrap_servers=bootstrap, view_dir=str(view_dir), topic_prefix=prefix)


async def test_view_dir_held_by_another_process(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view = tmp_path / "view"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROCS / "reader.py"),
        bootstrap_servers,
        topic_prefix,
        str(view),
        APP.path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    try:
        assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"ready"
        with pytest.raises(ViewLockedError, match=str(view)) as info:
            async with _client(bootstrap_servers, topic_prefix, view):
                pass
        assert "another process" in str(info.value)
    finally:
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), 30)


async def test_read_only_view_dir_is_named(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view = tmp_path / "view"
    async with _client(bootstrap_servers, topic_prefix, view) as client:
        await client.store(APP).set("a", make_state(APP, "a"))
    # Read-only for one process only: a private mount namespace, the dir bind-mounted ro.
    script = (
        "import asyncio\n"
        "from evstate import EvstateClient\n"
        "async def main():\n"
        f"    async with EvstateClient(bootstrap_servers={bootstrap_servers!r}, "
        f"view_dir={str(view)!r}, topic_prefix={topic_prefix!r}): pass\n"
        "asyncio.run(main())\n"
    )
    shell = (
        f"mount --bind {tmp_path} {tmp_path} && mount -o remount,ro,bind {tmp_path} && "
        f'exec {sys.executable} -c "$0"'
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-rm",
        "sh",
        "-c",
        shell,
        script,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0
    assert "ViewUnavailableError" in err.decode()
    assert f"the view dir {view} is not writable" in err.decode()


async def test_view_dir_that_cannot_be_made(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a dir")
    with pytest.raises(ViewUnavailableError, match=str(blocker)):
        async with _client(bootstrap_servers, topic_prefix, blocker / "view"):
            pass


async def test_view_dir_deleted_under_a_running_client(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    view = tmp_path / "view"
    async with _client(bootstrap_servers, topic_prefix, view) as client:
        store = client.store(APP)
        for key in ("a", "b", "c"):
            await store.set(key, make_state(APP, key))
        shutil.rmtree(view)
        await asyncio.sleep(2.5)  # the applier checks the dir every second
        with pytest.raises(ViewUnavailableError, match=str(view)):
            await store.get("a")
    env = cli_env(bootstrap_servers, topic_prefix, view)
    rebuilt = await run_cli("rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    listed = await run_cli("ls", "app/prod", env=env)
    assert listed.stdout.split() == ["a", "b", "c"]
    verified = await run_cli("verify", env=env)
    assert verified.returncode == 0, verified.stderr
